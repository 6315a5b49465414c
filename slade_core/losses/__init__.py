"""Losses on L2-normalised embeddings (pytorch-metric-learning's concept): L_rank, the feature
basis with L_CE, the basis regularisers (L_SD or the CE alternatives of poster ablation 3) and
the SLADE objective that combines them. Ranking losses and regularisers are registered by
name (`RANKING_LOSSES`, `REGULARIZERS`)."""

from __future__ import annotations

from slade_core.losses.basis import BasisCrossEntropy, FeatureBasis
from slade_core.losses.ce_regularizers import GlobalSimilarityCE, LocalSimilarityCE
from slade_core.losses.ranking import RANKING_LOSSES, RankingLoss, build_ranking_loss
from slade_core.losses.regularizers import REGULARIZERS, build_basis_regularizer
from slade_core.losses.similarity_distribution import (
    PairMoments,
    SimilarityDistributionLoss,
    SimilarityMoments,
)
from slade_core.losses.slade import SladeLoss
from slade_core.pairs import PairIndices

__all__ = [
    "RANKING_LOSSES",
    "REGULARIZERS",
    "BasisCrossEntropy",
    "FeatureBasis",
    "GlobalSimilarityCE",
    "LocalSimilarityCE",
    "PairIndices",
    "PairMoments",
    "RankingLoss",
    "SimilarityDistributionLoss",
    "SimilarityMoments",
    "SladeLoss",
    "build_basis_regularizer",
    "build_ranking_loss",
]
