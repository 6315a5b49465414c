"""SLADE sample mining: pseudo-label pairs kept or dropped on their basis similarity.

P = {(i, j), i != j : same pseudo label, s(i, j) >= T1}
N = {(i, j), i != j : different pseudo labels, s(i, j) <= T2}

The basis only vetoes pseudo-label pairs it contradicts, it never adds new ones.
Thresholds (`MiningConfig.thresholds`), from the tracked means mu+, mu- of the positive and
negative pair similarities:
- "crossed": T1 = mu-, T2 = mu+: only a pair less alike than an average negative (or more
  alike than an average positive) is taken from its side;
- "adaptive": T1 = mu+, T2 = mu- (the poster's literal T1, T2: keeps the easy half of each
  side).
Pairs are ordered, both (i, j) and (j, i) are returned, as PML's own all-pairs indices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from slade_core.config import MiningConfig
from slade_core.pairs import PairIndices, off_diagonal, same_label


class BasisPairMiner:
    """Stateless miner; the trainer passes the tracked moments for adaptive thresholds."""

    def __init__(self, cfg: MiningConfig):
        self.cfg = cfg

    def thresholds(self, moments: Mapping[str, float] | None = None) -> tuple[float, float]:
        """(T1, T2) for this step from `moments` (mu_pos, mu_neg)."""
        kind = self.cfg.thresholds
        needed = ("mu_pos", "mu_neg")
        values = [float("nan") if moments is None else moments.get(k, math.nan) for k in needed]
        if any(math.isnan(v) for v in values):
            raise ValueError(
                f"{kind!r} mining thresholds need the tracked similarity moments {needed} "
                f"(got {dict(zip(needed, values, strict=True))}); pass SimilarityMoments.stats() "
                "after the basis warm-up"
            )
        mu_pos, mu_neg = values
        return (mu_pos, mu_neg) if kind == "adaptive" else (mu_neg, mu_pos)

    @torch.no_grad()
    def mine(
        self,
        similarity: torch.Tensor,
        pseudo_labels: torch.Tensor,
        moments: Mapping[str, float] | None = None,
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
        t1, t2 = self.thresholds(moments)
        off_diag = off_diagonal(size, similarity.device)
        same = same_label(pseudo_labels.to(similarity.device))
        a1, p = torch.where((similarity >= t1) & off_diag & same)
        a2, n = torch.where((similarity <= t2) & off_diag & ~same)
        return a1, p, a2, n
