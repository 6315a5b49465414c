"""Stage 5: train the student on labeled + pseudo-labeled data (student.pt, history.json)."""

from __future__ import annotations

from pathlib import Path

from slade_core.training import launch_student, train_student
from tasks.stage import StageContext, stage_task


def student_inputs(ctx: StageContext, upstream) -> list[Path]:
    """What the student (and its control) train from: the index, the pseudo labels and the
    teacher checkpoint, in train_student's argument order."""
    teacher = upstream["teacher"]
    return [
        ctx.input(upstream["data"], "index.parquet"),
        ctx.input(upstream["pseudo_labels"], "pseudo_labels.parquet"),
        ctx.input(teacher, teacher["checkpoint"]),
    ]


@stage_task("train_student", ("model", "runtime", "student"))
def train_student_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Fit the student from the teacher's pseudo labels; per-epoch metrics as for the teacher."""
    inputs = student_inputs(ctx, upstream)
    return ctx.train(
        train_student, launch_student, inputs, config.model, config.student, config.runtime
    )
