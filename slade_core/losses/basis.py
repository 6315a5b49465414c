"""Feature basis W_a and its cross-entropy term L_CE (part of L_Basis).

The basis maps a student embedding f to coordinates r = W_a f; cosine similarities of r
measure how alike two (pseudo-labeled) samples are, and drive L_SD and sample mining.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _unit_rows(rows: int, cols: int) -> torch.Tensor:
    """Orthogonal init with unit-norm rows (orthonormal rows when rows <= cols)."""
    weight = torch.empty(rows, cols)
    nn.init.orthogonal_(weight)
    return F.normalize(weight, dim=1)


class FeatureBasis(nn.Module):
    """k_b learnable basis vectors W_a [size, embedding_dim].

    Rows start orthogonal and unit-norm, so at init r_j = cos(f, w_j) for normalised f and
    the basis coordinates are decorrelated. Uses the global torch RNG: seed before building.
    """

    def __init__(self, embedding_dim: int, size: int):
        super().__init__()
        if embedding_dim < 1 or size < 1:
            raise ValueError(
                f"FeatureBasis needs embedding_dim, size >= 1, got {embedding_dim}, {size}"
            )
        self.weight = nn.Parameter(_unit_rows(size, embedding_dim))

    @property
    def size(self) -> int:
        return self.weight.shape[0]

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Basis representation r = f W_a^T, shape [B, size]."""
        return embeddings @ self.weight.to(embeddings.dtype).T

    @staticmethod
    def similarity(
        representation: torch.Tensor, center: torch.Tensor | None = None
    ) -> torch.Tensor:
        """s(i, j) = cos(r_i - c, r_j - c), [B, B], in float32 (the SD statistics need the
        precision). `center` c (e.g. the batch's mean r) removes the component every r
        shares: without it the cosines of L2-normalised embeddings crowd near 1."""
        r = representation.float()
        if center is not None:
            r = r - center.float()
        unit = F.normalize(r, dim=1)
        return unit @ unit.T


class BasisCrossEntropy(nn.Module):
    """L_CE: softmax cross-entropy of the basis logits against the labeled classes.

    - num_classes <= size: logits = scale * r[:, :num_classes], i.e. the paper's "CE of W_a f":
      basis vector j is the class-j direction (extra basis vectors are free directions that
      the CE does not use as targets; L_SD and mining still see them through s(i, j)).
    - num_classes > size (basis.size set below the number of labeled classes): basis
      vectors cannot each be a class, so a bias-free linear classifier [num_classes, size]
      reads the class out of r: logits = scale * r C^T. Its parameters must be optimised with
      the basis (they appear in `.parameters()`; none exist in the first case).
    `scale` is an inverse temperature: r starts as cosines in [-1, 1], far too flat for
    softmax over hundreds of classes.
    """

    def __init__(self, size: int, num_classes: int, scale: float = 16.0):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"BasisCrossEntropy needs num_classes >= 2, got {num_classes}")
        if scale <= 0:
            raise ValueError(f"BasisCrossEntropy scale must be > 0, got {scale}")
        self.size = size
        self.num_classes = num_classes
        self.scale = scale
        self.classifier = (
            nn.Parameter(_unit_rows(num_classes, size)) if num_classes > size else None
        )

    def logits(self, representation: torch.Tensor) -> torch.Tensor:
        if representation.shape[1] != self.size:
            raise ValueError(
                f"basis representation has {representation.shape[1]} coordinates, "
                f"BasisCrossEntropy was built for size {self.size}"
            )
        r = representation.float()
        if self.classifier is None:
            return self.scale * r[:, : self.num_classes]
        return self.scale * (r @ self.classifier.T)

    def forward(self, representation: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(device=representation.device, dtype=torch.long)
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"BasisCrossEntropy labels must lie in [0, {self.num_classes}), got "
                f"[{int(labels.min())}, {int(labels.max())}]: it classifies the labeled "
                "classes 0..C_l-1 only"
            )
        return F.cross_entropy(self.logits(representation), labels)
