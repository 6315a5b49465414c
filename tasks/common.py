"""What every stage task shares: cache keys, stage directories, MLflow runs, Prefect artifacts.

A stage is identified by a key = hash(stage name, the config fields it reads, the keys of
the stages it reads from, the code version, where results are stored). The key is

- the Prefect cache key (results persisted), so a retried flow run or a new run with the
  same inputs gets the finished stage back as `Cached` without running it;
- the stage directory `${SLADE_RUNS_DIR}/<stage>/<key>/`, filled under `<key>.partial/` and
  renamed when complete (a stable partial name lets a killed training stage resume);
- a tag on the stage's MLflow child run, whose artifacts the next stage reads.

Task results are small dicts (stage, key, MLflow run id, directory), never data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import (
    create_link_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.context import TaskRunContext, get_run_context

import slade_core
from slade_core.config import PipelineConfig
from slade_core.io import stable_hash, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
FAULT_ENV = "SLADE_FAULT_ONCE"
SUMMARY_FILE = "stage.json"
NOT_LOGGED = ("resume",)  # training resume state: large, only useful before completion

StageResult = dict[str, Any]


class InjectedFault(RuntimeError):
    """Raised by the test-only fault hook (SLADE_FAULT_ONCE=<stage>)."""


# ----------------------------------------------------------------------------- locations


def runs_root() -> Path:
    """Root of all stage directories: $SLADE_RUNS_DIR or ./.slade/runs."""
    return Path(os.environ.get("SLADE_RUNS_DIR", ".slade/runs")).resolve()


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite store under ./.slade/mlflow."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = Path(".slade/mlflow/mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def mlflow_client() -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri())


@functools.cache
def code_version() -> str:
    """Hash of the library source and dataset manifests: results depend on both."""
    digest = hashlib.sha256(slade_core.__version__.encode())
    roots = [REPO_ROOT / "slade_core", REPO_ROOT / "data_manifests" / "datasets"]
    for path in sorted(p for root in roots for p in root.rglob("*") if p.is_file()):
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(REPO_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


InputsDigest = Callable[[PipelineConfig], str]


def stage_key(
    stage: str,
    config: PipelineConfig,
    fields: Iterable[str],
    upstream: Mapping[str, StageResult],
    inputs: InputsDigest | None = None,
) -> str:
    """Identity of a stage's output: what it reads, how it is configured, which code.

    `inputs` digests what a stage reads from outside the pipeline (prepare_data: the files of
    local image folders), so a changed image set gets a new key.
    """
    return stable_hash(
        {
            "stage": stage,
            "config": config.model_dump(mode="json", include=set(fields)),
            "inputs": inputs(config) if inputs else None,
            "upstream": {name: result["key"] for name, result in sorted(upstream.items())},
            "code": code_version(),
            "store": [str(runs_root()), tracking_uri()],
        }
    )


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow params are flat."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): obj}


# ----------------------------------------------------------------------------- MLflow


def experiment_id(client: MlflowClient) -> str:
    """Get or create the experiment ($MLFLOW_EXPERIMENT_NAME, default `slade`)."""
    name = os.environ.get(EXPERIMENT_ENV, "slade")
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if not urlparse(tracking_uri()).scheme.startswith("http"):
        location = (Path(".slade/mlflow/artifacts").resolve()).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        return client.get_experiment_by_name(name).experiment_id


def run_url(client: MlflowClient, run_id: str) -> str | None:
    """Address of a run in the MLflow UI (only when tracking through a server)."""
    base = os.environ.get("MLFLOW_UI_URL") or tracking_uri()
    if not base.startswith("http"):
        return None
    exp = client.get_run(run_id).info.experiment_id
    return f"{base.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [
        Param(k, json.dumps(v) if isinstance(v, list | tuple) else str(v))
        for k, v in params.items()
    ]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def log_metrics(
    client: MlflowClient, run_id: str, metrics: Mapping[str, Any], step: int = 0
) -> None:
    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    if items:
        client.log_batch(run_id, metrics=items)


def local_artifact_dir(client: MlflowClient, run_id: str) -> Path | None:
    """The run's artifact directory when the artifact store is this filesystem."""
    uri = client.get_run(run_id).info.artifact_uri
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def stage_input(result: StageResult, name: str) -> Path:
    """A file of an earlier stage, read from the artifacts of that stage's MLflow run.

    Local artifact stores are read in place; remote ones (an MLflow server proxying
    artifacts, e.g. for a GPU worker on another machine) are downloaded once into
    `${SLADE_RUNS_DIR}/_inputs/<run id>/`.
    """
    import mlflow.artifacts

    client = mlflow_client()
    run_id = result["run_id"]
    local = local_artifact_dir(client, run_id)
    if local is not None:
        path = local / name
    else:
        cache = runs_root() / "_inputs" / run_id
        path = cache / name
        if not path.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                got = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=name, dst_path=tmp, tracking_uri=tracking_uri()
                )
                os.replace(got, path)
    if not path.exists():
        raise FileNotFoundError(
            f"stage {result['stage']!r} (MLflow run {run_id}) has no artifact {name!r}; "
            f"its artifacts may have been deleted: rerun with a fresh SLADE_RUNS_DIR"
        )
    return path


def start_parent_run(config: PipelineConfig, flow_run_id: str, git_commit: str) -> str:
    """The pipeline's MLflow run; a retried flow run (same id) reuses its run."""
    client = mlflow_client()
    exp = experiment_id(client)
    found = client.search_runs(
        [exp],
        filter_string=(
            f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`slade.kind` = 'pipeline'"
        ),
        max_results=1,
    )
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    run = client.create_run(
        exp,
        run_name=f"{config.preset}-{flow_run_id[:8]}",
        tags={
            "prefect.flow_run_id": flow_run_id,
            "slade.preset": config.preset,
            "slade.kind": "pipeline",
            "mlflow.source.git.commit": git_commit,
            "slade.code_version": code_version(),
        },
    )
    log_params(client, run.info.run_id, flatten(config.model_dump(mode="json")))
    return run.info.run_id


def finish_run(run_id: str, ok: bool) -> None:
    mlflow_client().set_terminated(run_id, "FINISHED" if ok else "FAILED")


def adopt_cached(result: StageResult, parent_run_id: str, label: str) -> None:
    """Give this pipeline run a child for a stage whose result came from the cache.

    The child holds the original run's params and final metrics and points to it
    (tag `slade.source_run_id`) instead of copying its artifacts. Nothing is added when the
    original run already belongs to this parent (a retried flow run).
    """
    client = mlflow_client()
    source = client.get_run(result["run_id"])
    if source.data.tags.get("mlflow.parentRunId") == parent_run_id:
        return
    exp = source.info.experiment_id
    existing = client.search_runs(
        [exp],
        filter_string=(
            f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`slade.label` = '{label}'"
        ),
        max_results=1,
    )
    if existing:
        return
    tags = {k: v for k, v in source.data.tags.items() if k.startswith("slade.")}
    tags |= {
        "mlflow.parentRunId": parent_run_id,
        "slade.label": label,
        "slade.cached": "true",
        "slade.source_run_id": source.info.run_id,
    }
    run = client.create_run(exp, run_name=f"{label} (cached)", tags=tags)
    client.log_batch(
        run.info.run_id,
        params=[Param(k, v) for k, v in source.data.params.items()],
        metrics=[
            Metric(k, 0.0 if k == "compute_seconds" else v, 0, 0)
            for k, v in source.data.metrics.items()
        ],
    )
    client.set_terminated(run.info.run_id, "FINISHED")


# ----------------------------------------------------------------------------- stage runner


@dataclass
class StageContext:
    """Handed to a stage body: where to write, how to read inputs, how to report progress."""

    stage: str
    label: str
    key: str
    work_dir: Path
    run_id: str
    client: MlflowClient
    outputs: dict[str, str] = field(default_factory=dict)  # e.g. {"checkpoint": "teacher.pt"}

    input = staticmethod(stage_input)

    def epoch_logger(self, description: str) -> Callable[[int, int, dict[str, float]], None]:
        """on_epoch callback: MLflow metrics (step=epoch) + a Prefect progress artifact."""
        progress_id = create_progress_artifact(0.0, description=f"{self.label}: {description}")
        history: list[dict[str, Any]] = []

        def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
            log_metrics(self.client, self.run_id, metrics, step=epoch)
            history.append({"epoch": epoch, **metrics})
            update_progress_artifact(
                progress_id,
                100.0 * epoch / total,
                description=f"{self.label}: epoch {epoch}/{total}",
            )
            if epoch == total:
                create_table_artifact(
                    history,
                    key=f"{artifact_key(self.stage)}-history",
                    description=f"{self.label}: per-epoch training metrics",
                )

        return on_epoch


def artifact_key(stage: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes."""
    return "slade-" + stage.replace("_", "-").lower()


def maybe_inject_fault(stage: str) -> None:
    """Test-only: SLADE_FAULT_ONCE=<stage> fails that stage once per runs directory."""
    if os.environ.get(FAULT_ENV) != stage:
        return
    marker = runs_root() / f".fault-{stage}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    raise InjectedFault(f"{FAULT_ENV}={stage}: injected failure (happens once)")


def _run_stage(
    stage: str,
    fields: tuple[str, ...],
    body: Callable[..., Mapping[str, Any] | None],
    config: PipelineConfig,
    upstream: dict[str, StageResult],
    parent_run_id: str,
    label: str,
    inputs: InputsDigest | None,
) -> StageResult:
    key = stage_key(stage, config, fields, upstream, inputs)
    final = runs_root() / stage / key
    client = mlflow_client()
    parent = client.get_run(parent_run_id)
    ctx_run = get_run_context()
    run = client.create_run(
        parent.info.experiment_id,
        run_name=label,
        tags={
            "mlflow.parentRunId": parent_run_id,
            "slade.stage": stage,
            "slade.label": label,
            "slade.stage_key": key,
            "slade.preset": config.preset,
            "prefect.flow_run_id": str(ctx_run.task_run.flow_run_id),
            "prefect.task_run_id": str(ctx_run.task_run.id),
        },
    )
    run_id = run.info.run_id
    try:
        params = flatten(config.model_dump(mode="json", include=set(fields)))
        params |= {f"upstream.{n}": r["run_id"] for n, r in upstream.items()}
        log_params(client, run_id, params | {"code_version": code_version()})
        url = run_url(client, run_id)
        if url:
            create_link_artifact(
                url, link_text=f"MLflow run: {label}", key=f"{artifact_key(stage)}-mlflow"
            )
        compute_started = time.perf_counter()
        if not (final / SUMMARY_FILE).exists():
            maybe_inject_fault(stage)
            work = final.with_name(final.name + ".partial")
            work.mkdir(parents=True, exist_ok=True)
            ctx = StageContext(stage, label, key, work, run_id, client)
            summary = dict(body(ctx, config, upstream) or {})
            write_json(
                work / SUMMARY_FILE,
                {"stage": stage, "key": key, "summary": summary, "outputs": ctx.outputs},
            )
            if final.exists():  # finished concurrently by another run: keep theirs
                shutil.rmtree(work, ignore_errors=True)
            else:
                os.replace(work, final)
        compute_seconds = time.perf_counter() - compute_started
        record = json.loads((final / SUMMARY_FILE).read_text())
        log_metrics(client, run_id, record["summary"] | {"compute_seconds": compute_seconds})
        for path in sorted(final.iterdir()):
            if path.is_file() and not path.name.startswith(NOT_LOGGED):
                client.log_artifact(run_id, str(path))
            elif path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=path.name)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return {
        "stage": stage,
        "label": label,
        "key": key,
        "run_id": run_id,
        "dir": str(final),
        "summary": record["summary"],
        **record["outputs"],
    }


def _cache_key(
    fields: tuple[str, ...], inputs: InputsDigest | None
) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        stage = context.task.name
        config, upstream = parameters["config"], parameters["upstream"]
        return f"{stage}-{stage_key(stage, config, fields, upstream, inputs)}"

    return key


def stage_task(
    stage: str, fields: tuple[str, ...], inputs: InputsDigest | None = None, **task_options: Any
):
    """Turn `body(ctx, config, upstream) -> summary metrics` into a cached Prefect task.

    The task's parameters are (config, upstream results by name, parent MLflow run id,
    label); its result is the small StageResult dict.
    """

    def decorate(body: Callable[..., Mapping[str, Any] | None]):
        def run(
            config: PipelineConfig,
            upstream: dict[str, StageResult],
            parent_run_id: str,
            label: str,
        ) -> StageResult:
            return _run_stage(stage, fields, body, config, upstream, parent_run_id, label, inputs)

        run.__name__, run.__qualname__, run.__doc__ = stage, stage, body.__doc__
        return task(
            name=stage,
            task_run_name="{label}",
            cache_key_fn=_cache_key(fields, inputs),
            persist_result=True,
            **task_options,
        )(run)

    return decorate


def git_commit() -> str:
    """HEAD of the repository the code runs from (`unknown` outside a git checkout)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()
