"""L_SD: the similarity-distribution loss, and the global pair-similarity moments it tracks.

Positive pairs (same pseudo label) and negative pairs (different) of basis similarities are
modelled as Gaussians G+(mu+, sigma+^2), G-(mu-, sigma-^2), tracked over training with
momentum: `m <- (1 - beta) * m_batch + beta * m` (the first batch initialises `m`).
The loss is the "global loss" form (Kumar et al., CVPR 2016):
    L_SD = (sigma+^2 + sigma-^2) + lam * [mu- - mu+ + margin]_+
evaluated on the tracked estimates.

Gradient choice (ours): each estimate is used straight-through: its value is the
momentum-blended global estimate, its gradient that of the current batch statistic. Attaching
only the (1 - beta) batch share would scale L_SD's gradient by 0.01 at beta = 0.99, making the
loss weight meaningless; the blended value still decides when the hinge is active.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from slade_core.pairs import upper_pair_masks


class PairMoments(NamedTuple):
    """Mean and (population) variance of positive and negative pair similarities.

    A field is None when no such pair has been seen (neither in this batch nor before).
    """

    mu_pos: torch.Tensor | None
    var_pos: torch.Tensor | None
    mu_neg: torch.Tensor | None
    var_neg: torch.Tensor | None


def pair_similarities(
    similarity: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The similarities of the batch's positive and of its negative pairs, each unordered
    pair once: the samples of G+ and G- (their means are the batch's mu+ and mu-)."""
    _check_square(similarity)
    pos, neg = upper_pair_masks(labels.to(similarity.device), len(similarity))
    return similarity[pos], similarity[neg]


def _check_square(similarity: torch.Tensor) -> None:
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError(
            f"similarity must be a square [B, B] matrix, got {tuple(similarity.shape)}"
        )


class SimilarityMoments(nn.Module):
    """Momentum-tracked mu+/sigma+^2, mu-/sigma-^2 of pair similarities (buffers, so they
    travel in state_dict for resumable training).

    Call it on each batch: it returns the straight-through estimates (see module doc) and,
    in training mode, folds the batch into the buffers. In eval mode buffers stay fixed.
    Use one instance standalone to feed adaptive mining thresholds when L_SD is off.
    """

    def __init__(self, momentum: float = 0.99):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        for name in ("mu_pos", "var_pos", "mu_neg", "var_neg"):
            self.register_buffer(name, torch.zeros(()))
        self.register_buffer("seen_pos", torch.zeros((), dtype=torch.bool))
        self.register_buffer("seen_neg", torch.zeros((), dtype=torch.bool))

    def _track(self, values: torch.Tensor, kind: str) -> tuple[torch.Tensor | None, ...]:
        mu_buf, var_buf = getattr(self, f"mu_{kind}"), getattr(self, f"var_{kind}")
        seen = bool(getattr(self, f"seen_{kind}"))
        if values.numel() == 0:
            return (mu_buf.clone(), var_buf.clone()) if seen else (None, None)
        mu_b = values.mean()
        var_b = (values - mu_b).pow(2).mean()
        out = []
        for batch, buf in ((mu_b, mu_buf), (var_b, var_buf)):
            blended = batch.detach()
            if seen:
                blended = (1.0 - self.momentum) * blended + self.momentum * buf
            if self.training:
                buf.copy_(blended)
            out.append(batch + (blended - batch).detach())
        if self.training:
            getattr(self, f"seen_{kind}").fill_(True)
        return tuple(out)

    def forward(self, similarity: torch.Tensor, labels: torch.Tensor) -> PairMoments:
        pos, neg = pair_similarities(similarity.float(), labels)
        mu_pos, var_pos = self._track(pos, "pos")
        mu_neg, var_neg = self._track(neg, "neg")
        return PairMoments(mu_pos, var_pos, mu_neg, var_neg)

    def restart(self) -> None:
        """Forget the tracked values: the next batch initialises them again."""
        self.seen_pos.fill_(False)
        self.seen_neg.fill_(False)

    def stats(self) -> dict[str, float]:
        """Tracked mu/sigma as floats; NaN for a side not seen yet."""
        out = {}
        for kind in ("pos", "neg"):
            seen = bool(getattr(self, f"seen_{kind}"))
            mu, var = getattr(self, f"mu_{kind}"), getattr(self, f"var_{kind}")
            out[f"mu_{kind}"] = float(mu) if seen else math.nan
            out[f"sigma_{kind}"] = math.sqrt(max(float(var), 0.0)) if seen else math.nan
        return out


class SimilarityDistributionLoss(nn.Module):
    """L_SD on a [B, B] basis-similarity matrix and the batch's (pseudo) labels.

    Missing pair kinds: a side with no pairs in this batch contributes no gradient (its
    tracked values, if any, are constants); the hinge needs both means and is 0 before both
    sides have been seen. The result always has a grad_fn when `similarity` does.
    """

    def __init__(self, momentum: float = 0.99, margin: float = 0.1, lam: float = 1.0):
        super().__init__()
        if lam < 0:
            raise ValueError(f"SD lam must be >= 0, got {lam}")
        self.margin = margin
        self.lam = lam
        self.moments = SimilarityMoments(momentum)

    def forward(self, similarity: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.moments(similarity, labels)
        loss = similarity.float().sum() * 0.0
        for var in (m.var_pos, m.var_neg):
            if var is not None:
                loss = loss + var
        if m.mu_pos is not None and m.mu_neg is not None:
            loss = loss + self.lam * torch.relu(m.mu_neg - m.mu_pos + self.margin)
        return loss

    def stats(self) -> dict[str, float]:
        """{"mu_pos", "mu_neg", "sigma_pos", "sigma_neg"} of the tracked distributions."""
        return self.moments.stats()
