"""The team stack on real servers, without Docker (scripts/team-stack.sh).

Starts PostgreSQL (a temporary cluster; Debian's `postgresql` package), moto's S3 server,
the Prefect server and the MLflow server on PostgreSQL, MLflow artifacts and Prefect results
in S3, and a worker on cpu-pool, all listening on 127.0.0.2 (standing in for the team
network's interface) with authentication on. Then, as if on a second machine (its own
SLADE_HOME, configured only from `team-stack.sh worker-env`'s output and the secrets files it
names), a worker on gpu-pool. Runs slade/full-pipeline (the quickstart preset) with
training_pool=gpu-pool and checks where everything ended up and who may do what; then the
same through the nginx TLS proxy (a self-signed certificate) with a worker that trusts it.
Everything is stopped at the end, also on failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from unittest import mock

import httpx
import pytest
from shell_helpers import free_port, mlflow_runs, run_sourced, sourced, wait_for

# servers ~30-60 s, the quickstart run ~60-180 s on 2 idle cores (far more when they are
# shared); the TLS run reuses the cached stages
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a hang guard, not a timing
REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.2"  # a second loopback address: the "team network" interface
# shell commands with the team stack's environment; waits bounded at 2 minutes
sh = partial(run_sourced, "scripts/team-env.sh")
wait_for = partial(wait_for, timeout=120)
TRAINING = ["train_control", "train_student", "train_teacher"]
STAGES = [
    "cluster",
    "evaluate",
    "extract_embeddings",
    "prepare_data",
    "publish",
    "train_control",
    "train_student",
    "train_teacher",
]
MODEL = "slade-embedder"  # publish.registered_model's default
# variables of this machine that would let a client trust or reach something by accident
CLIENT_VARIABLES = ("PREFECT_", "MLFLOW_", "SLADE_", "AWS_")
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE")


def _postgres_installed() -> bool:
    """Where scripts/team-stack.sh looks: initdb on PATH or Debian's versioned directory."""
    return bool(shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb")))


def _nginx_installed() -> bool:
    return bool(shutil.which("nginx") or Path("/usr/sbin/nginx").exists())


def _base_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(CLIENT_VARIABLES) and k not in CA_VARIABLES
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not shutil.which("runuser") and os.geteuid() == 0:
        pytest.fail("running as root needs runuser (util-linux) to start PostgreSQL")
    for installed, package in (
        (_postgres_installed(), "postgresql"),
        (_nginx_installed(), "nginx"),
    ):
        if not installed:
            message = f"{package} missing: apt-get install -y {package}"
            if os.environ.get("CI") == "true":
                pytest.fail(f"{message} (.ci/run installs it)")
            pytest.skip(message)
    ports = {
        "SLADE_PREFECT_PORT": str(free_port()),
        "SLADE_MLFLOW_PORT": str(free_port()),
        "SLADE_S3_PORT": str(free_port()),
        "SLADE_PG_PORT": str(free_port()),
        "SLADE_PREFECT_TLS_PORT": str(free_port()),
        "SLADE_MLFLOW_TLS_PORT": str(free_port()),
    }
    servers = tmp_path_factory.mktemp("team-servers")
    # a directory the `postgres` user can enter (pytest's temp root is private to us)
    pg_data = tempfile.mkdtemp(prefix="slade-pg-")
    env = _base_env() | ports | {"SLADE_HOME": str(servers), "SLADE_VENV": sys.prefix}
    env |= {"SLADE_PG_DATA": pg_data, "SLADE_BIND_HOST": HOST}
    homes: list[Path] = []  # the other machines' homes, stopped at the end
    try:
        sh("scripts/team-stack.sh up", env, timeout=300)
        yield env, homes
    finally:
        try:
            for home in homes:
                home_env = {"SLADE_HOME": str(home), "SLADE_VENV": sys.prefix}
                sh("scripts/team-stack.sh down", _base_env() | home_env, timeout=120)
        finally:
            sh("scripts/team-stack.sh down", env, timeout=180)
            shutil.rmtree(pg_data, ignore_errors=True)
    for home in [servers, *homes]:
        assert not list((home / "pids").glob("*.pid")), home


def _secrets_dir(env) -> Path:
    return Path(env["SLADE_HOME"]) / "team"  # SLADE_SECRETS_DIR's default


def _secret(env, name: str) -> str:
    return (_secrets_dir(env) / name).read_text().strip()


def _runs(env, flow_run_id: str | None = None):
    return mlflow_runs(env | {"SLADE_SERVER_HOST": HOST}, flow_run_id)


def _s3(env):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=f"http://{HOST}:{env['SLADE_S3_PORT']}",
        aws_access_key_id="slade-local",
        aws_secret_access_key="slade-local",
        region_name="us-east-1",
    )


def _keys(env, bucket: str) -> list[str]:
    pages = _s3(env).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def _prefect(env, auth: bool = True) -> httpx.Client:
    api = f"http://{HOST}:{env['SLADE_PREFECT_PORT']}/api"
    user, _, password = _secret(env, "prefect-auth").partition(":")
    return httpx.Client(base_url=api, auth=(user, password) if auth else None, timeout=30)


@contextmanager
def _mlflow_user(env, user: str):
    """MLflow clients in this process log in as `user` (viewer, pipeline, admin)."""
    password = _secret(env, f"mlflow-{user}")
    login = {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password}
    with mock.patch.dict(os.environ, login):
        yield


def _remote_worker(stack_env, homes: list[Path], home: Path, proxy_env=None) -> dict[str, str]:
    """A gpu-pool worker 'on another machine': configured only from worker-env's output and
    the secrets files that output names, copied into its own home."""
    secrets = home / "secrets"
    printed = sh(
        f"scripts/team-stack.sh worker-env {secrets}", stack_env | (proxy_env or {}), 60
    ).stdout
    assert not any(_secret_values(stack_env) & set(re.findall(r"[\w:.-]+", printed))), printed
    names = re.search(r"^# A worker on another machine: copy (.+) from (\S+) on ", printed, re.M)
    secrets.mkdir(mode=0o700, parents=True)
    for name in names[1].split():
        shutil.copy2(Path(names[2]) / name, secrets / name)
    (home / "worker.env").write_text(printed)
    env = _base_env() | {"SLADE_HOME": str(home), "SLADE_VENV": sys.prefix}
    homes.append(home)
    return env


def _start_remote_worker(env, home: Path, env_file: str = "worker.env"):
    """`scripts/team-stack.sh worker gpu-pool` with home/<env_file> (worker-env's exports)."""
    return sourced(home / env_file, "scripts/team-stack.sh worker gpu-pool", env, timeout=120)


def _secret_values(env) -> set[str]:
    values = set()
    for name in ("pg-password", "prefect-auth", "mlflow-admin", "mlflow-pipeline", "mlflow-viewer"):
        value = _secret(env, name)
        values |= {value, value.partition(":")[2]} - {""}
    return values


def _run_quickstart(env, prefect: httpx.Client) -> str:
    wait_for(
        "the gpu-pool worker to come online",
        lambda: any(
            w["status"] == "ONLINE"
            for w in prefect.post("/work_pools/gpu-pool/workers/filter", json={}).json()
        ),
    )
    # the quickstart deployment as the README runs it, its training on the second pool
    run = sh(
        "prefect deployment run slade/full-pipeline --param training_pool=gpu-pool"
        " --watch --watch-timeout 1500",
        env,
        timeout=1560,
    )
    return re.search(r"UUID: ([0-9a-f-]{36})", run.stdout).group(1)


def _children(prefect: httpx.Client, flow_run_id: str) -> list[dict]:
    body = {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}}
    return prefect.post("/flow_runs/filter", json=body).json()


def _assert_trained_on_gpu_pool(prefect: httpx.Client, flow_run_id: str) -> list[dict]:
    run = prefect.get(f"/flow_runs/{flow_run_id}").json()
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["work_pool_name"] == "cpu-pool"
    children = _children(prefect, flow_run_id)
    assert sorted(c["name"] for c in children) == TRAINING
    assert {c["work_pool_name"] for c in children} == {"gpu-pool"}
    assert {c["state"]["type"] for c in children} == {"COMPLETED"}
    running = prefect.post(
        "/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}}
    ).json()
    assert running == [], "a flow run was left RUNNING"
    return children


@pytest.fixture(scope="module")
def pipeline_run(stack, tmp_path_factory):
    env, homes = stack
    gpu_home = tmp_path_factory.mktemp("gpu-machine")
    gpu_env = _remote_worker(env, homes, gpu_home)
    started = _start_remote_worker(gpu_env, gpu_home)
    assert started.returncode == 0, started.stdout + started.stderr
    sh("prefect --no-prompt deploy --all", env, timeout=180)
    prefect = _prefect(env)
    flow_run_id = _run_quickstart(env, prefect)
    return env, gpu_env, prefect, flow_run_id


def test_every_server_listens_on_the_bind_address_only(stack):
    env, _ = stack
    for key in ("SLADE_PREFECT_PORT", "SLADE_MLFLOW_PORT", "SLADE_S3_PORT", "SLADE_PG_PORT"):
        port = int(env[key])
        socket.create_connection((HOST, port), timeout=5).close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    secrets = _secrets_dir(env)
    assert secrets.stat().st_mode & 0o077 == 0
    for path in secrets.iterdir():
        assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"


def test_an_open_listen_address_without_authentication_is_refused(stack, tmp_path):
    env, _ = stack
    home = tmp_path / "open"
    open_env = _base_env() | {"SLADE_HOME": str(home), "SLADE_VENV": sys.prefix}
    open_env |= {"SLADE_BIND_HOST": "0.0.0.0", "SLADE_TEAM_AUTH": "off"}
    refused = subprocess.run(
        ["scripts/team-stack.sh", "up"], cwd=REPO, env=open_env, capture_output=True, text=True
    )
    assert refused.returncode != 0
    assert "without authentication anyone who reaches 0.0.0.0" in refused.stderr
    # moto checks no keys: with authentication on, its S3 still may not face the network
    refused = subprocess.run(
        ["scripts/team-stack.sh", "up"],
        cwd=REPO,
        env=open_env | {"SLADE_TEAM_AUTH": "on"},
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "moto accepts any keys" in refused.stderr
    assert not list((home / "pids").glob("*.pid"))


def test_a_wrong_password_is_a_clear_error_in_the_worker_log(stack, tmp_path):
    env, homes = stack
    for secret, wanted in (
        ("mlflow-pipeline", "the password of MLflow user 'pipeline' is wrong"),
        ("prefect-auth", "PREFECT_API_AUTH_STRING is wrong"),
    ):
        home = tmp_path / secret
        worker_env = _remote_worker(env, homes, home)
        (home / "secrets" / secret).write_text("slade:not-the-password\n")
        started = _start_remote_worker(worker_env, home)
        assert started.returncode != 0, started.stdout
        log = (home / "logs" / "worker-gpu-pool.log").read_text()
        assert wanted in log, log
        assert not list((home / "pids").glob("*.pid")), "the worker started anyway"


def test_unauthenticated_requests_are_refused_and_change_nothing(pipeline_run):
    env, _, prefect, _ = pipeline_run
    anonymous = _prefect(env, auth=False)
    before = prefect.post("/flow_runs/filter", json={}).json()
    deployment = prefect.get("/deployments/name/slade/full-pipeline").json()
    assert anonymous.post("/flow_runs/filter", json={}).status_code == 401
    created = anonymous.post(f"/deployments/{deployment['id']}/create_flow_run", json={})
    assert created.status_code == 401
    created = anonymous.post("/flow_runs/", json={"flow_id": deployment["flow_id"]})
    assert created.status_code == 401
    assert prefect.post("/flow_runs/filter", json={}).json() == before

    mlflow = f"http://{HOST}:{env['SLADE_MLFLOW_PORT']}/api/2.0/mlflow"
    with _mlflow_user(env, "viewer"):
        client, _, runs = _runs(env)
        champion = client.get_model_version_by_alias(MODEL, "champion")
    experiment = runs[0].info.experiment_id
    search = httpx.post(f"{mlflow}/runs/search", json={"experiment_ids": [experiment]})
    assert search.status_code == 401
    alias = {"name": MODEL, "alias": "champion", "version": "1"}
    assert httpx.post(f"{mlflow}/registered-models/alias", json=alias).status_code == 401
    artifact = f"{mlflow}-artifacts/artifacts/{experiment}/{runs[0].info.run_id}/artifacts"
    assert httpx.get(artifact).status_code == 401
    with _mlflow_user(env, "viewer"):
        assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version


def test_the_viewer_reads_runs_but_cannot_move_champion(pipeline_run):
    from mlflow.exceptions import MlflowException

    env, _, _, flow_run_id = pipeline_run
    with _mlflow_user(env, "viewer"):
        client, parent, children = _runs(env, flow_run_id)
        assert parent.info.status == "FINISHED" and len(children) == len(STAGES)
        champion = client.get_model_version_by_alias(MODEL, "champion")
        with pytest.raises(MlflowException, match="PERMISSION_DENIED|403|Permission denied"):
            client.set_registered_model_alias(MODEL, "champion", champion.version)
        with pytest.raises(MlflowException, match="PERMISSION_DENIED|403|Permission denied"):
            client.delete_registered_model_alias(MODEL, "champion")
        assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version
    # the pipeline's user may (it registered the model): set it to where it already points
    with _mlflow_user(env, "pipeline"):
        client.set_registered_model_alias(MODEL, "champion", champion.version)


def test_training_ran_on_the_second_pool_and_handed_its_results_back_through_s3(pipeline_run):
    env, gpu_env, prefect, flow_run_id = pipeline_run
    children = _assert_trained_on_gpu_pool(prefect, flow_run_id)

    # the training stages were computed in the second machine's runs directory only
    gpu_runs = Path(gpu_env["SLADE_HOME"]) / "runs"
    cpu_runs = Path(env["SLADE_HOME"]) / "runs"
    for stage in TRAINING:
        assert [p.name for p in (gpu_runs / stage).iterdir() if p.is_dir()], stage
        assert not (cpu_runs / stage).exists(), f"{stage} ran on the cpu-pool machine"
    assert (cpu_runs / "prepare_data").is_dir() and not (gpu_runs / "prepare_data").exists()

    # each child's result (what the flow on the other machine read) is an object in S3,
    # written through the S3Bucket block, not a file on either machine
    block = prefect.get("/block_types/slug/s3-bucket/block_documents/name/slade-results")
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

    env, _, _, flow_run_id = pipeline_run
    with _mlflow_user(env, "pipeline"):
        client, parent, children = _runs(env, flow_run_id)
        _, _, everything = _runs(env)
    assert parent.info.status == "FINISHED"
    assert sorted(c.data.tags["slade.stage"] for c in children) == STAGES
    assert {r.info.status for r in everything} == {"FINISHED"}, "a run was left RUNNING"

    # the tracking data is in PostgreSQL (both servers' databases)
    password = _secret(env, "pg-password")
    connect = dict(host=HOST, port=int(env["SLADE_PG_PORT"]), user="slade", password=password)
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
    with tempfile.TemporaryDirectory() as tmp, _mlflow_user(env, "viewer"):
        got = client.download_artifacts(teacher.info.run_id, "teacher.pt", tmp)
        assert Path(got).stat().st_size > 0
    # the cpu-pool machine read the teacher (trained on the other machine) over HTTP
    inputs = Path(env["SLADE_HOME"]) / "runs" / "_inputs" / teacher.info.run_id
    assert (inputs / "teacher.pt").is_file()


def test_no_secret_on_a_command_line_or_in_a_log(pipeline_run):
    env, gpu_env, _, _ = pipeline_run
    secrets = _secret_values(env)
    commands = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [s for s in secrets if s in commands]
    for home in (env["SLADE_HOME"], gpu_env["SLADE_HOME"]):
        for log in (Path(home) / "logs").glob("*.log"):
            text = log.read_text(errors="replace")
            assert not [s for s in secrets if s in text], log


def test_a_worker_through_the_tls_proxy_runs_the_pipeline(stack, pipeline_run, tmp_path_factory):
    env, gpu_env, prefect, _ = pipeline_run
    _, homes = stack
    cert = sh("scripts/team-stack.sh self-signed-cert", env, 60).stdout
    tls = dict(re.findall(r"(SLADE_TLS_(?:CERT|KEY))=(\S+)", cert))
    sh("scripts/team-stack.sh proxy", env | tls, timeout=60)
    proxy = f"https://{HOST}:{env['SLADE_PREFECT_TLS_PORT']}/api/health"
    # a client without the CA: a certificate error, not a connection
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(proxy, verify=ssl.create_default_context())

    # the plain-HTTP worker goes; one that reaches the servers through the proxy only comes
    sh("scripts/team-stack.sh down", gpu_env, timeout=120)
    home = tmp_path_factory.mktemp("gpu-machine-tls")
    tls_env = _remote_worker(env, homes, home, proxy_env=tls)
    printed = (home / "worker.env").read_text()
    assert f"PREFECT_API_URL=https://{HOST}:{env['SLADE_PREFECT_TLS_PORT']}/api" in printed
    assert "SSL_CERT_FILE=" in printed and "REQUESTS_CA_BUNDLE=" in printed

    # without the CA it refuses to start, saying why
    no_ca = home / "no-ca.env"
    no_ca.write_text(
        re.sub(r"^export (SSL_CERT_FILE|REQUESTS_CA_BUNDLE)=.*$", "", printed, flags=re.M)
    )
    refused = _start_remote_worker(tls_env, home, no_ca.name)
    assert refused.returncode != 0
    log = (home / "logs" / "worker-gpu-pool.log").read_text()
    assert "TLS certificate is not trusted" in log, log

    started = _start_remote_worker(tls_env, home)
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run_id = _run_quickstart(env, prefect)
    _assert_trained_on_gpu_pool(prefect, flow_run_id)
    # the worker reached both servers through the proxy only
    access = (Path(env["SLADE_HOME"]) / "logs" / "proxy-access.log").read_text()
    assert "/api/work_pools/gpu-pool/get_scheduled_flow_runs" in access
    assert f"/api/flow_runs/{_children(prefect, flow_run_id)[0]['id']}" in access
    assert "/api/2.0/mlflow/experiments/search" in access
    with _mlflow_user(env, "pipeline"):
        _, _, everything = _runs(env)
    assert {r.info.status for r in everything} == {"FINISHED"}, "a run was left RUNNING"
