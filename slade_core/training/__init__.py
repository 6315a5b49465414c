"""Training stages: the teacher (labeled data) and the SLADE student (plus pseudo labels)."""

from slade_core.training.loop import TrainResult
from slade_core.training.student import train_student
from slade_core.training.teacher import train_teacher

__all__ = ["TrainResult", "train_student", "train_teacher"]
