"""Stage 2: train the teacher on the labeled split (teacher.pt, history.json)."""

from __future__ import annotations

from slade_core.training import launch_teacher, train_teacher
from tasks.stage import StageContext, stage_task


@stage_task("train_teacher", ("model", "runtime", "teacher"))
def train_teacher_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Fit the teacher; per-epoch metrics go to MLflow and a Prefect progress bar."""
    index = ctx.input(upstream["data"], "index.parquet")
    return ctx.train(
        train_teacher, launch_teacher, [index], config.model, config.teacher, config.runtime
    )
