"""Stage 5b (evaluate.control): the student's steps on labeled data only (control.pt).

Keyed on the student fields the control reads (`control_config`), so students that differ
only in lambda1, lambda2, the basis or mining share one cached control.
"""

from __future__ import annotations

from slade_core.config import PipelineConfig
from slade_core.training import launch_control, train_control
from slade_core.training.control import control_config
from tasks.stage import StageContext, stage_task
from tasks.train_student import student_inputs


def control_view(config: PipelineConfig) -> PipelineConfig:
    return config.model_copy(update={"student": control_config(config.student)})


@stage_task("train_control", ("model", "runtime", "student"), view=control_view)
def train_control_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Continue the teacher on labeled data for the student's steps; the pseudo labels only
    count them. Per-epoch metrics as for the teacher."""
    inputs = student_inputs(ctx, upstream)
    return ctx.train(
        train_control, launch_control, inputs, config.model, config.student, config.runtime
    )
