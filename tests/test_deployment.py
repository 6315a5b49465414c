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
import shlex
import signal
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
from shell_helpers import free_port, mlflow_runs, run_sourced, wait_for

# services start in ~30-60 s and the deployed run takes ~60 s on 2 shared cores
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[1]
# shell commands with the local services' environment
sh = partial(run_sourced, "scripts/env.sh")


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    home = tmp_path_factory.mktemp("slade-home")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SLADE_"))
    }
    env |= {
        "SLADE_HOME": str(home),
        "SLADE_VENV": sys.prefix,
        "SLADE_PREFECT_PORT": str(free_port()),
        "SLADE_MLFLOW_PORT": str(free_port()),
        "SLADE_DOWNLOADS_DIR": str(home / "downloads"),
    }
    try:
        sh("scripts/services.sh up", env, timeout=300)
        yield env, home
    finally:
        sh("scripts/services.sh down", env, timeout=120)
        assert not list((home / "pids").glob("*.pid"))


@pytest.fixture(scope="module")
def deployed_run(services, tiny_preset):
    env, home = services
    sh("prefect --no-prompt deploy --all", env, timeout=180)
    preset, overrides = tiny_preset
    params = {"preset": preset, "overrides": overrides, "training_pool": "cpu-pool"}
    args = " ".join(f"--param {k}={json.dumps(json.dumps(v))}" for k, v in params.items())
    run = sh(
        f"prefect deployment run slade/full-pipeline {args} --watch --watch-timeout 900",
        env,
        timeout=960,
    )
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)
    return env, home, flow_run_id


def test_deployment_run_completes_and_mlflow_holds_the_runs(deployed_run):
    env, home, flow_run_id = deployed_run
    client, parent, children = mlflow_runs(env, flow_run_id)
    assert parent.info.status == "FINISHED"
    assert "student/map_at_r" in parent.data.metrics
    stages = sorted(c.data.tags["slade.stage"] for c in children)
    assert stages == sorted(
        [
            "prepare_data",
            "train_teacher",
            "extract_embeddings",
            "cluster",
            "train_student",
            "train_control",
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
    assert sorted(r["name"] for r in children) == [
        "train_control",
        "train_student",
        "train_teacher",
    ]
    assert all(r["state"]["type"] == "COMPLETED" for r in children)
    keys = ["slade-train-teacher-mlflow", "slade-train-student-mlflow"]  # link artifacts
    links = httpx.post(
        f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": keys}}}
    ).json()
    assert len(links) == 2
    assert any(f"127.0.0.1:{env['SLADE_MLFLOW_PORT']}/#/experiments/" in a["data"] for a in links)


def test_report_prints_metrics_and_ui_addresses(deployed_run):
    env, _, flow_run_id = deployed_run
    out = sh(f"python scripts/report.py {flow_run_id}", env, timeout=120).stdout
    assert "map_at_r" in out and "student" in out
    assert f"http://127.0.0.1:{env['SLADE_PREFECT_PORT']}" in out
    assert f"http://127.0.0.1:{env['SLADE_MLFLOW_PORT']}" in out
    assert "Prefect + MLflow" in out


# ----------------------------------------------------------------------------- failures


def _api(env) -> str:
    return f"http://127.0.0.1:{env['SLADE_PREFECT_PORT']}/api"


def _start(env, params: dict, *extra: str) -> str:
    """`prefect deployment run slade/full-pipeline` without waiting; the flow run id."""
    args = " ".join(f"--param {k}={json.dumps(json.dumps(v))}" for k, v in params.items())
    out = sh(f"prefect deployment run slade/full-pipeline {args} {' '.join(extra)}", env, 120)
    return re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1)


def _state(env, flow_run_id: str) -> dict:
    return httpx.get(f"{_api(env)}/flow_runs/{flow_run_id}").json()["state"]


def _final_state(env, flow_run_id: str, timeout: float = 300) -> dict:
    final = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
    seen: dict = {}

    def ended():
        seen["state"] = state = _state(env, flow_run_id)
        return state and state["type"] in final and state

    def what() -> str:
        state = seen.get("state") or {}
        last = {key: state.get(key) for key in ("type", "name", "timestamp", "message")}
        return f"flow run {flow_run_id} to end; its last state {last}"

    return wait_for(what, ended, timeout)


def _children(env, flow_run_id: str) -> list[dict]:
    body = {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}}
    return httpx.post(f"{_api(env)}/flow_runs/filter", json=body).json()


def _flow_run_processes(flow_run_id: str) -> list[int]:
    """Our processes running that flow run (the worker sets PREFECT__FLOW_RUN_ID for it)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in environ:
            found.append(int(proc.name))
    return found


def test_sigkill_mid_training_then_retry_resumes_and_leaves_nothing_running(
    deployed_run, tiny_preset
):
    env, _, _ = deployed_run
    preset, overrides = tiny_preset
    overrides = {**overrides, "teacher.optim.epochs": 3}  # a new teacher; the same data
    flow_run_id = _start(
        env,
        {"preset": preset, "overrides": overrides},
        "--job-variable",
        shlex.quote('env={"SLADE_HANG_ONCE": "train_teacher"}'),
    )
    # the teacher reports epoch 1 (its resume checkpoint is written), then hangs
    client = wait_for("the teacher's first epoch", lambda: _teacher_epoch_logged(env, flow_run_id))
    pids = wait_for("the flow run process", lambda: _flow_run_processes(flow_run_id))
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert _final_state(env, flow_run_id)["type"] == "CRASHED"
    # the worker ran the on_crashed hook: nothing is left RUNNING in MLflow
    _, parent, children = wait_for(
        "the crash hook",
        lambda: (runs := mlflow_runs(env, flow_run_id))[1].info.status != "RUNNING" and runs,
        timeout=120,
    )
    assert parent.info.status == "FAILED" and "Crashed" in parent.data.tags["slade.end_reason"]
    teacher_runs = [c for c in children if c.data.tags["slade.stage"] == "train_teacher"]
    assert [c.info.status for c in teacher_runs] == ["FAILED"]

    # The runner reports the crash, runs the hook, then the worker reports it once more: a
    # retry scheduled in between would be overwritten by that second report (Prefect 3.9).
    wait_for("the worker to finish the crashed run", lambda: _worker_done(env, flow_run_id))
    sh(f"prefect flow-run retry {flow_run_id}", env, timeout=120)
    # a whole (tiny) pipeline runs again: on a loaded 2-core machine that has taken > 300 s
    state = _final_state(env, flow_run_id, timeout=450)
    assert state["type"] == "COMPLETED", state
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    task_runs = httpx.post(f"{_api(env)}/task_runs/filter", json=body).json()
    last = {t["name"]: t["state"]["name"] for t in sorted(task_runs, key=lambda t: t["created"])}
    assert last["prepare_data"] == "Cached"
    assert last["train_teacher"] == "Completed"
    _, parent, children = mlflow_runs(env, flow_run_id)
    assert parent.info.status == "FINISHED"
    teacher_runs = sorted(
        (c for c in children if c.data.tags["slade.stage"] == "train_teacher"),
        key=lambda c: c.info.start_time,
    )
    assert [c.info.status for c in teacher_runs] == ["FAILED", "FINISHED"]
    steps = [m.step for m in client.get_metric_history(teacher_runs[-1].info.run_id, "loss")]
    assert steps == [2, 3]  # resumed after epoch 1 from the partial directory's checkpoint
    _, _, everything = mlflow_runs(env)
    assert "RUNNING" not in {r.info.status for r in everything}


def _worker_done(env, flow_run_id: str) -> bool:
    """The worker's event for a flow run whose process it has finished with."""
    body = {
        "filter": {
            "event": {"name": ["prefect.worker.executed-flow-run"]},
            "any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
        }
    }
    return bool(httpx.post(f"{_api(env)}/events/filter", json=body).json()["events"])


def _teacher_epoch_logged(env, flow_run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        client, _, children = mlflow_runs(env, flow_run_id)
    except (ValueError, MlflowException):  # no parent run yet
        return None
    running = [
        c
        for c in children
        if c.data.tags.get("slade.stage") == "train_teacher" and c.info.status == "RUNNING"
    ]
    logged = any(client.get_metric_history(c.info.run_id, "loss") for c in running)
    return client if logged else None


def test_gpu_pool_without_worker_fails_in_bounded_time_naming_the_command(
    deployed_run, tiny_preset
):
    env, _, _ = deployed_run
    preset, overrides = tiny_preset
    params = {"preset": preset, "overrides": overrides, "training_pool": "gpu-pool"}
    flow_run_id = _start(env, params | {"pool_timeout": 5})
    state = _final_state(env, flow_run_id, timeout=240)
    assert state["type"] == "FAILED"
    assert "`prefect worker start --pool gpu-pool`" in state["message"]
    assert [c["state"]["type"] for c in _children(env, flow_run_id)] == ["CANCELLED"]


def test_cancelling_a_run_kills_its_mlflow_runs_and_its_pool_stage(deployed_run, tiny_preset):
    env, _, _ = deployed_run
    preset, overrides = tiny_preset
    params = {"preset": preset, "overrides": overrides, "training_pool": "gpu-pool"}
    flow_run_id = _start(env, params | {"pool_timeout": None})
    # waits forever for a gpu-pool worker: its train_teacher child stays Scheduled
    wait_for("the gpu-pool stage flow run", lambda: _children(env, flow_run_id))
    sh(f"prefect flow-run cancel {flow_run_id}", env, timeout=120)
    assert _final_state(env, flow_run_id)["type"] == "CANCELLED"
    _, parent, _ = wait_for(
        "the cancellation hook",
        lambda: (runs := mlflow_runs(env, flow_run_id))[1].info.status != "RUNNING" and runs,
        timeout=120,
    )
    assert parent.info.status == "KILLED"
    assert [c["state"]["type"] for c in _children(env, flow_run_id)] == ["CANCELLED"]
