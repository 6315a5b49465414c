"""SLADE sample mining: confident pairs of the pseudo-labeled batch from basis similarities.

P = {(i, j), i != j : s(i, j) >= T1},  N = {(i, j), i != j : s(i, j) <= T2}
with fixed (cfg.t1, cfg.t2) or adaptive (T1 = mu+, T2 = mu-, the tracked similarity means)
thresholds. With `require_label_agreement`, P also needs equal pseudo labels and N different
ones. Pairs are ordered, both (i, j) and (j, i) are returned, as PML's own all-pairs indices;
a pair that qualifies for P and N at once (possible when T1 <= T2 without label agreement)
is dropped from both, since its evidence is contradictory and PML's matrix losses reject it.
"""

from __future__ import annotations

import math

import torch

from slade_core.config import MiningConfig
from slade_core.losses.ranking import PairIndices


class BasisPairMiner:
    """Stateless miner; the trainer passes the tracked means for adaptive thresholds."""

    def __init__(self, cfg: MiningConfig):
        self.cfg = cfg

    def thresholds(
        self, mu_pos: float | None = None, mu_neg: float | None = None
    ) -> tuple[float, float]:
        """(T1, T2) for this step."""
        if self.cfg.thresholds == "fixed":
            return self.cfg.t1, self.cfg.t2
        if mu_pos is None or mu_neg is None or math.isnan(mu_pos) or math.isnan(mu_neg):
            raise ValueError(
                "adaptive mining thresholds need the tracked similarity means mu_pos and "
                f"mu_neg (got {mu_pos}, {mu_neg}); pass SimilarityMoments.stats() after the "
                "basis warm-up, or set mining.thresholds='fixed'"
            )
        return float(mu_pos), float(mu_neg)

    @torch.no_grad()
    def mine(
        self,
        similarity: torch.Tensor,
        pseudo_labels: torch.Tensor,
        mu_pos: float | None = None,
        mu_neg: float | None = None,
    ) -> PairIndices:
        """(a1, p, a2, n) LongTensors on similarity's device, ready for `pairs=` of L_rank."""
        if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
            raise ValueError(f"similarity must be [B, B], got {tuple(similarity.shape)}")
        size = len(similarity)
        if pseudo_labels.shape != (size,):
            raise ValueError(
                f"pseudo_labels must have shape ({size},) to match similarity, "
                f"got {tuple(pseudo_labels.shape)}"
            )
        t1, t2 = self.thresholds(mu_pos, mu_neg)
        off_diag = ~torch.eye(size, dtype=torch.bool, device=similarity.device)
        pos = (similarity >= t1) & off_diag
        neg = (similarity <= t2) & off_diag
        if self.cfg.require_label_agreement:
            same = (
                pseudo_labels.to(similarity.device)[:, None]
                == pseudo_labels.to(similarity.device)[None, :]
            )
            pos &= same
            neg &= ~same
        both = pos & neg
        a1, p = torch.where(pos & ~both)
        a2, n = torch.where(neg & ~both)
        return a1, p, a2, n
