"""The team stack on real servers, without Docker (scripts/team-stack.sh).

Starts PostgreSQL (a temporary cluster; Debian's `postgresql` package), moto's S3 server,
the Prefect server and the MLflow server on PostgreSQL, MLflow artifacts and Prefect results
in S3, and a worker on cpu-pool; then, as if on a second machine (its own SLADE_HOME,
SLADE_RUNS_DIR and PREFECT_HOME: it shares no path with the first), a worker on gpu-pool.
Runs slade/full-pipeline (the quickstart preset) with training_pool=gpu-pool and checks where
everything ended up.
Everything listens on free 127.0.0.1 ports and is stopped at the end, also on failure.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from functools import partial
from pathlib import Path

import httpx
import pytest
from shell_helpers import free_port, mlflow_runs, run_sourced, wait_for

# servers ~30-60 s, the quickstart run ~60-180 s on 2 shared cores
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # a hang guard, not a timing
REPO = Path(__file__).resolve().parents[1]
# shell commands with the team stack's environment; waits bounded at 2 minutes
sh = partial(run_sourced, "scripts/team-env.sh")
wait_for = partial(wait_for, timeout=120)
TRAINING = ["train_student", "train_teacher"]
STAGES = [
    "cluster",
    "evaluate",
    "extract_embeddings",
    "prepare_data",
    "publish",
    "train_student",
    "train_teacher",
]


def _postgres_installed() -> bool:
    """Where scripts/team-stack.sh looks: initdb on PATH or Debian's versioned directory."""
    return bool(shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not shutil.which("runuser") and os.geteuid() == 0:
        pytest.fail("running as root needs runuser (util-linux) to start PostgreSQL")
    if not _postgres_installed():
        message = "PostgreSQL server binaries missing: apt-get install -y postgresql"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (.ci/run installs it)")
        pytest.skip(message)
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_", "SLADE_", "AWS_"))
    }
    ports = {
        "SLADE_PREFECT_PORT": str(free_port()),
        "SLADE_MLFLOW_PORT": str(free_port()),
        "SLADE_S3_PORT": str(free_port()),
        "SLADE_PG_PORT": str(free_port()),
    }
    servers = tmp_path_factory.mktemp("team-servers")
    # a directory the `postgres` user can enter (pytest's temp root is private to us)
    pg_data = tempfile.mkdtemp(prefix="slade-pg-")
    env = base | ports | {"SLADE_HOME": str(servers), "SLADE_VENV": sys.prefix}
    env["SLADE_PG_DATA"] = pg_data
    # the second machine: reaches the servers over HTTP and S3 only, shares no directory
    gpu_home = tmp_path_factory.mktemp("gpu-machine")
    gpu_env = base | ports | {"SLADE_HOME": str(gpu_home), "SLADE_VENV": sys.prefix}
    try:
        sh("scripts/team-stack.sh up", env, timeout=300)
        sh("scripts/team-stack.sh worker gpu-pool", gpu_env, timeout=60)
        yield env, gpu_env
    finally:
        try:
            sh("scripts/team-stack.sh down", gpu_env, timeout=120)
        finally:
            sh("scripts/team-stack.sh down", env, timeout=180)
            shutil.rmtree(pg_data, ignore_errors=True)
    assert not list((servers / "pids").glob("*.pid"))
    assert not list((gpu_home / "pids").glob("*.pid"))


@pytest.fixture(scope="module")
def pipeline_run(stack):
    env, gpu_env = stack
    api = f"http://127.0.0.1:{env['SLADE_PREFECT_PORT']}/api"
    sh("prefect --no-prompt deploy --all", env, timeout=180)
    wait_for(
        "the gpu-pool worker to come online",
        lambda: any(
            w["status"] == "ONLINE"
            for w in httpx.post(f"{api}/work_pools/gpu-pool/workers/filter", json={}).json()
        ),
    )
    # the quickstart deployment as the README runs it, its training on the second pool
    run = sh(
        "prefect deployment run slade/full-pipeline --param training_pool=gpu-pool"
        " --watch --watch-timeout 720",
        env,
        timeout=780,
    )
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)
    return env, gpu_env, api, flow_run_id


def _s3(env):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{env['SLADE_S3_PORT']}",
        aws_access_key_id="slade-local",
        aws_secret_access_key="slade-local",
        region_name="us-east-1",
    )


def _keys(env, bucket: str) -> list[str]:
    pages = _s3(env).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def test_training_ran_on_the_second_pool_and_handed_its_results_back_through_s3(pipeline_run):
    env, gpu_env, api, flow_run_id = pipeline_run
    run = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["work_pool_name"] == "cpu-pool"
    body = {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}}
    children = httpx.post(f"{api}/flow_runs/filter", json=body).json()
    assert sorted(c["name"] for c in children) == TRAINING
    assert {c["work_pool_name"] for c in children} == {"gpu-pool"}
    assert {c["state"]["type"] for c in children} == {"COMPLETED"}

    # the training stages were computed in the second machine's runs directory only
    gpu_runs = Path(gpu_env["SLADE_HOME"]) / "runs"
    cpu_runs = Path(env["SLADE_HOME"]) / "runs"
    for stage in ("train_teacher", "train_student"):
        assert [p.name for p in (gpu_runs / stage).iterdir() if p.is_dir()], stage
        assert not (cpu_runs / stage).exists(), f"{stage} ran on the cpu-pool machine"
    assert (cpu_runs / "prepare_data").is_dir() and not (gpu_runs / "prepare_data").exists()

    # each child's result (what the flow on the other machine read) is an object in S3,
    # written through the S3Bucket block, not a file on either machine
    block = httpx.get(f"{api}/block_types/slug/s3-bucket/block_documents/name/slade-results")
    block.raise_for_status()
    keys = set(_keys(env, "prefect-results"))
    for child in children:
        data = child["state"]["data"]
        assert data["storage_block_id"] == block.json()["id"], data
        assert data["storage_key"] in keys, (data["storage_key"], sorted(keys))
    # ... and so are the cached stage results (task cache keys `<stage>-<key>`)
    for stage in STAGES:
        assert any(k.startswith(f"{stage}-") for k in keys), (stage, sorted(keys))
    assert not (Path(env["SLADE_HOME"]) / "prefect" / "storage").exists()
    assert not (Path(gpu_env["SLADE_HOME"]) / "prefect" / "storage").exists()


def test_mlflow_runs_in_postgres_and_artifacts_in_s3_read_over_http(pipeline_run):
    import psycopg2

    env, gpu_env, _, flow_run_id = pipeline_run
    client, parent, children = mlflow_runs(env, flow_run_id)
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.tags["slade.stage"] for c in children) == STAGES
    _, _, everything = mlflow_runs(env)
    assert {r.info.status for r in everything} == {"FINISHED"}, "a run was left RUNNING"

    # the tracking data is in PostgreSQL (both servers' databases)
    password = (Path(env["SLADE_HOME"]) / "team" / "pg-password").read_text().strip()
    connect = dict(
        host="127.0.0.1", port=int(env["SLADE_PG_PORT"]), user="slade", password=password
    )
    with psycopg2.connect(dbname="mlflow", **connect) as db, db.cursor() as cur:
        cur.execute("SELECT run_uuid, status FROM runs")
        rows = dict(cur.fetchall())
    assert {r.info.run_id for r in everything} == set(rows)
    with psycopg2.connect(dbname="prefect", **connect) as db, db.cursor() as cur:
        cur.execute("SELECT state_type FROM flow_run WHERE id = %s", (flow_run_id,))
        assert cur.fetchone() == ("COMPLETED",)

    # artifacts: behind the server's proxy (no local path), stored in the S3 bucket
    teacher = next(c for c in children if c.data.tags["slade.stage"] == "train_teacher")
    assert teacher.info.artifact_uri.startswith("mlflow-artifacts:/")
    keys = _keys(env, "mlflow-artifacts")
    for run in children:
        assert any(f"/{run.info.run_id}/artifacts/" in k for k in keys), run.data.tags
    assert any(k.endswith(f"/{teacher.info.run_id}/artifacts/teacher.pt") for k in keys)
    with tempfile.TemporaryDirectory() as tmp:
        got = client.download_artifacts(teacher.info.run_id, "teacher.pt", tmp)
        assert Path(got).stat().st_size > 0
    # the cpu-pool machine read the teacher (trained on the other machine) over HTTP
    inputs = Path(env["SLADE_HOME"]) / "runs" / "_inputs" / teacher.info.run_id
    assert (inputs / "teacher.pt").is_file()
