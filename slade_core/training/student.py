"""Student: labeled plus pseudo-labeled data, with SLADE's feature basis and sample mining.

Each step sees a labeled batch followed by a pseudo-labeled batch (both m-per-class) and
minimises the SLADE objective (`slade_core.losses.SladeLoss`).
- Class ids: labeled classes keep 0..C_l-1 (remapped over split=="train"), cluster c becomes
  C_l + c, so both halves share one label space.
- Warm-up: basis.warmup_iterations steps in which only the basis learns come before the
  joint epochs, so the network trains as many steps as the pseudo-labels-only control.
- Audit (benchmarks only): `audit_classes` maps unlabeled image ids to their hidden classes;
  the history then reports the precision of pseudo-label and mined pairs against them. The
  method never trains on it.
- Repeats: on cached inputs a row drawn twice (a cluster smaller than m) is the same input
  twice; only its first draw enters the losses, so it never forms a self-pair, passes the
  mining thresholds or enters mu+/sigma+ (`samplers.first_occurrences`). history.json
  records the repeated share of the pseudo-labeled half (`duplicate_fraction`), the mined
  pair counts and each loss term's gradient norm at the embedding.
The basis is not part of the embedding model: student.pt holds the EmbeddingNet, basis.pt
the basis, CE and regulariser state. Under torchrun each rank embeds a slice of every joint
batch and runs the objective on the gathered whole (see training.distributed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from slade_core.config import ModelConfig, RuntimeConfig, StudentConfig
from slade_core.io import atomic_path, file_digest
from slade_core.losses import SladeLoss
from slade_core.samplers import JointBatchSampler, MPerClassBatchSampler
from slade_core.training.data import read_split
from slade_core.training.loop import EpochCallback, TrainResult
from slade_core.training.run import Batch, TrainingRun

log = logging.getLogger(__name__)


def read_pseudo_labeled(
    index_path: str | os.PathLike, pseudo_labels_path: str | os.PathLike
) -> pd.DataFrame:
    """split=="unlabeled" rows that have a pseudo label, with a "cluster" column."""
    unlabeled = read_split(index_path, "unlabeled")
    pseudo = pd.read_parquet(pseudo_labels_path, columns=["image_id", "cluster"])
    stale = ~pseudo["image_id"].isin(unlabeled["image_id"])
    if stale.any():
        raise ValueError(
            f"{pseudo_labels_path} has {int(stale.sum())} image ids that are not unlabeled "
            f"rows of {index_path} (e.g. {pseudo['image_id'][stale].iloc[0]!r}); the pseudo "
            "labels were made from another index: re-run clustering"
        )
    joined = unlabeled.merge(pseudo, on="image_id", how="inner", validate="one_to_one")
    if len(joined) < len(unlabeled):
        log.info(
            "%d of %d unlabeled rows have no pseudo label and are left out",
            len(unlabeled) - len(joined),
            len(unlabeled),
        )
    return joined


def _dense(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Remap ids to 0..n-1 (order kept); returns (remapped, n)."""
    uniq, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int64), len(uniq)


def student_epoch_length(student: StudentConfig, labeled_rows: int, pseudo_rows: int) -> int:
    """Steps per epoch of the student and of its control: optim.iterations_per_epoch, else
    enough for the larger half (labeled or pseudo-labeled rows) to be drawn once."""
    return student.optim.iterations_per_epoch or max(
        1, labeled_rows // student.labeled_batch_size, pseudo_rows // student.unlabeled_batch_size
    )


def labeled_sampler(
    labels: np.ndarray, student: StudentConfig, seed: int, iterations: int
) -> MPerClassBatchSampler:
    """The labeled half's batches (stream 0): the student and its control draw the same."""
    return MPerClassBatchSampler(
        labels, student.m_per_class, student.labeled_batch_size, seed, iterations, stream=0
    )


def starting_weights(
    model: ModelConfig, student: StudentConfig, teacher_checkpoint: str | os.PathLike
) -> ModelConfig | None:
    """The network spec the student (and its control) start from: the teacher's checkpoint
    with student.init_from_teacher, else None (the model's own weights)."""
    if not student.init_from_teacher:
        return None
    return ModelConfig.model_validate(
        {**model.model_dump(), "weights": "checkpoint", "checkpoint_path": teacher_checkpoint}
    )


def input_digests(
    index_path: str | os.PathLike,
    pseudo_labels_path: str | os.PathLike,
    teacher_checkpoint: str | os.PathLike,
    start: ModelConfig | None,
) -> dict[str, list[str]]:
    """What the student (and its control) resume on: the index, the pseudo labels and, when
    it starts from it (`starting_weights`), the teacher checkpoint."""
    inputs = [index_path, pseudo_labels_path]
    if start is not None:
        inputs.append(teacher_checkpoint)
    return {"inputs": [file_digest(p) for p in inputs]}


def train_student(
    index_path: str | os.PathLike,
    pseudo_labels_path: str | os.PathLike,
    teacher_checkpoint: str | os.PathLike,
    model: ModelConfig,
    student: StudentConfig,
    runtime: RuntimeConfig,
    out_dir: str | os.PathLike,
    on_epoch: EpochCallback | None = None,
    audit_classes: Mapping[str, int] | None = None,
) -> TrainResult:
    """Train the student; write out_dir/student.pt, basis.pt and history.json.

    Resumes from out_dir/resume.pt when it was written for the same configuration and inputs.
    `audit_classes` (image id -> hidden class, benchmarks only) adds pair-precision metrics.
    """
    labeled = read_split(index_path, "train")
    unlabeled = read_pseudo_labeled(index_path, pseudo_labels_path)
    labels, n_classes = _dense(labeled["label"].to_numpy(np.int64))
    pseudo, n_clusters = _dense(unlabeled["cluster"].to_numpy(np.int64))
    all_labels = np.concatenate([labels, pseudo + n_classes])
    start = starting_weights(model, student, teacher_checkpoint)
    digests = input_digests(index_path, pseudo_labels_path, teacher_checkpoint, start)
    run = TrainingRun("student", model, student, runtime, out_dir, digests, start=start)
    device = run.device
    lbs, ubs = student.labeled_batch_size, student.unlabeled_batch_size
    iterations = student_epoch_length(student, len(labeled), len(unlabeled))
    sampler = JointBatchSampler(
        labeled_sampler(labels, student, runtime.seed, iterations),
        MPerClassBatchSampler(pseudo, student.m_per_class, ubs, runtime.seed, iterations, stream=1),
        unlabeled_offset=len(labeled),
    )
    label_tensor = torch.tensor(all_labels, device=device)
    hidden = None
    if audit_classes is not None:
        known = unlabeled["image_id"].map(audit_classes).fillna(-1).to_numpy(np.int64)
        hidden = torch.tensor(np.concatenate([np.full(len(labeled), -1), known]), device=device)
    objective = SladeLoss(student, model.embedding_dim, n_classes).to(device)

    def step(batch: Batch):
        split = batch.kept(lbs)
        audit = None if hidden is None else hidden[batch.positions][split:]
        loss, metrics = objective(
            batch.embeddings, label_tensor[batch.positions], split, batch.warmup, audit
        )
        return loss, {**metrics, "duplicate_fraction": batch.repeated_share(lbs)}

    history = run.epochs(
        [labeled, unlabeled],
        sampler,
        lbs + ubs,
        step,
        on_epoch,
        warmup_steps=student.basis.warmup_iterations if student.use_basis else 0,
        modules={"objective": objective},
        extra_parameters=[(objective.basis_parameters(), student.basis.lr)],
        epoch_metrics=objective.stats,
    )
    if objective.basis is not None and run.ctx.is_main:
        with atomic_path(Path(out_dir) / "basis.pt") as tmp:
            torch.save({k: v.cpu() for k, v in objective.state_dict().items()}, tmp)
    return run.finish(
        history,
        labeled_classes=n_classes,
        clusters=n_clusters,
        basis_stats=objective.stats(),
        moments_at_warmup_end=objective.warmup_end,
    )
