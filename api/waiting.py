"""``Prefer: wait=N`` (RFC 7240): hold a request until its job ends or N seconds pass.

What we decided:

- ``wait`` is read from every ``Prefer`` header (the first ``wait`` counts, as
  RFC 7240 says of a repeated preference); other preferences are ignored.
- N is whole seconds. Over :data:`MAX_WAIT` it is clamped to it: the request
  is still answered, and ``Preference-Applied: wait=60`` says what was applied.
- A malformed value (``wait=soon``, ``wait=-1``, ``wait=1.5``) is refused with
  a 422 naming ``Prefer``, before any work is done, so a typo is seen rather
  than silently turning into no wait.
- Each API process lets at most ``wait_slots`` requests wait at once
  (:class:`Waits`); a request beyond that is answered at once, without
  ``Preference-Applied``, as RFC 7240 allows a server to do. Slots stay below
  gunicorn's threads per process (``srcluster.commands``), so waiting requests
  cannot take every thread and starve submits, downloads and health checks.

A waiting request holds no Redis polling loop: it subscribes to the job's end
(:func:`common.cluster.events.wait_until_ended`).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator

from werkzeug.datastructures import Headers

from common.errors import BadParameter

MAX_WAIT = 60
"""The longest wait a request may be held for, in seconds."""

_WAIT = re.compile(r"^\s*wait\s*(?:=\s*(.*?)\s*)?$", re.IGNORECASE)
_SECONDS = re.compile(r"^[0-9]{1,9}$")


def requested_wait(headers: Headers) -> int | None:
    """Seconds ``Prefer: wait=N`` asks for, clamped to :data:`MAX_WAIT`; ``None`` if not asked.

    Raises:
        BadParameter: a ``wait`` preference without a whole, non-negative number
            of seconds (``detail.parameter`` is ``Prefer``).
    """
    for line in headers.getlist("Prefer"):
        for preference in line.split(","):
            found = _WAIT.match(preference.split(";", 1)[0])
            if found is None:
                continue
            value = (found.group(1) or "").strip('"')
            if not _SECONDS.match(value):
                raise BadParameter(
                    "Prefer: wait must be a whole number of seconds, e.g. wait=30",
                    parameter="Prefer",
                    value=preference.strip()[:100],
                )
            return min(int(value), MAX_WAIT)
    return None


class Waits:
    """How many requests of this process may wait at once."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._free = threading.BoundedSemaphore(slots) if slots > 0 else None

    @contextlib.contextmanager
    def slot(self) -> Iterator[bool]:
        """Take a slot if one is free; yields whether one was (then the request may wait)."""
        if self._free is None or not self._free.acquire(blocking=False):
            yield False
            return
        try:
            yield True
        finally:
            self._free.release()
