"""Stage 2: train the teacher on the labeled split (teacher.pt, history.json)."""

from __future__ import annotations

from slade_core.training import launch_teacher, needs_torchrun, train_teacher
from tasks.stage import StageContext, stage_task


@stage_task("train_teacher", ("model", "runtime", "teacher"))
def train_teacher_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Fit the teacher; per-epoch metrics go to MLflow and a Prefect progress bar."""
    train = launch_teacher if needs_torchrun(config.runtime) else train_teacher
    result = train(
        ctx.input(upstream["data"], "index.parquet"),
        config.model,
        config.teacher,
        config.runtime,
        ctx.work_dir,
        on_epoch=ctx.epoch_logger("teacher training"),
    )
    ctx.outputs["checkpoint"] = result.checkpoint_path.name
    return {f"final_{k}": v for k, v in (result.history[-1] if result.history else {}).items()}
