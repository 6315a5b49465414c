"""The control: the teacher continued on labeled data only, for exactly the student's steps.

The student trains longer than the teacher, so "student - teacher" mixes extra training with
what the unlabeled images taught; "student - control" is the unlabeled images' share alone.
The control starts from the student's starting weights, takes the student's epochs, steps
per epoch (from the same labeled and pseudo-labeled row counts), labeled batches (the same
sampler stream), learning rates and schedule, and minimises the student's labeled term
L_rank(D_l) on them. It never embeds the pseudo-labeled half: the pseudo labels only tell it
how many steps the student took, so its network (batch-norm statistics included) learns from
labeled images alone.
"""

from __future__ import annotations

import os

import numpy as np

from slade_core.config import ModelConfig, RuntimeConfig, StudentConfig
from slade_core.training.data import read_split
from slade_core.training.loop import EpochCallback, TrainResult
from slade_core.training.run import TrainingRun, ranking_objective
from slade_core.training.student import (
    input_digests,
    labeled_sampler,
    read_pseudo_labeled,
    starting_weights,
    student_epoch_length,
)

# the student fields the control reads; the others do not change it (control_config)
READS = (
    "loss",
    "optim",
    "labeled_batch_size",
    "unlabeled_batch_size",
    "m_per_class",
    "init_from_teacher",
)


def control_config(student: StudentConfig) -> StudentConfig:
    """The student config as the control sees it: the fields it reads, and the rest of the
    student's recipe switched off (no unlabeled term, basis or mining). Two students that
    differ only in what the control ignores (lambda1, lambda2, basis, mining) share one
    control, and so one cached stage."""
    switched_off = StudentConfig(lambda1=0.0, lambda2=0.0, use_basis=False, use_mining=False)
    return switched_off.model_copy(update={name: getattr(student, name) for name in READS})


def train_control(
    index_path: str | os.PathLike,
    pseudo_labels_path: str | os.PathLike,
    teacher_checkpoint: str | os.PathLike,
    model: ModelConfig,
    student: StudentConfig,
    runtime: RuntimeConfig,
    out_dir: str | os.PathLike,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train the control of the student that `student` configures (the arguments of
    `train_student`); write out_dir/control.pt and history.json.

    The pseudo labels are read only to count the student's steps per epoch. Resumes from
    out_dir/resume.pt when it was written for the same configuration and inputs.
    """
    student = control_config(student)
    labeled = read_split(index_path, "train")
    pseudo_rows = len(read_pseudo_labeled(index_path, pseudo_labels_path))
    labels = labeled["label"].to_numpy(np.int64)
    start = starting_weights(model, student, teacher_checkpoint)
    digests = input_digests(index_path, pseudo_labels_path, teacher_checkpoint, start)
    run = TrainingRun("control", model, student, runtime, out_dir, digests, start=start)
    iterations = student_epoch_length(student, len(labeled), pseudo_rows)
    sampler = labeled_sampler(labels, student, runtime.seed, iterations)
    objective = ranking_objective(student.loss, labels, run.device)
    history = run.epochs([labeled], sampler, student.labeled_batch_size, objective, on_epoch)
    return run.finish(history, pseudo_labeled_rows=pseudo_rows)
