"""SLADE sample mining: pairs of the pseudo-labeled batch chosen on basis similarities.

P = {(i, j), i != j : s(i, j) >= T1},  N = {(i, j), i != j : s(i, j) <= T2}   (the paper)

Thresholds (`MiningConfig.thresholds`), from the tracked pair-similarity Gaussians
G+(mu+, sigma+^2), G-(mu-, sigma-^2) or fixed:
- "adaptive": T1 = mu+, T2 = mu- (a third-party reading: keeps the easy half of each side);
- "boundary": T1 = T2 = the point between mu- and mu+ where the two Gaussian densities are
  equal, i.e. every pair goes to the side its basis similarity is likelier under;
- "crossed": T1 = mu-, T2 = mu+: only a pair less alike than an average negative (or more
  alike than an average positive) is taken from its side;
- "fixed": T1 = t1, T2 = t2.
With `require_label_agreement`, P also needs equal pseudo labels and N different ones: the
basis then only vetoes pseudo-label pairs it contradicts, it never adds new ones. Pairs are
ordered, both (i, j) and (j, i) are returned, as PML's own all-pairs indices; a pair that
qualifies for P and N at once (T1 <= T2 without agreement) is dropped from both, since its
evidence is contradictory and PML's matrix losses reject it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from slade_core.config import MiningConfig

if TYPE_CHECKING:  # the losses package imports the miners: no import cycle at run time
    from slade_core.losses.ranking import PairIndices


def decision_boundary(mu_pos: float, sigma_pos: float, mu_neg: float, sigma_neg: float) -> float:
    """Where N(s; mu+, sigma+) = N(s; mu-, sigma-) between the two means (equal priors).

    The log-density difference is a quadratic in s; its root inside [mu-, mu+] is taken.
    Equal (or degenerate) spreads, or means in the wrong order, give the midpoint.
    """
    mid = (mu_pos + mu_neg) / 2.0
    if mu_pos <= mu_neg or min(sigma_pos, sigma_neg) <= 0:
        return mid
    vp, vn = sigma_pos**2, sigma_neg**2
    a = 1.0 / vn - 1.0 / vp
    b = 2.0 * (mu_pos / vp - mu_neg / vn)
    c = mu_neg**2 / vn - mu_pos**2 / vp + 2.0 * math.log(sigma_neg / sigma_pos)
    if abs(a) < 1e-12:
        return -c / b if b else mid
    disc = b * b - 4 * a * c
    if disc < 0:
        return mid
    roots = [(-b + sign * math.sqrt(disc)) / (2 * a) for sign in (1.0, -1.0)]
    inside = [r for r in roots if mu_neg <= r <= mu_pos]
    return inside[0] if inside else mid


class BasisPairMiner:
    """Stateless miner; the trainer passes the tracked moments for adaptive thresholds."""

    def __init__(self, cfg: MiningConfig):
        self.cfg = cfg

    def thresholds(self, moments: Mapping[str, float] | None = None) -> tuple[float, float]:
        """(T1, T2) for this step from `moments` (mu_pos, sigma_pos, mu_neg, sigma_neg)."""
        kind = self.cfg.thresholds
        if kind == "fixed":
            return self.cfg.t1, self.cfg.t2
        needed = ("mu_pos", "mu_neg") + (("sigma_pos", "sigma_neg") if kind == "boundary" else ())
        values = [float("nan") if moments is None else moments.get(k, math.nan) for k in needed]
        if any(math.isnan(v) for v in values):
            raise ValueError(
                f"{kind!r} mining thresholds need the tracked similarity moments {needed} "
                f"(got {dict(zip(needed, values, strict=True))}); pass SimilarityMoments.stats() "
                "after the basis warm-up, or set mining.thresholds='fixed'"
            )
        mu_pos, mu_neg = values[0], values[1]
        if kind == "adaptive":
            return mu_pos, mu_neg
        if kind == "crossed":
            return mu_neg, mu_pos
        boundary = decision_boundary(mu_pos, values[2], mu_neg, values[3])
        return boundary, boundary

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
        off_diag = ~torch.eye(size, dtype=torch.bool, device=similarity.device)
        pos = (similarity >= t1) & off_diag
        neg = (similarity <= t2) & off_diag
        if t1 == t2:  # one boundary: a pair exactly on it belongs to neither side
            neg = (similarity < t2) & off_diag
        if self.cfg.require_label_agreement:
            labels = pseudo_labels.to(similarity.device)
            same = labels[:, None] == labels[None, :]
            pos &= same
            neg &= ~same
        both = pos & neg
        a1, p = torch.where(pos & ~both)
        a2, n = torch.where(neg & ~both)
        return a1, p, a2, n
