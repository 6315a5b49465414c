"""L_rank: the ranking loss on L2-normalised embeddings (teacher, and both student terms).

Thin wrapper over pytorch-metric-learning so every trainer calls it the same way:
`loss(embeddings, labels)` for all pairs implied by labels, or
`loss(embeddings, labels, pairs=(a1, p, a2, n))` for mined pairs (SLADE's L_rank(D_u)).

Reductions (PML defaults, kept on purpose so numbers match the reality-check protocol):
- contrastive: `mean over non-zero [d_ap - m_pos]_+  +  mean over non-zero [m_neg - d_an]_+`,
  d = Euclidean distance (PML LpDistance on normalised embeddings); pairs are ordered, so
  (i, j) and (j, i) both count, which leaves the means unchanged.
- multi-similarity: per-anchor MS loss on cosine similarity, averaged over all anchors
  (anchors without pairs contribute 0).
"""

from __future__ import annotations

import torch
from pytorch_metric_learning import losses as pml_losses
from torch import nn

from slade_core.config import RankingLossConfig
from slade_core.pairs import PairIndices


class RankingLoss(nn.Module):
    """Calls a PML pair loss in float32 and makes mined-pair input safe.

    With no usable pairs the result is an exact 0 that is still attached to `embeddings`
    (PML returns `sum(embeddings * 0)`), so `backward()` works on every batch.
    """

    def __init__(self, loss: pml_losses.BaseMetricLossFunction):
        super().__init__()
        self.loss = loss

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        pairs: PairIndices | None = None,
    ) -> torch.Tensor:
        if labels is None and pairs is None:
            raise ValueError("ranking loss needs labels, pairs (a1, p, a2, n), or both")
        if pairs is not None:
            pairs = _checked_pairs(pairs, len(embeddings), embeddings.device)
        # float32 under AMP: distances of near-identical unit vectors underflow in fp16.
        return self.loss(embeddings.float(), labels, indices_tuple=pairs)


def _checked_pairs(pairs: PairIndices, batch_size: int, device: torch.device) -> PairIndices:
    if len(pairs) != 4:
        raise ValueError(f"pairs must be a PML pair tuple (a1, p, a2, n), got {len(pairs)} tensors")
    a1, p, a2, n = (torch.as_tensor(x, dtype=torch.long, device=device) for x in pairs)
    if len(a1) != len(p) or len(a2) != len(n):
        raise ValueError(
            f"pairs: a1/p and a2/n must have equal lengths, got {len(a1)}/{len(p)} and "
            f"{len(a2)}/{len(n)}"
        )
    for x in (a1, p, a2, n):
        if len(x) and (int(x.min()) < 0 or int(x.max()) >= batch_size):
            raise ValueError(f"pair indices must lie in [0, {batch_size}) for this batch")
    if max(len(a1), len(a2)) == 1:
        # PML treats "at most one pair of each kind" as no pairs at all; doubling the single
        # pair changes neither the contrastive mean nor the MS masks, but keeps it counted.
        a1, p, a2, n = (torch.cat([x, x]) for x in (a1, p, a2, n))
    return a1, p, a2, n


RANKING_LOSSES = {
    "contrastive": lambda cfg: pml_losses.ContrastiveLoss(
        pos_margin=cfg.pos_margin, neg_margin=cfg.neg_margin
    ),
    "multi_similarity": lambda cfg: pml_losses.MultiSimilarityLoss(
        alpha=cfg.ms_alpha, beta=cfg.ms_beta, base=cfg.ms_base
    ),
}


def build_ranking_loss(cfg: RankingLossConfig) -> RankingLoss:
    """The PML loss registered under `cfg.name` (contrastive: Euclidean, margins m_pos/m_neg;
    multi-similarity: alpha, beta, base), wrapped."""
    if cfg.name not in RANKING_LOSSES:
        raise ValueError(f"unknown ranking loss {cfg.name!r}; registered: {sorted(RANKING_LOSSES)}")
    return RankingLoss(RANKING_LOSSES[cfg.name](cfg))
