"""The team-server compose file, checked statically (docker cannot run in the test machine).

Each rule is a function returning problems; the real file must have none, and deliberately
broken copies must be caught, so a rule that stopped checking would fail here too. The
compose file must also be the configuration of scripts/team-stack.sh (the same stack without
Docker, run for real by tests/test_team_stack.py): same databases and drivers, same buckets,
Prefect results in S3 through the same block, the same listen-address setting
(SLADE_BIND_HOST) and the same authentication: the Prefect auth string on the server and every
worker, MLflow's basic-auth app whose `pipeline` user the workers log in as.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_MOUNT = "/srv/slade"
POOLS = {"cpu-worker": "cpu-pool", "gpu-worker": "gpu-pool"}
VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|AUTH_STRING", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^/:@\s]+:(?P<password>[^@\s]+)@")
EXPORT = re.compile(r'^export (?P<name>\w+)="\$\{(?P=name):-(?P<default>[^}"]*)\}"', re.MULTILINE)
BIND = "${SLADE_BIND_HOST:-127.0.0.1}"  # scripts/team-env.sh's listen address and default


def team_script(name: str) -> str:
    return (ROOT / "scripts" / name).read_text()


def team_env_defaults() -> dict[str, str]:
    """The defaults scripts/team-env.sh exports (`export NAME="${NAME:-default}"`)."""
    text = (ROOT / "scripts" / "team-env.sh").read_text()
    return {m["name"]: m["default"] for m in EXPORT.finditer(text)}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def resolve_defaults(text: str) -> str:
    """What compose substitutes when the variable is unset: its default, else empty."""
    return VAR.sub(lambda m: m["arg"] if m["op"] in (":-", "-") else "", text)


def walk_strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in walk_strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in walk_strings(value)]
    return []


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> str:
    cmd = service.get("command") or ""
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def worker_command(service: dict[str, Any]) -> list[str] | None:
    """The `prefect worker start` arguments: the whole command, or the last step of `sh -c`."""
    cmd = command_of(service)
    if service.get("entrypoint") in (["/bin/sh", "-c"], ["sh", "-c"]):
        *_, last = cmd.split("&&")
        cmd = last.strip().removeprefix("exec ")  # exec: the worker gets the stop signal
    words = cmd.split()
    return words if words[:3] == ["prefect", "worker", "start"] else None


def is_one_shot(service: dict[str, Any]) -> bool:
    """A job that runs to completion: declared with `restart: "no"` and serving no ports."""
    return service.get("restart") == "no" and not service.get("ports")


def health_problems(c: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in c["services"].items():
        test = (svc.get("healthcheck") or {}).get("test")
        if not test and not is_one_shot(svc):
            problems.append(f"{name}: no healthcheck and not a one-shot job")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):  # short form: starts without waiting for health
            deps = {dep: None for dep in deps}
        for dep, spec in deps.items():
            wanted = (
                "service_completed_successfully"
                if is_one_shot(c["services"][dep])
                else "service_healthy"
            )
            if not isinstance(spec, dict) or spec.get("condition") != wanted:
                problems.append(f"{name}: depends_on {dep} must use condition {wanted}")
    return problems


def port_problems(c: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in c["services"].items():
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                host_ip = resolve_defaults(str(port.get("host_ip", "")))
            else:
                parts = resolve_defaults(str(port)).split(":")
                host_ip = parts[0] if len(parts) == 3 else ""
            if host_ip != "127.0.0.1":
                problems.append(f"{name}: port {port} is not bound to 127.0.0.1 by default")
    return problems


def secret_problems(c: dict[str, Any]) -> list[str]:
    """Secrets only as ${VAR} from .env: no literals and no defaults that would act as one."""
    problems = []

    def literal(value: str) -> bool:
        return bool(VAR.sub("", value).strip()) or any(
            m["op"] in (":-", "-") for m in VAR.finditer(value)
        )

    for name, svc in c["services"].items():
        for key, value in env_of(svc).items():
            if SECRET_KEY.search(key) and literal(value):
                problems.append(f"{name}: {key} is not taken from the environment")
        for text in walk_strings(svc):
            for m in URL_PASSWORD.finditer(text):
                if literal(m["password"]):
                    problems.append(f"{name}: literal password in URL {text!r}")
    return problems


def gpu_problems(c: dict[str, Any]) -> list[str]:
    svc = c["services"].get("gpu-worker") or {}
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get(
        "devices"
    ) or []
    if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices):
        return ["gpu-worker: reserves no nvidia gpu device"]
    return []


def worker_problems(c: dict[str, Any]) -> list[str]:
    problems = []
    mounts = {}
    for name, pool in POOLS.items():
        svc = c["services"].get(name)
        if svc is None:
            problems.append(f"{name}: missing")
            continue
        cmd = worker_command(svc)
        if cmd is None:
            problems.append(f"{name}: does not run `prefect worker start` (last, exec'd by sh)")
            cmd = []
        if not {("--pool", pool), ("--type", "process")} <= set(zip(cmd, cmd[1:], strict=False)):
            problems.append(f"{name}: must poll --pool {pool} with --type process")
        volumes = {
            v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", []) if ":" in str(v)
        }
        mounts[name] = volumes.get(SHARED_MOUNT)
        if mounts[name] is None or mounts[name] not in (c.get("volumes") or {}):
            problems.append(f"{name}: no named volume mounted at {SHARED_MOUNT}")
        env = env_of(svc)
        if not env.get("SLADE_RUNS_DIR", "").startswith(SHARED_MOUNT + "/"):
            problems.append(f"{name}: SLADE_RUNS_DIR must point into {SHARED_MOUNT}")
        if env.get("PREFECT_API_URL") != "http://prefect-server:4200/api":
            problems.append(f"{name}: PREFECT_API_URL does not reach the prefect-server service")
        if env.get("MLFLOW_TRACKING_URI") != "http://mlflow:5000":
            problems.append(f"{name}: MLFLOW_TRACKING_URI does not reach the mlflow service")
    if len(set(mounts.values())) != 1:
        problems.append(f"workers mount different volumes at {SHARED_MOUNT}: {mounts}")
    return problems


def pinned_problems(c: dict[str, Any]) -> list[str]:
    """Every image an exact version: a tag that is not `latest`, no variable that replaces it;
    the project's own image tagged with the version in pyproject.toml."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    problems = []
    for name, svc in c["services"].items():
        image = str(svc.get("image", ""))
        repo, _, tag = image.rpartition(":")
        if VAR.search(image) or not repo or "/" in tag or tag == "latest":
            problems.append(f"{name}: image {image!r} is not pinned to an exact version")
        elif not re.search(r"\d", tag) or re.fullmatch(r"\d+(-\w+)?", tag):
            problems.append(f"{name}: image {image!r}: tag is not an exact version")
        if "build" in svc and image != f"slade:{version}":
            problems.append(f"{name}: builds {image!r}, not slade:{version} (pyproject.toml)")
    return problems


def wait_problems(c: dict[str, Any]) -> list[str]:
    """`docker compose up -d --wait` succeeds by design: every service it starts (no profile)
    keeps running with a healthcheck; a one-shot job there would exit and fail the wait."""
    problems = []
    for name, svc in c["services"].items():
        if svc.get("profiles"):
            continue
        if svc.get("restart") not in ("unless-stopped", "always"):
            problems.append(f"{name}: restart {svc.get('restart')!r}: one-shot in `up --wait`")
        if not (svc.get("healthcheck") or {}).get("test"):
            problems.append(f"{name}: no healthcheck for `up --wait`")
    return problems


def results_problems(c: dict[str, Any]) -> list[str]:
    """Workers keep Prefect results in S3 as scripts/team-env.sh configures them."""
    team = team_env_defaults()
    block = "s3-bucket/" + team["SLADE_RESULTS_BLOCK"]
    problems = []
    for name in POOLS:
        env = env_of(c["services"].get(name) or {})
        wanted = {
            "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": block,
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            "SLADE_RESULTS_BLOCK": team["SLADE_RESULTS_BLOCK"],
            "SLADE_S3_ENDPOINT_URL": "http://minio:9000",
            "AWS_ENDPOINT_URL_S3": "http://minio:9000",
        }
        for key, value in wanted.items():
            if env.get(key) != value:
                problems.append(f"{name}: {key}={env.get(key)!r}, not {value!r}")
        bucket = resolve_defaults(env.get("SLADE_RESULTS_BUCKET", ""))
        if bucket != team["SLADE_RESULTS_BUCKET"]:
            problems.append(f"{name}: results bucket {bucket!r} is not team-env.sh's")
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if not VAR.fullmatch(env.get(key, "")):
                problems.append(f"{name}: {key} must come from .env")
    return problems


def bind_problems(c: dict[str, Any]) -> list[str]:
    """Every published port listens on team-stack.sh's setting: same variable, same default."""
    problems = []
    if team_env_defaults().get("SLADE_BIND_HOST") != "127.0.0.1":
        problems.append("scripts/team-env.sh: SLADE_BIND_HOST does not default to 127.0.0.1")
    for name, svc in c["services"].items():
        for port in svc.get("ports") or []:
            if not str(port).startswith(BIND + ":"):
                problems.append(f"{name}: port {port} does not listen on {BIND}")
    return problems


def required_var(value: str | None) -> str | None:
    """The variable's name when `value` is exactly `${NAME:?...}` (required from .env)."""
    m = VAR.fullmatch(value or "")
    return m["name"] if m and m["op"] in (":?", "?") else None


def auth_problems(c: dict[str, Any]) -> list[str]:
    """Authentication as team-stack.sh sets it up: one Prefect auth string on the server and
    every worker; MLflow's basic-auth app, its admin and users from .env, the workers logged
    in as the pipeline's user (the one scripts/team_access.py creates and team-env.sh uses)."""
    services = c["services"]
    problems = []
    prefect = required_var(env_of(services["prefect-server"]).get("PREFECT_SERVER_API_AUTH_STRING"))
    if prefect is None:
        problems.append("prefect-server: PREFECT_SERVER_API_AUTH_STRING not required from .env")
    mlflow = services["mlflow"]
    mlflow_env = env_of(mlflow)
    if "--app-name=basic-auth" not in command_of(mlflow).split():
        problems.append("mlflow: not started with --app-name=basic-auth")
    for key in (
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "SLADE_MLFLOW_PIPELINE_PASSWORD",
        "SLADE_MLFLOW_VIEWER_PASSWORD",
    ):
        if required_var(mlflow_env.get(key)) is None:
            problems.append(f"mlflow: {key} not required from .env")
    entrypoint = mlflow.get("entrypoint") or []
    if not (entrypoint and (ROOT / entrypoint[-1]).is_file()):
        problems.append(f"mlflow: entrypoint {entrypoint} (creates the users) not in the repo")
    elif "team_access.py users" not in (ROOT / entrypoint[-1]).read_text():
        problems.append("mlflow: its entrypoint does not create the users")
    pipeline = re.search(r'^PIPELINE_USER = "(\w+)"', team_script("team_access.py"), re.M)[1]
    if f"MLFLOW_TRACKING_USERNAME={pipeline}" not in team_script("team-env.sh"):
        problems.append(f"scripts/team-env.sh: clients do not log in as {pipeline!r}")
    for name in POOLS:
        env = env_of(services.get(name) or {})
        if required_var(env.get("PREFECT_API_AUTH_STRING")) != prefect:
            problems.append(f"{name}: PREFECT_API_AUTH_STRING is not the server's ${{{prefect}}}")
        if env.get("MLFLOW_TRACKING_USERNAME") != pipeline:
            problems.append(f"{name}: MLFLOW_TRACKING_USERNAME is not {pipeline!r}")
        password = required_var(env.get("MLFLOW_TRACKING_PASSWORD"))
        if password is None or password != required_var(
            mlflow_env.get("SLADE_MLFLOW_PIPELINE_PASSWORD")
        ):
            problems.append(f"{name}: MLFLOW_TRACKING_PASSWORD is not the pipeline user's")
    # the same permissions model: every user reads, creators manage what they create
    stack = team_script("team-stack.sh")
    for where, text in (("scripts/team-stack.sh", stack), ("mlflow entrypoint", _entry(mlflow))):
        if "default_permission = READ" not in text:
            problems.append(f"{where}: MLflow's default_permission is not READ")
    if "--app-name basic-auth" not in stack:
        problems.append("scripts/team-stack.sh: MLflow not started with --app-name basic-auth")
    return problems


def _entry(service: dict[str, Any]) -> str:
    path = ROOT / ((service.get("entrypoint") or [""])[-1])
    return path.read_text() if path.is_file() else ""


RULES = [
    bind_problems,
    auth_problems,
    health_problems,
    port_problems,
    secret_problems,
    gpu_problems,
    worker_problems,
    pinned_problems,
    wait_problems,
    results_problems,
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_compose_file_follows_the_rule(compose: dict[str, Any], rule):
    assert rule(compose) == []


def _broken(compose: dict[str, Any], edit) -> dict[str, Any]:
    c = copy.deepcopy(compose)
    edit(c["services"])
    return c


@pytest.mark.parametrize(
    ("rule", "edit"),
    [
        (health_problems, lambda s: s["mlflow"].pop("healthcheck")),
        (health_problems, lambda s: s["cpu-worker"].update(depends_on=["mlflow"])),
        (health_problems, lambda s: s["cpu-worker"].pop("healthcheck")),
        (port_problems, lambda s: s["mlflow"].update(ports=["5000:5000"])),
        (port_problems, lambda s: s["mlflow"].update(ports=["${BIND:-0.0.0.0}:5000:5000"])),
        (secret_problems, lambda s: s["postgres"]["environment"].update(POSTGRES_PASSWORD="x")),
        (
            secret_problems,
            lambda s: s["mlflow"]["environment"].update(AWS_SECRET_ACCESS_KEY="${S3:-hunter2}"),
        ),
        (
            secret_problems,
            lambda s: s["prefect-server"]["environment"].update(
                PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://u:pw@postgres/prefect"
            ),
        ),
        (gpu_problems, lambda s: s["gpu-worker"].pop("deploy")),
        (worker_problems, lambda s: s["gpu-worker"].update(command="prefect worker start -p gpu")),
        (worker_problems, lambda s: s["gpu-worker"].update(volumes=["other:/srv/slade"])),
        (worker_problems, lambda s: s["cpu-worker"].update(volumes=["slade-results:/data"])),
        (worker_problems, lambda s: s["cpu-worker"].update(command=["prefect worker start"])),
        (pinned_problems, lambda s: s["postgres"].update(image="postgres:latest")),
        (pinned_problems, lambda s: s["postgres"].update(image="postgres")),
        (pinned_problems, lambda s: s["postgres"].update(image="postgres:17-alpine")),
        (pinned_problems, lambda s: s["minio"].update(image="${MINIO_IMAGE:-minio/minio:R1}")),
        (pinned_problems, lambda s: s["mlflow"].update(image="slade:latest")),
        (
            wait_problems,
            lambda s: s.update(deploy={"image": "slade:0.1.0", "restart": "no", "command": "x"}),
        ),
        (wait_problems, lambda s: s["minio"].pop("healthcheck")),
        (
            results_problems,
            lambda s: s["cpu-worker"]["environment"].pop("PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"),
        ),
        (
            results_problems,
            lambda s: s["gpu-worker"]["environment"].update(AWS_ENDPOINT_URL_S3="http://x:9000"),
        ),
        (
            results_problems,
            lambda s: s["gpu-worker"]["environment"].update(AWS_SECRET_ACCESS_KEY="hunter2"),
        ),
        (
            bind_problems,
            lambda s: s["mlflow"].update(ports=["${BIND_ADDRESS:-127.0.0.1}:5000:5000"]),
        ),
        (
            auth_problems,
            lambda s: s["prefect-server"]["environment"].pop("PREFECT_SERVER_API_AUTH_STRING"),
        ),
        (
            auth_problems,
            lambda s: s["gpu-worker"]["environment"].update(PREFECT_API_AUTH_STRING="${X:?x}"),
        ),
        (auth_problems, lambda s: s["mlflow"]["command"].remove("--app-name=basic-auth")),
        (auth_problems, lambda s: s["mlflow"].pop("entrypoint")),
        (
            auth_problems,
            lambda s: s["cpu-worker"]["environment"].update(MLFLOW_TRACKING_USERNAME="admin"),
        ),
        (
            auth_problems,
            lambda s: s["cpu-worker"]["environment"].update(
                MLFLOW_TRACKING_PASSWORD="${MLFLOW_ADMIN_PASSWORD:?x}"
            ),
        ),
        (
            secret_problems,
            lambda s: s["prefect-server"]["environment"].update(
                PREFECT_SERVER_API_AUTH_STRING="slade:hunter2"
            ),
        ),
    ],
)
def test_rules_catch_a_broken_compose_file(compose: dict[str, Any], rule, edit):
    assert rule(_broken(compose, edit)) != []


def test_servers_use_postgres_and_s3_artifacts(compose: dict[str, Any]):
    services = compose["services"]
    prefect_db = env_of(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and "@postgres:5432/" in prefect_db
    assert "prefect server start" in command_of(services["prefect-server"])
    health = " ".join(services["prefect-server"]["healthcheck"]["test"])
    assert "/api/health" in health

    mlflow = command_of(services["mlflow"])
    assert mlflow.startswith("mlflow server") and "--artifacts-destination=s3://" in mlflow
    allowed = re.search(r"--allowed-hosts=(\S+)", resolve_defaults(mlflow))
    assert allowed and "mlflow:5000" in allowed[1].split(","), "workers' Host header refused"
    env = env_of(services["mlflow"])
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["mlflow"]["depends_on"]["minio"]["condition"] == "service_healthy"
    team = team_env_defaults()
    bucket = re.search(r"--artifacts-destination=s3://([^/\s]+)/", resolve_defaults(mlflow))
    assert bucket and bucket[1] == team["SLADE_MLFLOW_BUCKET"]

    # MinIO runs its mounted entrypoint (no test runs it: its text is not checked here)
    minio = services["minio"]
    mount = next(v for v in minio["volumes"] if v.endswith(":ro") and ".sh:" in v)
    script_path, in_container = mount.split(":")[:2]
    assert minio["entrypoint"][-1] == in_container and (ROOT / script_path).is_file()
    minio_env = {k: resolve_defaults(v) for k, v in env_of(minio).items()}
    assert minio_env["MLFLOW_BUCKET"] == team["SLADE_MLFLOW_BUCKET"]
    assert minio_env["RESULTS_BUCKET"] == team["SLADE_RESULTS_BUCKET"]

    # scripts/team-stack.sh: the same servers, drivers and artifact store, without Docker
    stack = (ROOT / "scripts" / "team-stack.sh").read_text()
    assert 'PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://' in stack
    assert 'MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://' in stack
    assert '--artifacts-destination "s3://$SLADE_MLFLOW_BUCKET/"' in stack

    init = services["postgres"]["volumes"]
    script = next(v.split(":")[0] for v in init if "docker-entrypoint-initdb.d" in v)
    assert (ROOT / script).is_file()


def test_every_required_variable_is_documented_and_env_is_not_committed(
    compose: dict[str, Any],
):
    text = (ROOT / "docker-compose.yml").read_text()
    used = {m["name"] for m in VAR.finditer(text)}
    required = {m["name"] for m in VAR.finditer(text) if m["op"] in (None, ":?", "?")}
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert required <= set(example), f"add to .env.example: {sorted(required - set(example))}"
    assert set(example) <= used, f"unused in compose: {sorted(set(example) - used)}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split(), "secrets baked into image"


def test_dockerfile_installs_the_project_for_every_python_service(compose: dict[str, Any]):
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    base = lines[[i for i, line in enumerate(lines) if line.startswith("FROM")][0]]
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim-\w+", base), f"base image not pinned: {base}"
    assert any(line.startswith("COPY pyproject.toml") for line in lines)
    assert 'pip install ".[team]"' in dockerfile, "servers' and workers' extra not installed"
    assert "pip install --no-deps ." in dockerfile
    for name in ("prefect-server", "mlflow", *POOLS):
        assert compose["services"][name]["build"]["context"] == ".", name


def test_worker_pools_match_the_deployments(compose: dict[str, Any]):
    deployments = ROOT / "prefect.yaml"
    if not deployments.exists():
        pytest.skip("prefect.yaml not written yet")
    spec = yaml.safe_load(deployments.read_text())
    pools = {d["work_pool"]["name"] for d in spec["deployments"] if d.get("work_pool")}
    assert pools <= set(POOLS.values()), f"no worker polls {pools - set(POOLS.values())}"
    assert all(d["entrypoint"].startswith("flows/") for d in spec["deployments"])
    # registered by the CPU worker before it polls: the same set-up as the team stack's
    steps = [s.strip() for s in command_of(compose["services"]["cpu-worker"]).split("&&")]
    assert steps[:2] == ["scripts/team-stack.sh setup", "prefect --no-prompt deploy --all"]
    assert steps[-1].startswith("exec prefect worker start")
    assert "setup)" in (ROOT / "scripts" / "team-stack.sh").read_text()
