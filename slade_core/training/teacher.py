"""Teacher: the embedding network fine-tuned on labeled data with a ranking loss.

Batches hold `batch_size // m_per_class` classes x m images of split=="train" (the
reality-check protocol's 8 x 4), so every batch has positive pairs for L_rank. Under
torchrun each rank embeds a slice of every batch and the loss sees the gathered whole.
"""

from __future__ import annotations

import os

import numpy as np

from slade_core.config import ModelConfig, RuntimeConfig, TeacherConfig
from slade_core.io import file_digest
from slade_core.samplers import MPerClassBatchSampler
from slade_core.training.data import read_split
from slade_core.training.loop import EpochCallback, TrainResult
from slade_core.training.run import TrainingRun, ranking_objective


def train_teacher(
    index_path: str | os.PathLike,
    model: ModelConfig,
    teacher: TeacherConfig,
    runtime: RuntimeConfig,
    out_dir: str | os.PathLike,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train on split=="train" rows; write out_dir/teacher.pt and out_dir/history.json.

    Resumes from out_dir/resume.pt when it was written for the same configuration and index.
    """
    frame = read_split(index_path, "train")
    labels = frame["label"].to_numpy(np.int64)
    if (labels < 0).any():
        raise ValueError(f"{index_path}: split=='train' rows must have labels >= 0")
    run = TrainingRun(
        "teacher", model, teacher, runtime, out_dir, {"index": file_digest(index_path)}
    )
    iterations = teacher.optim.iterations_per_epoch or max(1, len(frame) // teacher.batch_size)
    sampler = MPerClassBatchSampler(
        labels, teacher.m_per_class, teacher.batch_size, runtime.seed, iterations
    )
    objective = ranking_objective(teacher.loss, labels, run.device)
    history = run.epochs([frame], sampler, teacher.batch_size, objective, on_epoch)
    return run.finish(history)
