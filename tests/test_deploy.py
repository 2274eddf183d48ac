"""The deploy files hold together: Kubernetes manifests, the KEDA autoscaler, the Grafana
dashboard, compose's profiles and the list of settings.

No cluster is needed: the manifests are parsed and cross-checked (names,
selectors, the Secret's keys, the queue the autoscaler reads), ``kubectl
kustomize`` builds them when kubectl is installed, and the dashboard's queries
are checked against the names ``GET /metrics`` prints (the real scrape is
checked too, in ``tests/test_metrics.py``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import families
from common.cluster.stats import Histogram, Snapshot
from common.settings import ENV_PREFIX, Settings
from tests.cluster import ROOT

K8S = ROOT / "deploy" / "k8s"
DASHBOARD = ROOT / "deploy" / "grafana" / "srcluster.json"
OUTSIDE_KUSTOMIZATION = {"kustomization.yaml", "secret.example.yaml", "keda-worker.yaml"}
"""Manifests ``kubectl apply -k`` leaves out: the kustomization itself, the Secret's
template (created by hand), and the KEDA objects (they need KEDA's CRDs)."""


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object under deploy/k8s, by ``(kind, name)``."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in documents(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), (path.name, doc)
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def test_every_manifest_parses_and_the_kustomization_lists_them() -> None:
    listed = set(documents(K8S / "kustomization.yaml")[0]["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")}
    assert listed <= on_disk, listed - on_disk
    assert listed == on_disk - OUTSIDE_KUSTOMIZATION
    assert manifests()


def test_workloads_select_their_own_pods_and_services_find_them() -> None:
    objects = manifests()
    pod_labels = []
    for (kind, name), doc in objects.items():
        if kind in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
            assert all(c.get("image") for c in doc["spec"]["template"]["spec"]["containers"])
            pod_labels.append(labels)
    for (kind, name), doc in objects.items():
        if kind == "Service":
            selector = doc["spec"]["selector"].items()
            assert any(selector <= labels.items() for labels in pod_labels), name


def test_the_autoscaler_reads_the_tile_queue_of_the_worker_deployment() -> None:
    objects = manifests()
    scaled = objects["ScaledObject", "srcluster-worker"]
    target = objects["Deployment", scaled["spec"]["scaleTargetRef"]["name"]]
    config = objects["ConfigMap", "srcluster-config"]["data"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    assert meta["listName"] == config["SRCLUSTER_TILE_QUEUE"]
    command = target["spec"]["template"]["spec"]["containers"][0]["command"]
    assert meta["listName"] in command[command.index("-Q") + 1].split(",")
    assert int(meta["listLength"]) >= 1 and isinstance(meta["listLength"], str)
    host, _, port = meta["address"].partition(":")
    assert host.split(".")[0] == "srcluster-redis" and port == "6379"
    assert ("Service", "srcluster-redis") in objects
    # the janitor and the stitches run in the workers: never scale them to zero
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    auth = objects["TriggerAuthentication", trigger["authenticationRef"]["name"]]
    secret = objects["Secret", "srcluster-secrets"]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == "srcluster-secrets" and ref["key"] in secret["stringData"]
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"password"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_manifests() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(built.stdout) if doc}
    assert {"Deployment", "Service", "StatefulSet", "ConfigMap"} <= kinds


# --- the Grafana dashboard ---------------------------------------------------------------

METRIC = re.compile(r"\bsrcluster_[a-z_]+\b")


def dashboard_metric_names() -> set[str]:
    """Every ``srcluster_*`` series the Grafana dashboard's queries name."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    return {name for expr in exprs for name in METRIC.findall(expr)}


def exported_names() -> set[str]:
    """The sample names ``GET /metrics`` prints when every family has a series."""
    histogram = Histogram([(1.0, 1), (float("inf"), 1)], 0.5)
    snapshot = Snapshot(
        jobs_entered={"success": 1},
        jobs_unfinished={"pending": 0},
        tiles={"m": 1},
        tile_seconds={"m": histogram},
        job_seconds={"m": histogram},
        queues={"tiles": 0},
        unacked=0,
        workers={"w": 1},
        engines=[("w", "m", "ort fp32 on cpu")],
    )

    class Fixed:
        def collect(self) -> Any:
            return families(snapshot)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_dashboard_asks_only_for_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}"
    asked = dashboard_metric_names()
    exported = exported_names()
    assert asked and asked <= exported, asked - exported


# --- settings and compose ------------------------------------------------------------


def test_every_setting_is_in_the_env_example_and_the_readme() -> None:
    env = (ROOT / "deploy" / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for f in dataclasses.fields(Settings):
        name = ENV_PREFIX + f.name.upper()
        assert re.search(rf"^{name}=", env, re.MULTILINE), f"{name} missing in .env.example"
        assert f"`{name}`" in readme, f"{name} missing in the README's settings"


def test_compose_has_minio_under_the_s3_profile_before_the_services_start() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert services["minio"]["profiles"] == ["s3"] == services["minio-init"]["profiles"]
    for name in ("api", "worker", "flower"):
        needs = services[name]["depends_on"]
        assert needs["minio-init"] == {
            "condition": "service_completed_successfully",
            "required": False,
        }, "without the profile nothing waits for MinIO"
        assert "blobs:/blobs" in services[name]["volumes"], "file:///blobs is shared"
    assert {"blobs", "minio"} <= set(compose["volumes"])


def test_flower_needs_its_password_everywhere_and_compose_keeps_it_on_loopback() -> None:
    """compose and Kubernetes start Flower as ``up`` does, through ``srcluster.flower``
    (every route, ``/metrics`` included, behind basic auth; tested for real in
    ``tests/test_up.py``); compose publishes it on the host's loopback unless asked."""
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["flower"]
    assert compose["command"][:3] == ["python", "-m", "srcluster.flower"]
    assert "FLOWER_BASIC_AUTH" in compose["environment"]
    (published,) = compose["ports"]
    assert published.startswith("${SRCLUSTER_FLOWER_ADDRESS:-127.0.0.1}:"), published
    env = (ROOT / "deploy" / ".env.example").read_text()
    assert re.search(r"^SRCLUSTER_FLOWER_ADDRESS=127\.0\.0\.1$", env, re.MULTILINE)
    pod = manifests()["Deployment", "srcluster-flower"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "srcluster.flower"]
    assert "FLOWER_BASIC_AUTH" in {e["name"] for e in container["env"]}
