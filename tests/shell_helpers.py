"""What the tests that start real servers share: free ports, shell commands run with a
services environment script sourced, and polling with a bound."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sourced(
    env_script: str | Path, command: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """Run `command` in bash after `source <env_script>` (e.g. scripts/env.sh), in the repo,
    capturing its output; whatever its exit status."""
    return subprocess.run(
        ["bash", "-c", f"source {env_script} && {command}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_sourced(
    env_script: str, command: str, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """`sourced`, asserting that it succeeded (showing the ends of its output otherwise)."""
    result = sourced(env_script, command, env, timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def wait_for(what, check, timeout: float = 300):
    """Poll `check()` until it returns something truthy (a generous bound, not a timing).
    `what` names the wait in the failure message; a callable is asked at failure time (so
    it can say the last thing seen)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up waiting for {what() if callable(what) else what}")
        time.sleep(1)
    return value


def mlflow_runs(env: dict[str, str], flow_run_id: str | None = None):
    """(client, pipeline parent run, its child runs) of a flow run on the MLflow server at
    env's SLADE_SERVER_HOST (default 127.0.0.1) and SLADE_MLFLOW_PORT; without a flow run id
    (client, None, every run of the experiment)."""
    from mlflow.tracking import MlflowClient

    host = env.get("SLADE_SERVER_HOST", "127.0.0.1")
    uri = f"http://{host}:{env['SLADE_MLFLOW_PORT']}"
    # the registry too: mlflow's process-wide registry URI may still name an earlier test's server
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("slade").experiment_id
    if flow_run_id is None:
        return client, None, client.search_runs([exp])
    (parent,) = client.search_runs(
        [exp],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' "
        "and tags.`slade.kind` = 'pipeline'",
    )
    children = client.search_runs(
        [exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    return client, parent, children
