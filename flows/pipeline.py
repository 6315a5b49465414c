"""The `slade` flow: prepare_data -> train_teacher -> [extract_embeddings -> cluster ->
train_student (and train_control with evaluate.control)] x rounds -> evaluate -> publish ->
register_model.

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
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run

from flows.hooks import HOOKS
from flows.pools import STAGE_FLOW, check_deployed, run_on_pool
from slade_core.config import PipelineConfig
from slade_core.evaluate import percent
from slade_core.experiment import load_experiment
from slade_core.rounds import self_training
from tasks.cluster import cluster_task
from tasks.evaluate import evaluate_task
from tasks.extract_embeddings import extract_embeddings_task
from tasks.prepare_data import check_data, prepare_data_task
from tasks.provenance import git_commit
from tasks.publish import publish_task, register_task
from tasks.stage import StageResult
from tasks.tracking import adopt_cached, finish_run, log_metrics, mlflow_client, start_parent_run
from tasks.train_control import train_control_task
from tasks.train_student import train_student_task
from tasks.train_teacher import train_teacher_task

# slade_core logs through the standard library; with PREFECT_LOGGING_EXTRA_LOGGERS=slade_core
# (scripts/env.sh, prefect.yaml) its records reach the run logs, INFO included.
logging.getLogger("slade_core").setLevel(logging.INFO)

POOL_TIMEOUT = 60.0
STAGES = {
    "prepare_data": prepare_data_task,
    "train_teacher": train_teacher_task,
    "extract_embeddings": extract_embeddings_task,
    "cluster": cluster_task,
    "train_student": train_student_task,
    "train_control": train_control_task,
    "evaluate": evaluate_task,
    "publish": publish_task,
}
TRAINING_STAGES = ("train_teacher", "train_student", "train_control")


class _Stages:
    """Runs stages for one pipeline run: in process, or routed to the training pool."""

    def __init__(
        self,
        config: PipelineConfig,
        parent_run_id: str,
        training_pool: str | None,
        pool_timeout: float | None,
    ):
        self.config, self.parent = config, parent_run_id
        self.pool, self.pool_timeout = training_pool, pool_timeout

    def __call__(self, stage: str, upstream: dict[str, StageResult], label: str) -> StageResult:
        if self.pool and stage in TRAINING_STAGES:
            child = run_on_pool(
                self.pool,
                {
                    "stage": stage,
                    "config": self.config.model_dump(mode="json"),
                    "upstream": upstream,
                    "parent_run_id": self.parent,
                    "label": label,
                },
                label,
                self.pool_timeout,
            )
            if not child.state.is_completed():
                raise RuntimeError(
                    f"{label} on work pool {self.pool!r} ended {child.state.name}: "
                    f"{child.state.message or ''} (flow run {child.id})"
                )
            result = child.state.result()
        else:
            result = STAGES[stage](self.config, upstream, self.parent, label)
        adopt_cached(result["run_id"], self.parent, label)
        return result


@flow(name="slade", log_prints=True, **HOOKS)
def slade(
    preset: str = "quickstart",
    overrides: dict[str, Any] | None = None,
    training_pool: str | None = None,
    pool_timeout: float | None = POOL_TIMEOUT,
    run_tags: dict[str, str] | None = None,
    publish: bool = True,
) -> dict[str, Any]:
    """Run the SLADE pipeline on a preset (`data_manifests/presets/<preset>.yaml`).

    overrides: any config field, nested or dotted ({"teacher.optim.epochs": 3}).
    training_pool: run the training stages on this work pool (deployment
    `slade-stage/<pool>`); None trains in this process.
    pool_timeout: seconds a training stage may wait without any worker of the pool online
    before it fails (naming the pool and the command that starts a worker); None waits.
    run_tags: extra tags of this run's MLflow run (slade/sweep makes its trials children of
    the sweep's run with {"mlflow.parentRunId": ...}).
    publish: False ends the run at evaluate, nothing published or registered (a sweep's
    trials, measured on validation classes).
    """
    config = load_experiment(preset, overrides)
    if training_pool is not None:
        check_deployed(training_pool)
    parent = start_parent_run(config, str(flow_run.get_id()), git_commit(), run_tags)
    status = "FAILED"
    try:
        stage = _Stages(config, parent, training_pool, pool_timeout)
        data = stage("prepare_data", {}, "prepare_data")
        check_data(config, data)  # this run's sampler / unlabeled needs, cached index too
        teacher = control = stage("train_teacher", {"data": data}, "train_teacher")

        def suffix(r: int) -> str:
            return "" if config.rounds == 1 else f"-round{r}"

        def pseudo_labels(model: StageResult, r: int) -> StageResult:
            emb = stage(
                "extract_embeddings",
                {"data": data, "teacher": model},
                f"extract_embeddings{suffix(r)}",
            )
            return stage("cluster", {"embeddings": emb}, f"cluster{suffix(r)}")

        def student(model: StageResult, labels: StageResult, r: int) -> StageResult:
            nonlocal control
            trained = stage(
                "train_student",
                {"data": data, "teacher": model, "pseudo_labels": labels},
                f"train_student{suffix(r)}",
            )
            if config.evaluate.control:  # round r's steps, from the previous round's control
                control = stage(
                    "train_control",
                    {"data": data, "teacher": control, "pseudo_labels": labels},
                    f"train_control{suffix(r)}",
                )
            return trained

        rounds = self_training(teacher, config.rounds, pseudo_labels, student)
        current = rounds[-1][1]
        models = {"teacher": teacher}
        if config.evaluate.control:  # reported beside the teacher and the student
            models["control"] = control
        models |= {f"student_round{r}": model for r, (_, model) in enumerate(rounds[:-1], 1)}
        models["student"] = current
        evaluation = stage("evaluate", {"data": data, **models}, "evaluate")
        metrics = evaluation["summary"]
        log_metrics(mlflow_client(), parent, metrics)
        published = registered = None
        if publish:
            published = stage(
                "publish",
                {"data": data, "teacher": teacher, "student": current, "evaluate": evaluation},
                "publish",
            )
            registered = register_task(
                config, {"data": data, "publish": published, "evaluate": evaluation}, parent
            )
        status = "FINISHED"
    except TerminationSignal:  # SIGTERM: the run was cancelled or its machine stopped
        status = "KILLED"
        raise
    finally:
        finish_run(parent, status)
    logger = get_run_logger()
    logger.info("metrics (percent): %s", {k: percent(v) for k, v in metrics.items()})
    if registered:
        logger.info(
            "registered %s version %s as %s; search it with: "
            "slade search IMAGE --model models:/%s@%s",
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
        "model": published["student_model"] if published else None,
        "registered": registered,
    }


@flow(name=STAGE_FLOW, persist_result=True, **HOOKS)
def slade_stage(
    stage: str,
    config: dict[str, Any],
    upstream: dict[str, StageResult],
    parent_run_id: str,
    label: str,
) -> StageResult:
    """One stage as its own flow run, so a work pool (e.g. GPU) can pick it up."""
    return STAGES[stage](PipelineConfig.model_validate(config), upstream, parent_run_id, label)
