"""The L_reg part of L_Basis = L_CE + L_reg, registered by name (`BasisConfig.regularizer`).

Every regulariser is called as `reg(similarity [B, B], labels [B]) -> scalar`.
"""

from __future__ import annotations

from torch import nn

from slade_core.config import BasisConfig
from slade_core.losses.ce_regularizers import GlobalSimilarityCE, LocalSimilarityCE
from slade_core.losses.similarity_distribution import SimilarityDistributionLoss

REGULARIZERS = {
    "sd": lambda cfg: SimilarityDistributionLoss(
        momentum=cfg.momentum, margin=cfg.sd_margin, lam=cfg.sd_lambda
    ),
    "local_ce": lambda cfg: LocalSimilarityCE(),
    "global_ce": lambda cfg: GlobalSimilarityCE(momentum=cfg.momentum),
    "none": lambda cfg: None,
}


def build_basis_regularizer(cfg: BasisConfig) -> nn.Module | None:
    """The regulariser registered under `cfg.regularizer`; None for "none" (L_CE alone)."""
    if cfg.regularizer not in REGULARIZERS:
        raise ValueError(
            f"unknown basis regularizer {cfg.regularizer!r}; registered: {sorted(REGULARIZERS)}"
        )
    return REGULARIZERS[cfg.regularizer](cfg)
