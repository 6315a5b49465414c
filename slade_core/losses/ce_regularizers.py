"""Cross-entropy alternatives to L_SD on the basis similarities (poster ablation 3).

The poster names them "Local-CE" and "Global-CE" without defining them; these are our
readings, chosen so all three regularisers are losses on the same pairwise similarities
s(i, j) with the same call `forward(similarity [B, B], labels [B]) -> scalar`:
- local_ce: each anchor's similarities to the rest of the batch are a softmax distribution
  (temperature tau) whose target mass is spread over its same-label samples; only the local
  batch context decides what "similar" means.
- global_ce: each pair is classified on its own as same / different label by a binary CE
  on (s(i, j) - c) / tau, where the boundary c is the midpoint of the momentum-tracked
  global means mu+ and mu- (constants for the gradient); positive and negative pairs are
  weighted equally since positives are few in a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slade_core.losses.similarity_distribution import SimilarityMoments
from slade_core.pairs import upper_pair_masks


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


class LocalSimilarityCE(nn.Module):
    """Softmax CE over each anchor's in-batch similarities; targets are its same-label peers.

    loss_i = -mean_{j in P(i)} log softmax_{k != i}(s(i, k) / tau)[j], averaged over anchors
    that have at least one positive; 0 (attached) when no anchor has one.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature

    def forward(self, similarity: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim = similarity.float()
        size = len(sim)
        pos, _ = upper_pair_masks(labels.to(sim.device), size)
        pos = pos | pos.T
        eye = torch.eye(size, dtype=torch.bool, device=sim.device)
        log_prob = F.log_softmax((sim / self.temperature).masked_fill(eye, float("-inf")), dim=1)
        log_prob = log_prob.masked_fill(eye, 0.0)  # -inf * 0 would give NaN below
        n_pos = pos.sum(dim=1)
        anchors = n_pos > 0
        if not bool(anchors.any()):
            return sim.sum() * 0.0
        per_anchor = -(log_prob * pos).sum(dim=1)[anchors] / n_pos[anchors]
        return per_anchor.mean()


class GlobalSimilarityCE(nn.Module):
    """Per-pair binary CE against a global boundary c = (mu+ + mu-) / 2 (tracked with momentum).

    Before both means have been seen, c = 0 (the middle of the cosine range).
    """

    def __init__(self, momentum: float = 0.99, temperature: float = 0.1):
        super().__init__()
        _check_temperature(temperature)
        self.temperature = temperature
        self.moments = SimilarityMoments(momentum)

    def forward(self, similarity: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        sim = similarity.float()
        m = self.moments(sim.detach(), labels)
        boundary = 0.0
        if m.mu_pos is not None and m.mu_neg is not None:
            boundary = float(m.mu_pos + m.mu_neg) / 2.0
        logits = (sim - boundary) / self.temperature
        pos, neg = upper_pair_masks(labels.to(sim.device), len(sim))
        loss = sim.sum() * 0.0
        halves = [(pos, 1.0), (neg, 0.0)]
        present = [(mask, target) for mask, target in halves if bool(mask.any())]
        for mask, target in present:
            x = logits[mask]
            loss = loss + F.binary_cross_entropy_with_logits(x, torch.full_like(x, target))
        return loss / max(len(present), 1)

    def stats(self) -> dict[str, float]:
        return self.moments.stats()
