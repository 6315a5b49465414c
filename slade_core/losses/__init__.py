"""Losses on L2-normalised embeddings: L_rank, the feature basis with L_CE, and the basis
regularisers (L_SD or the CE alternatives of poster ablation 3)."""

from __future__ import annotations

from torch import nn

from slade_core.config import BasisConfig
from slade_core.losses.basis import BasisCrossEntropy, FeatureBasis
from slade_core.losses.ce_regularizers import GlobalSimilarityCE, LocalSimilarityCE
from slade_core.losses.ranking import PairIndices, RankingLoss, build_ranking_loss
from slade_core.losses.similarity_distribution import (
    PairMoments,
    SimilarityDistributionLoss,
    SimilarityMoments,
)

__all__ = [
    "BasisCrossEntropy",
    "FeatureBasis",
    "GlobalSimilarityCE",
    "LocalSimilarityCE",
    "PairIndices",
    "PairMoments",
    "RankingLoss",
    "SimilarityDistributionLoss",
    "SimilarityMoments",
    "build_basis_regularizer",
    "build_ranking_loss",
]


def build_basis_regularizer(cfg: BasisConfig) -> nn.Module | None:
    """The L_reg part of L_Basis = L_CE + L_reg; None for "none" (L_CE alone).

    Every returned module is called as `reg(similarity [B, B], labels [B]) -> scalar`.
    """
    if cfg.regularizer == "sd":
        return SimilarityDistributionLoss(
            momentum=cfg.momentum, margin=cfg.sd_margin, lam=cfg.sd_lambda
        )
    if cfg.regularizer == "local_ce":
        return LocalSimilarityCE()
    if cfg.regularizer == "global_ce":
        return GlobalSimilarityCE(momentum=cfg.momentum)
    if cfg.regularizer == "none":
        return None
    raise ValueError(
        f"unknown basis regularizer {cfg.regularizer!r}; use sd|local_ce|global_ce|none"
    )
