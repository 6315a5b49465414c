"""deploy/k8s-job-template.json: a Kubernetes work pool's base job template for GPU stages."""

import json
import re
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "k8s-job-template.json"


def _placeholders(obj) -> set[str]:
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(obj)))


def test_every_placeholder_is_a_declared_variable_and_every_variable_is_used():
    template = json.loads(TEMPLATE.read_text())
    used = _placeholders(template["job_configuration"])
    declared = set(template["variables"]["properties"])
    assert used == declared  # an unreferenced variable would silently do nothing


def test_pods_request_gpus_and_mount_the_shared_results_volume():
    template = json.loads(TEMPLATE.read_text())
    job = template["job_configuration"]["job_manifest"]
    assert job["spec"]["backoffLimit"] == 0  # Prefect retries (with the cache), not Kubernetes
    (container,) = job["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
    assert "{{ gpus }}" in resources["limits"]["nvidia.com/gpu"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = template["variables"]["properties"]["env"]["default"]
    assert env["SLADE_RUNS_DIR"].startswith(mounts["slade-results"] + "/")
