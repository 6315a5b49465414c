"""Student: labeled plus pseudo-labeled data, with SLADE's feature basis and sample mining.

Each step sees a labeled batch followed by a pseudo-labeled batch (both m-per-class) and
minimises  L = L_rank(D_l) + lambda1 * L_rank(D_u) + lambda2 * (L_CE + L_reg).
- Class ids: labeled classes keep 0..C_l-1 (remapped over split=="train"), cluster c becomes
  C_l + c, so L_CE on the basis logits sees one label space for both halves.
- L_reg (SD, global or local CE) acts on basis similarities s = cos(r_i, r_j) of the
  pseudo-labeled half against its pseudo labels.
- use_mining: L_rank(D_u) is taken over the pairs mined on s (thresholds mu+/mu- when
  adaptive) instead of over all pseudo-label pairs.
- Warm-up: for the first basis.warmup_iterations steps only W_a (and the CE classifier)
  learns, on detached embeddings, so the basis is meaningful before it steers the student.
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
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from slade_core.config import ModelConfig, RuntimeConfig, StudentConfig
from slade_core.io import atomic_path, file_digest, stable_hash
from slade_core.losses import (
    BasisCrossEntropy,
    FeatureBasis,
    SimilarityMoments,
    build_basis_regularizer,
    build_ranking_loss,
)
from slade_core.mining import BasisPairMiner
from slade_core.models import create_model, resolve_device
from slade_core.samplers import JointBatchSampler, MPerClassBatchSampler, first_occurrences
from slade_core.training import distributed
from slade_core.training.data import make_source, read_split
from slade_core.training.loop import (
    EpochCallback,
    Precision,
    TrainResult,
    build_optimizer,
    finish,
    run_epochs,
    seed_everything,
)

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


def _student_net(model: ModelConfig, teacher_checkpoint: Path, init_from_teacher: bool):
    if not init_from_teacher:
        return create_model(model)
    spec = ModelConfig.model_validate(
        {**model.model_dump(), "weights": "checkpoint", "checkpoint_path": teacher_checkpoint}
    )
    return create_model(spec)


class StudentObjective(nn.Module):
    """The SLADE loss of one joint batch; owns the basis and everything with state."""

    def __init__(
        self,
        student: StudentConfig,
        embedding_dim: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.cfg = student
        self.ranking = build_ranking_loss(student.loss)
        self.unlabeled_ranking = build_ranking_loss(student.unlabeled_loss or student.loss)
        self.basis = self.ce = self.regularizer = self.tracker = None
        self.miner = BasisPairMiner(student.mining) if student.use_mining else None
        if student.use_basis:
            self.basis = FeatureBasis(embedding_dim, student.basis.size)
            self.ce = BasisCrossEntropy(student.basis.size, num_classes)
            self.regularizer = build_basis_regularizer(student.basis)
            if self.moments is None:  # local_ce / none track nothing: track mu/sigma here
                self.tracker = SimilarityMoments(student.basis.momentum)

    @property
    def moments(self) -> SimilarityMoments | None:
        """The tracked pair-similarity moments (the regulariser's own when it has them)."""
        own = getattr(self.regularizer, "moments", None)
        return own if own is not None else self.tracker

    def basis_parameters(self) -> list[nn.Parameter]:
        return [] if self.basis is None else [*self.basis.parameters(), *self.ce.parameters()]

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, split: int, warmup: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, metrics) for embeddings [labeled half (`split` rows); pseudo-labeled half]
        and their ids. Metrics include each weighted term's gradient norm at the embedding
        (`grad_*`), so a term that has gone dead shows in the history."""
        zero = embeddings.new_zeros(())
        names = ("rank", "rank_unlabeled", "ce", "reg")
        metrics = dict.fromkeys(
            [*(f"loss_{n}" for n in names), *(f"grad_{n}" for n in names)]
            + ["mined_pos", "mined_neg"],
            zero,
        )
        unl, pseudo = embeddings[split:], labels[split:]
        terms: dict[str, torch.Tensor] = {}
        similarity = None
        if self.basis is not None:
            representation = self.basis(embeddings.detach() if warmup else embeddings)
            similarity = self.basis.similarity(representation[split:])
            metrics["loss_ce"] = self.ce(representation, labels)
            terms["ce"] = self.cfg.lambda2 * metrics["loss_ce"]
            if self.regularizer is not None:
                metrics["loss_reg"] = self.regularizer(similarity, pseudo)
                terms["reg"] = self.cfg.lambda2 * metrics["loss_reg"]
            if self.tracker is not None:
                self.tracker(similarity.detach(), pseudo)
        if not warmup:
            metrics["loss_rank"] = self.ranking(embeddings[:split], labels[:split])
            pairs = self._pairs(similarity, pseudo)
            metrics["loss_rank_unlabeled"] = self.unlabeled_ranking(unl, pseudo, pairs=pairs)
            metrics["mined_pos"] = zero + len(pairs[0])
            metrics["mined_neg"] = zero + len(pairs[2])
            terms["rank"] = metrics["loss_rank"]
            terms["rank_unlabeled"] = self.cfg.lambda1 * metrics["loss_rank_unlabeled"]
            if embeddings.requires_grad:
                for name, term in terms.items():
                    (grad,) = torch.autograd.grad(
                        term, embeddings, retain_graph=True, allow_unused=True
                    )
                    metrics[f"grad_{name}"] = zero if grad is None else grad.norm()
        loss = sum(terms.values(), zero)
        return loss, metrics

    def _pairs(self, similarity: torch.Tensor | None, pseudo: torch.Tensor):
        """Mined pairs, or every pseudo-label pair (the PML all-pairs tuple) without mining."""
        if self.miner is not None:
            stats = self.moments.stats()
            return self.miner.mine(similarity.detach(), pseudo, stats["mu_pos"], stats["mu_neg"])
        same = pseudo[:, None] == pseudo[None, :]
        off_diag = ~torch.eye(len(pseudo), dtype=torch.bool, device=pseudo.device)
        a1, p = torch.where(same & off_diag)
        a2, n = torch.where(~same)
        return a1, p, a2, n

    def stats(self) -> dict[str, float]:
        return {} if self.moments is None else self.moments.stats()


def train_student(
    index_path: str | os.PathLike,
    pseudo_labels_path: str | os.PathLike,
    teacher_checkpoint: str | os.PathLike,
    model: ModelConfig,
    student: StudentConfig,
    runtime: RuntimeConfig,
    out_dir: str | os.PathLike,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train the student; write out_dir/student.pt, basis.pt and history.json.

    Resumes from out_dir/resume.pt when it was written for the same configuration and inputs.
    """
    out_dir = Path(out_dir)
    teacher_checkpoint = Path(teacher_checkpoint)
    labeled = read_split(index_path, "train")
    unlabeled = read_pseudo_labeled(index_path, pseudo_labels_path)
    labels, n_classes = _dense(labeled["label"].to_numpy(np.int64))
    pseudo, n_clusters = _dense(unlabeled["cluster"].to_numpy(np.int64))
    all_labels = np.concatenate([labels, pseudo + n_classes])
    config = {
        "model": model.model_dump(mode="json"),
        "student": student.model_dump(mode="json"),
        "runtime": runtime.model_dump(mode="json", include={"seed", "cached_views", "amp"}),
    }
    inputs = [index_path, pseudo_labels_path]
    if student.init_from_teacher:
        inputs.append(teacher_checkpoint)
    config_hash = stable_hash({**config, "inputs": [file_digest(p) for p in inputs]})

    ctx = distributed.current()
    seed_everything(runtime.seed)
    device = ctx.device(resolve_device(runtime.device))
    precision = Precision.for_runtime(runtime, device)
    net = _student_net(model, teacher_checkpoint, student.init_from_teacher)
    net = precision.place(net, images=net.trainable_trunk())
    lbs, ubs = student.labeled_batch_size, student.unlabeled_batch_size
    iterations = student.optim.iterations_per_epoch or max(
        1, len(labeled) // lbs, len(unlabeled) // ubs
    )
    m = student.m_per_class
    sampler = JointBatchSampler(
        MPerClassBatchSampler(labels, m, lbs, runtime.seed, iterations, stream=0),
        MPerClassBatchSampler(pseudo, m, ubs, runtime.seed, iterations, stream=1),
        unlabeled_offset=len(labeled),
    )
    source = make_source(
        net, [labeled, unlabeled], ctx.shard(sampler, lbs + ubs), runtime, precision
    )
    label_tensor = torch.tensor(all_labels, device=device)
    objective = StudentObjective(student, model.embedding_dim, n_classes + n_clusters).to(device)
    ctx.seed_rank(runtime.seed)  # after every module's initialisation: identical on all ranks
    embed = ctx.embedder(net, source.embed, device)
    warmup_steps = student.basis.warmup_iterations if student.use_basis else 0

    def step(inputs: torch.Tensor, positions: torch.Tensor, iteration: int):
        warmup = iteration < warmup_steps
        positions = ctx.gather(positions.to(device))
        with torch.set_grad_enabled(not warmup):
            embeddings = embed(inputs)
        split = lbs
        duplicates = 0.0
        if source.repeats_identical:
            keep = first_occurrences(positions)
            split = int(keep[:lbs].sum())
            duplicates = 1.0 - keep[lbs:].float().mean()
            embeddings, positions = embeddings[keep], positions[keep]
        loss, metrics = objective(embeddings, label_tensor[positions], split, warmup)
        return loss, {**metrics, "duplicate_fraction": duplicates}

    optimizer = build_optimizer(
        net, student.optim, extra=[(objective.basis_parameters(), student.basis.lr)]
    )
    history = run_epochs(
        stage="student",
        out_dir=out_dir,
        config_hash=config_hash,
        epochs=student.optim.epochs,
        source=source,
        step=step,
        modules={"model": net, "objective": objective},
        optimizer=optimizer,
        precision=precision,
        on_epoch=on_epoch,
        schedule=student.optim.schedule,
        epoch_metrics=objective.stats,
    )
    if objective.basis is not None and ctx.is_main:
        with atomic_path(out_dir / "basis.pt") as tmp:
            torch.save({k: v.cpu() for k, v in objective.state_dict().items()}, tmp)
    meta = {
        "stage": "student",
        "epochs": student.optim.epochs,
        "config": config,
        "labeled_classes": n_classes,
        "clusters": n_clusters,
        "basis_stats": objective.stats(),
    }
    return finish(net, out_dir, "student.pt", meta, history)
