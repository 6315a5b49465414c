"""MLflow bookkeeping: the experiment, one parent run per pipeline run, params and metrics.

The parent run carries the Prefect flow run id as a tag (`prefect.flow_run_id`), so a
retried flow run (same id) finds and reuses it. Each stage adds a child run
(`mlflow.parentRunId`); a stage that came from the cache gets a child that copies the
original run's params and metric histories and points to it (`slade.source_run_id`).
Runs a crashed or cancelled flow run left RUNNING are ended by `end_flow_run` (called from
the flow state hooks) and, when the flow run is retried, by `start_parent_run`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from slade_core.config import PipelineConfig
from tasks.locations import tracking_uri
from tasks.provenance import code_version

EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
END_REASON_TAG = "slade.end_reason"
RETRIED = "the flow run was retried while this run was still marked running"


def mlflow_client() -> MlflowClient:
    """A client of this run's tracking server for runs and the Model Registry alike (the
    registry would otherwise follow mlflow's process-wide URI, which publish sets)."""
    uri = tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_name() -> str:
    return os.environ.get(EXPERIMENT_ENV, "slade")


def experiment_id(client: MlflowClient) -> str:
    """Get or create the experiment ($MLFLOW_EXPERIMENT_NAME, default `slade`)."""
    name = experiment_name()
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


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow params are flat."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): obj}


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


def start_parent_run(
    config: PipelineConfig,
    flow_run_id: str,
    git_commit: str,
    tags: Mapping[str, str] | None = None,
) -> str:
    """The pipeline's MLflow run; a retried flow run (same id) reuses its run.

    tags: added to the run's own (a sweep trial's parent run and sweep id)."""
    client = mlflow_client()
    exp = experiment_id(client)
    found = client.search_runs(
        [exp],
        filter_string=(
            f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`slade.kind` = 'pipeline'"
        ),
        max_results=1,
    )
    if found:  # a retry: what the last attempt left running ended with it
        parent = found[0].info.run_id
        _end_running(client, [exp], f"tags.`mlflow.parentRunId` = '{parent}'", "FAILED", RETRIED)
        client.update_run(parent, status="RUNNING")
        return parent
    run = client.create_run(
        exp,
        run_name=f"{config.preset}-{flow_run_id[:8]}",
        tags={
            "prefect.flow_run_id": flow_run_id,
            "slade.preset": config.preset,
            "slade.kind": "pipeline",
            "mlflow.source.git.commit": git_commit,
            "slade.code_version": code_version(),
            **(tags or {}),
        },
    )
    log_params(client, run.info.run_id, flatten(config.model_dump(mode="json")))
    return run.info.run_id


def finish_run(run_id: str, status: str) -> None:
    """End a run: FINISHED, FAILED or KILLED."""
    mlflow_client().set_terminated(run_id, status)


def end_flow_run(flow_run_id: str, status: str, reason: str) -> list[str]:
    """End the MLflow runs of a Prefect flow run that are still RUNNING; return their ids.

    Those are the runs tagged with the flow run id (the pipeline's parent run, the stage
    runs it ran in process, or the stage run of a `slade-stage` flow run) and the children
    of its parent run (stages run on a work pool). status: FAILED or KILLED; the reason
    becomes the tag `slade.end_reason`.
    """
    client = mlflow_client()
    experiment = client.get_experiment_by_name(experiment_name())
    if experiment is None:
        return []
    exps = [experiment.experiment_id]
    closed = []
    parents = client.search_runs(
        exps,
        filter_string=(
            f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`slade.kind` = 'pipeline'"
        ),
    )
    for parent in parents:
        parent_filter = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        closed += _end_running(client, exps, parent_filter, status, reason)
    closed += _end_running(
        client, exps, f"tags.`prefect.flow_run_id` = '{flow_run_id}'", status, reason
    )
    return closed


def _end_running(
    client: MlflowClient, exps: list[str], filter_string: str, status: str, reason: str
) -> list[str]:
    runs = client.search_runs(
        exps, filter_string=f"{filter_string} and attributes.status = 'RUNNING'"
    )
    for run in runs:
        client.set_tag(run.info.run_id, END_REASON_TAG, reason[:5000])
        client.set_terminated(run.info.run_id, status)
    return [run.info.run_id for run in runs]


def adopt_cached(source_run_id: str, parent_run_id: str, label: str) -> None:
    """Give this pipeline run a child for a stage whose result came from the cache.

    The child holds the original run's params and metric histories (per-epoch curves
    with their steps; `compute_seconds` is 0: nothing was computed) and points to it
    (tag `slade.source_run_id`) instead of copying its artifacts. Nothing is added when the
    original run already belongs to this parent (a retried flow run).
    """
    client = mlflow_client()
    source = client.get_run(source_run_id)
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
    params = [Param(k, v) for k, v in source.data.params.items()]
    for start in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[start : start + 100])
    metrics = [
        Metric(m.key, 0.0 if m.key == "compute_seconds" else m.value, m.timestamp, m.step)
        for key in source.data.metrics
        for m in client.get_metric_history(source.info.run_id, key)
    ]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000])
    client.set_terminated(run.info.run_id, "FINISHED")
