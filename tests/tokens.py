"""The test suite's API tokens: one set, used by every test that talks to an API."""

ALICE = "alice-token-0123456789abcdef0123"
BOB = "bob-token-0123456789abcdef01234567"
TOKENS = f"alice:{ALICE},bob:{BOB}"
"""``SRCLUSTER_TOKENS`` naming both."""

WEBHOOK_SECRET = "whsec_c3JjbHVzdGVyLXRlc3RzLXdlYmhvb2sta2V5LTAwMDE="
"""``SRCLUSTER_WEBHOOK_SECRET`` of the tests' clusters (Standard Webhooks form)."""
