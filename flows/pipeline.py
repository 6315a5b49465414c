"""The `slade` flow: prepare_data -> train_teacher -> [extract_embeddings -> cluster ->
train_student] x rounds -> evaluate -> publish -> register_model.

Declarative only: which stage follows which, which results each reads, where it runs.
The config is validated before anything else, so bad parameters fail with the field
named and no stage (and no MLflow run) started. With `training_pool` set, the training
stages run as flow runs of the `slade-stage/<pool>` deployment (e.g. a GPU work pool);
otherwise every stage runs in this process.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run

from slade_core.config import PipelineConfig
from slade_core.evaluate import percent
from slade_core.experiment import load_experiment
from tasks.cluster import cluster_task
from tasks.common import (
    StageResult,
    adopt_cached,
    finish_run,
    git_commit,
    log_metrics,
    mlflow_client,
    start_parent_run,
)
from tasks.evaluate import evaluate_task
from tasks.extract_embeddings import extract_embeddings_task
from tasks.prepare_data import prepare_data_task
from tasks.publish import publish_task, register_task
from tasks.train_student import train_student_task
from tasks.train_teacher import train_teacher_task

# slade_core logs through the standard library; with PREFECT_LOGGING_EXTRA_LOGGERS=slade_core
# (scripts/env.sh, prefect.yaml) its records reach the run logs, INFO included.
logging.getLogger("slade_core").setLevel(logging.INFO)

STAGE_FLOW = "slade-stage"
STAGES = {
    "prepare_data": prepare_data_task,
    "train_teacher": train_teacher_task,
    "extract_embeddings": extract_embeddings_task,
    "cluster": cluster_task,
    "train_student": train_student_task,
    "evaluate": evaluate_task,
    "publish": publish_task,
}
TRAINING_STAGES = ("train_teacher", "train_student")


def _check_pool(training_pool: str | None) -> None:
    """Fail before any stage when the routing target is not deployed."""
    if training_pool is None:
        return
    name = f"{STAGE_FLOW}/{training_pool}"
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise ValueError(
                f"training_pool={training_pool!r}: no deployment {name!r}; deploy prefect.yaml "
                f"(`make deploy`) or leave training_pool empty to train in this process"
            ) from None


class _Stages:
    """Runs stages for one pipeline run: in process, or routed to the training pool."""

    def __init__(self, config: PipelineConfig, parent_run_id: str, training_pool: str | None):
        self.config, self.parent, self.pool = config, parent_run_id, training_pool

    def __call__(self, stage: str, upstream: dict[str, StageResult], label: str) -> StageResult:
        if self.pool and stage in TRAINING_STAGES:
            child = run_deployment(
                f"{STAGE_FLOW}/{self.pool}",
                parameters={
                    "stage": stage,
                    "config": self.config.model_dump(mode="json"),
                    "upstream": upstream,
                    "parent_run_id": self.parent,
                    "label": label,
                },
                flow_run_name=label,
            )
            if not child.state or not child.state.is_completed():
                state = child.state.name if child.state else "unknown"
                raise RuntimeError(
                    f"{label} on work pool {self.pool!r} ended {state}: "
                    f"{child.state.message if child.state else ''} (flow run {child.id})"
                )
            result = child.state.result()
        else:
            result = STAGES[stage](self.config, upstream, self.parent, label)
        adopt_cached(result, self.parent, label)
        return result


@flow(name="slade", log_prints=True)
def slade(
    preset: str = "quickstart",
    overrides: dict[str, Any] | None = None,
    training_pool: str | None = None,
) -> dict[str, Any]:
    """Run the SLADE pipeline on a preset (`data_manifests/presets/<preset>.yaml`).

    overrides: any config field, nested or dotted ({"teacher.optim.epochs": 3}).
    training_pool: run the training stages on this work pool (deployment
    `slade-stage/<pool>`); None trains in this process.
    """
    config = load_experiment(preset, overrides)
    _check_pool(training_pool)
    parent = start_parent_run(config, str(flow_run.get_id()), git_commit())
    ok = False
    try:
        stage = _Stages(config, parent, training_pool)
        data = stage("prepare_data", {}, "prepare_data")
        teacher = current = stage("train_teacher", {"data": data}, "train_teacher")
        models = {"teacher": teacher}
        for r in range(1, config.rounds + 1):
            suffix = "" if config.rounds == 1 else f"-round{r}"
            emb = stage(
                "extract_embeddings",
                {"data": data, "teacher": current},
                f"extract_embeddings{suffix}",
            )
            labels = stage("cluster", {"embeddings": emb}, f"cluster{suffix}")
            current = stage(
                "train_student",
                {"data": data, "teacher": current, "pseudo_labels": labels},
                f"train_student{suffix}",
            )
            models["student" if r == config.rounds else f"student_round{r}"] = current
        evaluation = stage("evaluate", {"data": data, **models}, "evaluate")
        metrics = evaluation["summary"]
        log_metrics(mlflow_client(), parent, metrics)
        published = stage(
            "publish",
            {"data": data, "teacher": teacher, "student": current, "evaluate": evaluation},
            "publish",
        )
        registered = register_task(
            config, {"data": data, "publish": published, "evaluate": evaluation}, parent
        )
        ok = True
    finally:
        finish_run(parent, ok)
    logger = get_run_logger()
    logger.info("metrics (percent): %s", {k: percent(v) for k, v in metrics.items()})
    logger.info(
        "registered %s version %s as %s; search it with: slade search IMAGE --model models:/%s@%s",
        registered["name"],
        registered["version"],
        registered["alias"],
        registered["name"],
        registered["alias"],
    )
    return {
        "mlflow_run_id": parent,
        "metrics": metrics,
        "evaluate_dir": evaluation["dir"],
        "model": published["student_model"],
        "registered": registered,
    }


@flow(name=STAGE_FLOW, persist_result=True)
def slade_stage(
    stage: str,
    config: dict[str, Any],
    upstream: dict[str, StageResult],
    parent_run_id: str,
    label: str,
) -> StageResult:
    """One stage as its own flow run, so a work pool (e.g. GPU) can pick it up."""
    return STAGES[stage](PipelineConfig.model_validate(config), upstream, parent_run_id, label)
