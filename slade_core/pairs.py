"""Pairs of a batch by label: which rows share a (pseudo) label and which do not.

Every loss, regulariser and miner asks the same question of the same [B] labels, so it is
answered here once: as [B, B] masks, as the upper triangle (each unordered pair once, for
means and variances of symmetric similarities), or as PML's ordered index pairs.
"""

from __future__ import annotations

import torch

# (a1, p, a2, n): ordered positive pairs (a1[i], p[i]) and negative pairs (a2[j], n[j]),
# pytorch-metric-learning's pair tuple.
PairIndices = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def same_label(labels: torch.Tensor) -> torch.Tensor:
    """[B, B] bool: labels[i] == labels[j] (the diagonal included)."""
    return labels[:, None] == labels[None, :]


def off_diagonal(size: int, device: torch.device) -> torch.Tensor:
    """[size, size] bool: i != j."""
    return ~torch.eye(size, dtype=torch.bool, device=device)


def upper_pair_masks(labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper-triangle (i < j) masks of same-label and different-label pairs.

    A similarity matrix is symmetric, so each unordered pair counts once; means and
    variances are the same as over ordered pairs.
    """
    if labels.ndim != 1 or len(labels) != size:
        raise ValueError(
            f"labels must be 1-D with {size} entries (one per row), got {tuple(labels.shape)}"
        )
    upper = torch.ones(size, size, dtype=torch.bool, device=labels.device).triu(1)
    same = same_label(labels)
    return same & upper, ~same & upper


def all_pairs(labels: torch.Tensor) -> PairIndices:
    """Every ordered same-label / different-label pair of a batch (PML's all-pairs tuple)."""
    same = same_label(labels)
    a1, p = torch.where(same & off_diagonal(len(labels), labels.device))
    a2, n = torch.where(~same)
    return a1, p, a2, n
