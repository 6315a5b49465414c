"""Directions of embeddings: rows scaled to unit norm, and the unit mean direction of groups.

Cosine geometry is what the embeddings are trained for, so clustering, its centres and the
benchmarks' class means all work on directions; they share these two functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def unit_rows(x: Any) -> np.ndarray:
    """float32 rows scaled to unit norm; rejects NaN/inf and zero rows, naming them."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty [n, dim] matrix, got shape {x.shape}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(
            f"{bad.size} embedding rows contain NaN or inf (first rows: {bad[:5].tolist()}); "
            "re-extract the embeddings or drop those images"
        )
    norms = np.linalg.norm(x, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(
            f"{zero.size} embedding rows are zero vectors (first rows: {zero[:5].tolist()}); "
            "they have no direction to cluster: drop those images"
        )
    return np.ascontiguousarray(x / norms[:, None])


def mean_directions(x: np.ndarray, groups: np.ndarray, n: int) -> np.ndarray:
    """Unit-norm float32 [n, d]: the direction of the mean of the rows of x in each group
    0..n-1 (summed in float64)."""
    sums = np.zeros((n, x.shape[1]), dtype=np.float64)
    np.add.at(sums, groups, x)
    return (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
