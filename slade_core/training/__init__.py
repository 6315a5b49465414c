"""Training stages: the teacher (labeled data), the SLADE student (plus pseudo labels) and
its control (the student's steps on labeled data only).

`train_*` run in this process; `launch_*` run the same under torchrun in
`runtime.processes` processes (DDP).
"""

from slade_core.training.control import train_control
from slade_core.training.launch import (
    launch_control,
    launch_student,
    launch_teacher,
    needs_torchrun,
)
from slade_core.training.loop import TrainResult
from slade_core.training.student import train_student
from slade_core.training.teacher import train_teacher

__all__ = [
    "TrainResult",
    "launch_control",
    "launch_student",
    "launch_teacher",
    "needs_torchrun",
    "train_control",
    "train_student",
    "train_teacher",
]
