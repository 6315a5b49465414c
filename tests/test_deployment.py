"""The real thing: services on 127.0.0.1, `prefect deploy`, `prefect deployment run`.

Starts a Prefect server, an MLflow server and a process worker with scripts/services.sh
(free ports, a temporary SLADE_HOME), deploys prefect.yaml, runs slade/full-pipeline on
the tiny preset with the training stages routed through the `slade-stage/cpu-pool`
deployment, waits for completion and checks MLflow over HTTP; then stops the services by
their recorded pids.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sh(command: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run `command` in bash with the services' environment (scripts/env.sh)."""
    result = subprocess.run(
        ["bash", "-c", f"source scripts/env.sh && {command}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    home = tmp_path_factory.mktemp("slade-home")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SLADE_"))
    }
    env |= {
        "SLADE_HOME": str(home),
        "SLADE_VENV": sys.prefix,
        "SLADE_PREFECT_PORT": str(_free_port()),
        "SLADE_MLFLOW_PORT": str(_free_port()),
        "SLADE_DOWNLOADS_DIR": str(home / "downloads"),
    }
    try:
        _sh("scripts/services.sh up", env, timeout=300)
        yield env, home
    finally:
        _sh("scripts/services.sh down", env, timeout=120)
        assert not list((home / "pids").glob("*.pid"))


@pytest.fixture(scope="module")
def deployed_run(services, tiny_preset):
    env, home = services
    _sh("prefect --no-prompt deploy --all", env, timeout=180)
    preset, overrides = tiny_preset
    params = {"preset": preset, "overrides": overrides, "training_pool": "cpu-pool"}
    args = " ".join(f"--param {k}={json.dumps(json.dumps(v))}" for k, v in params.items())
    run = _sh(
        f"prefect deployment run slade/full-pipeline {args} --watch --watch-timeout 900",
        env,
        timeout=960,
    )
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)
    return env, home, flow_run_id


def test_deployment_run_completes_and_mlflow_holds_the_runs(deployed_run):
    from mlflow.tracking import MlflowClient

    env, home, flow_run_id = deployed_run
    client = MlflowClient(tracking_uri=f"http://127.0.0.1:{env['SLADE_MLFLOW_PORT']}")
    exp = client.get_experiment_by_name("slade").experiment_id
    (parent,) = client.search_runs(
        [exp],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' "
        "and tags.`slade.kind` = 'pipeline'",
    )
    assert parent.info.status == "FINISHED"
    assert "student/map_at_r" in parent.data.metrics
    children = client.search_runs(
        [exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    stages = sorted(c.data.tags["slade.stage"] for c in children)
    assert stages == sorted(
        [
            "prepare_data",
            "train_teacher",
            "extract_embeddings",
            "cluster",
            "train_student",
            "evaluate",
            "publish",
        ]
    )
    assert all(c.info.status == "FINISHED" for c in children)
    teacher = next(c for c in children if c.data.tags["slade.stage"] == "train_teacher")
    assert {"teacher.pt", "history.json"} <= {
        a.path for a in client.list_artifacts(teacher.info.run_id)
    }
    # inputs came through the MLflow server's artifact proxy, not the stage directories
    assert (home / "runs" / "_inputs" / teacher.info.run_id / "teacher.pt").exists()


def test_training_stages_ran_as_sub_deployments_with_mlflow_links(deployed_run):
    env, _, flow_run_id = deployed_run
    api = f"http://127.0.0.1:{env['SLADE_PREFECT_PORT']}/api"
    children = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}},
    ).json()
    assert sorted(r["name"] for r in children) == ["train_student", "train_teacher"]
    assert all(r["state"]["type"] == "COMPLETED" for r in children)
    keys = ["slade-train-teacher-mlflow", "slade-train-student-mlflow"]  # link artifacts
    links = httpx.post(
        f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": keys}}}
    ).json()
    assert len(links) == 2
    assert any(f"127.0.0.1:{env['SLADE_MLFLOW_PORT']}/#/experiments/" in a["data"] for a in links)


def test_report_prints_metrics_and_ui_addresses(deployed_run):
    env, _, flow_run_id = deployed_run
    out = _sh(f"python scripts/report.py {flow_run_id}", env, timeout=120).stdout
    assert "map_at_r" in out and "student" in out
    assert f"http://127.0.0.1:{env['SLADE_PREFECT_PORT']}" in out
    assert f"http://127.0.0.1:{env['SLADE_MLFLOW_PORT']}" in out
    assert "Prefect + MLflow" in out
