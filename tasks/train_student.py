"""Stage 5: train the student on labeled + pseudo-labeled data (student.pt, history.json)."""

from __future__ import annotations

from slade_core.training import launch_student, needs_torchrun, train_student
from tasks.stage import StageContext, stage_task


@stage_task("train_student", ("model", "runtime", "student"))
def train_student_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Fit the student from the teacher's pseudo labels; per-epoch metrics as for the teacher."""
    teacher = upstream["teacher"]
    train = launch_student if needs_torchrun(config.runtime) else train_student
    result = train(
        ctx.input(upstream["data"], "index.parquet"),
        ctx.input(upstream["pseudo_labels"], "pseudo_labels.parquet"),
        ctx.input(teacher, teacher["checkpoint"]),
        config.model,
        config.student,
        config.runtime,
        ctx.work_dir,
        on_epoch=ctx.epoch_logger("student training"),
    )
    ctx.outputs["checkpoint"] = result.checkpoint_path.name
    return {f"final_{k}": v for k, v in (result.history[-1] if result.history else {}).items()}
