"""The stage runner every stage task shares: cache key, stage directory, MLflow child run.

A stage is identified by a key = hash(stage name, the config fields it reads, the keys of
the stages it reads from, the code version, where results are stored). The key is

- the Prefect cache key (results persisted), so a retried flow run or a new run with the
  same inputs gets the finished stage back as `Cached` without running it;
- the stage directory `${SLADE_RUNS_DIR}/<stage>/<key>/`, filled under `<key>.partial/`
  while holding `<key>.lock` and renamed when complete (see tasks.stage_dir);
- a tag on the stage's MLflow child run, whose artifacts the next stage reads.

Task results are small dicts (stage, key, MLflow run id, directory), never data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.context import TaskRunContext, get_run_context
from prefect.exceptions import TerminationSignal

from slade_core.config import (
    ModelConfig,
    PipelineConfig,
    RuntimeConfig,
    StudentConfig,
    TeacherConfig,
)
from slade_core.io import stable_hash, write_json
from slade_core.training import TrainResult, needs_torchrun
from tasks.artifacts import epoch_progress, link_run
from tasks.faults import maybe_hang, maybe_inject_fault
from tasks.inputs import stage_input
from tasks.locations import runs_root, tracking_uri
from tasks.provenance import code_version
from tasks.stage_dir import compute_once, lock_file
from tasks.tracking import flatten, log_metrics, log_params, mlflow_client, run_url

SUMMARY_FILE = "stage.json"
NOT_LOGGED = ("resume",)  # training resume state: large, only useful before completion

StageResult = dict[str, Any]
InputsDigest = Callable[[PipelineConfig], str]
# the config as a stage sees it: fields it never reads reset, so they leave its key alone
ConfigView = Callable[[PipelineConfig], PipelineConfig]


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
        advance = epoch_progress(self.stage, self.label, description)

        def on_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
            log_metrics(self.client, self.run_id, metrics, step=epoch)
            advance(epoch, total, metrics)
            maybe_hang(self.stage)

        return on_epoch

    def train(
        self,
        here: Callable[..., TrainResult],
        launched: Callable[..., TrainResult],
        inputs: list[Path],
        model: ModelConfig,
        stage_config: TeacherConfig | StudentConfig,
        runtime: RuntimeConfig,
    ) -> dict[str, float]:
        """Run a training stage: `here` in this process, or `launched` under torchrun when
        the runtime asks for more processes. Records the checkpoint as the stage's output and
        returns the last epoch's metrics as final_* (the stage run's summary metrics)."""
        train = launched if needs_torchrun(runtime) else here
        result = train(
            *inputs,
            model,
            stage_config,
            runtime,
            self.work_dir,
            on_epoch=self.epoch_logger(self.stage.replace("_", " ")),
        )
        self.outputs["checkpoint"] = result.checkpoint_path.name
        last = result.history[-1] if result.history else {}
        return {f"final_{k}": v for k, v in last.items()}


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
            link_run(url, stage, label)
        compute_started = time.perf_counter()

        def compute(work: Path) -> None:
            maybe_inject_fault(stage)
            ctx = StageContext(stage, label, key, work, run_id, client)
            summary = dict(body(ctx, config, upstream) or {})
            write_json(
                work / SUMMARY_FILE,
                {"stage": stage, "key": key, "summary": summary, "outputs": ctx.outputs},
            )

        def on_wait() -> None:
            get_run_logger().info(
                "%s: another run is computing this stage (%s); waiting for its result",
                label,
                lock_file(final),
            )

        compute_once(final, compute, on_wait)
        compute_seconds = time.perf_counter() - compute_started
        record = json.loads((final / SUMMARY_FILE).read_text())
        log_metrics(client, run_id, record["summary"] | {"compute_seconds": compute_seconds})
        for path in sorted(final.iterdir()):
            if path.is_file() and not path.name.startswith(NOT_LOGGED):
                client.log_artifact(run_id, str(path))
            elif path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=path.name)
    except BaseException as exc:  # SIGTERM (cancelled, machine stopped) -> KILLED
        client.set_terminated(run_id, "KILLED" if isinstance(exc, TerminationSignal) else "FAILED")
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
    fields: tuple[str, ...], inputs: InputsDigest | None, view: ConfigView | None
) -> Callable[[TaskRunContext, dict[str, Any]], str]:
    def key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
        stage = context.task.name
        config, upstream = parameters["config"], parameters["upstream"]
        config = view(config) if view else config
        return f"{stage}-{stage_key(stage, config, fields, upstream, inputs)}"

    return key


def stage_task(
    stage: str,
    fields: tuple[str, ...],
    inputs: InputsDigest | None = None,
    view: ConfigView | None = None,
    **task_options: Any,
):
    """Turn `body(ctx, config, upstream) -> summary metrics` into a cached Prefect task.

    The task's parameters are (config, upstream results by name, parent MLflow run id,
    label); its result is the small StageResult dict. `view` narrows the config before the
    key, the logged params and the body see it (a stage that reads part of a section).
    """

    def decorate(body: Callable[..., Mapping[str, Any] | None]):
        def run(
            config: PipelineConfig,
            upstream: dict[str, StageResult],
            parent_run_id: str,
            label: str,
        ) -> StageResult:
            config = view(config) if view else config
            return _run_stage(stage, fields, body, config, upstream, parent_run_id, label, inputs)

        run.__name__, run.__qualname__, run.__doc__ = stage, stage, body.__doc__
        # for tests of the key's coverage
        run.stage_fields, run.stage_body, run.stage_view = fields, body, view
        return task(
            name=stage,
            task_run_name="{label}",
            cache_key_fn=_cache_key(fields, inputs, view),
            persist_result=True,
            **task_options,
        )(run)

    return decorate
