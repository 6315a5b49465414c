"""The SLADE student loss of one joint batch [labeled half; pseudo-labeled half].

    L = L_rank(D_l) + lambda1 * L_rank(D_u) + lambda2 * (L_CE + L_reg)

- L_CE classifies the labeled half against its true classes with the basis vectors as
  class weights.
- L_reg (SD, global or local CE) acts on the basis similarities s = cos(r_i - c, r_j - c)
  of the pseudo-labeled half against its pseudo labels (c: the joint batch's mean r).
- Mining: L_rank(D_u) runs over the pairs a miner picks on s (slade_core.miners) instead of
  every pseudo-label pair.
- Warm-up: while `warmup` is true only W_a (and L_CE's classifier, if any) learns, on detached
  embeddings, so the basis and its tracked moments mean something before they steer the
  student; the moments at the end of warm-up are kept (`warmup_end`) next to the last warm-up
  batches' own means, to show whether they had settled. With momentum 0.99 (~100 steps of
  memory) they lag a basis that is still learning, so `basis.restart_moments` lets the
  first joint batch initialise them afresh.

Every call returns per-term metrics: each weighted term's gradient norm at the embedding
(`grad_*`, and the unlabeled ranking term split into its positive and negative pairs), mined
pair counts, and, when the caller passes the hidden classes of the pseudo-labeled rows (a
benchmark diagnostic the method never trains on), the precision of the pseudo-label pairs
and of the mined pairs against them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slade_core.config import StudentConfig
from slade_core.losses.basis import BasisCrossEntropy, FeatureBasis
from slade_core.losses.ranking import build_ranking_loss
from slade_core.losses.regularizers import build_basis_regularizer
from slade_core.losses.similarity_distribution import SimilarityMoments, pair_similarities
from slade_core.miners import build_miner
from slade_core.pairs import PairIndices, all_pairs

TERMS = ("rank", "rank_unlabeled", "ce", "reg")
PAIR_METRICS = (
    "mined_pos",
    "mined_neg",
    "pseudo_pos_precision",
    "pseudo_neg_precision",
    "mined_pos_precision",
    "mined_neg_precision",
)


def _precision(hidden: torch.Tensor, a: torch.Tensor, b: torch.Tensor, same: bool) -> float:
    """Share of the pairs (a, b) whose hidden classes agree (same) or differ; pairs with an
    unknown class (-1) are left out; NaN when none is left."""
    known = (hidden[a] >= 0) & (hidden[b] >= 0)
    if not bool(known.any()):
        return math.nan
    agree = hidden[a][known] == hidden[b][known]
    return float((agree if same else ~agree).float().mean())


class SladeLoss(nn.Module):
    """The SLADE objective; owns the basis, the miner and everything with state."""

    def __init__(self, student: StudentConfig, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.cfg = student
        self.num_classes = num_classes
        self.ranking = build_ranking_loss(student.loss)
        self.basis = self.ce = self.regularizer = self.tracker = None
        self.miner = build_miner(student.mining) if student.use_mining else None
        self.warmup_end: dict[str, float] = {}
        self._recent: list[tuple[float, float]] = []
        if student.use_basis:
            basis = student.basis
            self.basis = FeatureBasis(embedding_dim, basis.size or num_classes)
            self.ce = BasisCrossEntropy(self.basis.size, num_classes)
            self.regularizer = build_basis_regularizer(basis)
            if self.moments is None:  # local_ce / none track nothing: track mu/sigma here
                self.tracker = SimilarityMoments(basis.momentum)

    @property
    def moments(self) -> SimilarityMoments | None:
        """The tracked pair-similarity moments (the regulariser's own when it has them)."""
        own = getattr(self.regularizer, "moments", None)
        return own if own is not None else self.tracker

    def basis_parameters(self) -> list[nn.Parameter]:
        return [] if self.basis is None else [*self.basis.parameters(), *self.ce.parameters()]

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        split: int,
        warmup: bool,
        hidden: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """(loss, metrics) for embeddings [labeled half (`split` rows); pseudo-labeled half],
        their ids, and optionally the pseudo-labeled half's hidden classes (-1: unknown)."""
        zero = embeddings.new_zeros(())
        metrics: dict[str, torch.Tensor | float] = dict.fromkeys(
            [f"loss_{n}" for n in TERMS]
            + [f"grad_{n}" for n in (*TERMS, "rank_unlabeled_pos", "rank_unlabeled_neg")],
            zero,
        )
        unl, pseudo = embeddings[split:], labels[split:]
        terms: dict[str, torch.Tensor] = {}
        similarity = None
        if self.basis is not None:
            representation = self.basis(embeddings.detach() if warmup else embeddings)
            center = representation.mean(dim=0)
            similarity = self.basis.similarity(representation[split:], center)
            metrics.update(self._settling(similarity.detach(), pseudo, warmup))
            metrics["loss_ce"] = self.ce(representation[:split], labels[:split])
            terms["ce"] = self.cfg.lambda2 * metrics["loss_ce"]
            if self.regularizer is not None:
                metrics["loss_reg"] = self.regularizer(similarity, pseudo)
                terms["reg"] = self.cfg.lambda2 * metrics["loss_reg"]
            if self.tracker is not None:
                self.tracker(similarity.detach(), pseudo)
        pairs = None
        if not warmup:
            metrics["loss_rank"] = self.ranking(embeddings[:split], labels[:split])
            pairs = self._pairs(similarity, pseudo)
            metrics["loss_rank_unlabeled"] = self.ranking(unl, pseudo, pairs=pairs)
            metrics["mined_pos"] = float(len(pairs[0]))
            metrics["mined_neg"] = float(len(pairs[2]))
            terms["rank"] = metrics["loss_rank"]
            terms["rank_unlabeled"] = self.cfg.lambda1 * metrics["loss_rank_unlabeled"]
            if embeddings.requires_grad:
                metrics.update(self._gradient_norms(embeddings, terms, split, pseudo, pairs))
        if hidden is not None:
            metrics.update(self._pair_precision(hidden, pseudo, pairs))
        loss = sum(terms.values(), zero)
        return loss, metrics

    def _pairs(self, similarity: torch.Tensor | None, pseudo: torch.Tensor) -> PairIndices:
        """Mined pairs, or every pseudo-label pair without mining."""
        if self.miner is None:
            return all_pairs(pseudo)
        return self.miner.mine(similarity.detach(), pseudo, self.moments.stats())

    def _gradient_norms(
        self,
        embeddings: torch.Tensor,
        terms: dict[str, torch.Tensor],
        split: int,
        pseudo: torch.Tensor,
        pairs: PairIndices,
    ) -> dict[str, torch.Tensor]:
        """|d term / d embeddings| per weighted term; L_rank(D_u) also over its positive and
        its negative pairs alone, so a side that carries no gradient shows."""
        unl = embeddings[split:]
        empty = pairs[0][:0]
        sides = {
            "rank_unlabeled_pos": (pairs[0], pairs[1], empty, empty),
            "rank_unlabeled_neg": (empty, empty, pairs[2], pairs[3]),
        }
        parts = dict(terms)
        for name, side in sides.items():
            parts[name] = self.cfg.lambda1 * self.ranking(unl, pseudo, pairs=side)
        out = {}
        for name, term in parts.items():
            if not term.requires_grad:
                continue
            (grad,) = torch.autograd.grad(term, embeddings, retain_graph=True, allow_unused=True)
            out[f"grad_{name}"] = embeddings.new_zeros(()) if grad is None else grad.norm()
        return out

    def _settling(
        self, similarity: torch.Tensor, pseudo: torch.Tensor, warmup: bool
    ) -> dict[str, float]:
        """This batch's mean positive / negative basis similarity; at the first joint step,
        records the tracked means against the last warm-up batches' (`warmup_end`)."""
        pos, neg = pair_similarities(similarity, pseudo)
        batch = (
            float(pos.mean()) if pos.numel() else math.nan,
            float(neg.mean()) if neg.numel() else math.nan,
        )
        if warmup:
            self._recent = [*self._recent[-49:], batch]
        elif self._recent and not self.warmup_end:
            tracked = self.moments.stats()
            recent = torch.tensor(self._recent).nanmean(dim=0).tolist()
            self.warmup_end = {
                "tracked_mu_pos": tracked["mu_pos"],
                "tracked_mu_neg": tracked["mu_neg"],
                "last_50_batches_mu_pos": recent[0],
                "last_50_batches_mu_neg": recent[1],
            }
            if self.cfg.basis.restart_moments:
                self.moments.restart()
        return {"batch_mu_pos": batch[0], "batch_mu_neg": batch[1]}

    def _pair_precision(
        self, hidden: torch.Tensor, pseudo: torch.Tensor, pairs: PairIndices | None
    ) -> dict[str, float]:
        hidden = hidden.to(pseudo.device)
        a1, p, a2, n = all_pairs(pseudo)
        out = {
            "pseudo_pos_precision": _precision(hidden, a1, p, same=True),
            "pseudo_neg_precision": _precision(hidden, a2, n, same=False),
        }
        if pairs is not None:
            out["mined_pos_precision"] = _precision(hidden, pairs[0], pairs[1], same=True)
            out["mined_neg_precision"] = _precision(hidden, pairs[2], pairs[3], same=False)
        return out

    def stats(self) -> dict[str, float]:
        return {} if self.moments is None else self.moments.stats()
