"""Basis-similarity pair mining on a hand-made similarity matrix."""

from __future__ import annotations

import math

import pytest
import torch

from slade_core.config import MiningConfig, RankingLossConfig
from slade_core.losses import build_ranking_loss
from slade_core.mining import BasisPairMiner

# 4 samples, pseudo labels [0, 0, 1, 1].
SIM = torch.tensor(
    [
        [1.0, 0.9, 0.2, 0.75],
        [0.9, 1.0, 0.5, 0.1],
        [0.2, 0.5, 1.0, 0.4],
        [0.75, 0.1, 0.4, 1.0],
    ]
)
LABELS = torch.tensor([0, 0, 1, 1])


def pair_set(a, b):
    return set(zip(a.tolist(), b.tolist(), strict=True))


def both_ways(*pairs):
    return {p for i, j in pairs for p in ((i, j), (j, i))}


def mine(mu_pos=None, mu_neg=None, **cfg):
    a1, p, a2, n = BasisPairMiner(MiningConfig(**cfg)).mine(SIM, LABELS, mu_pos, mu_neg)
    assert all(x.dtype == torch.long for x in (a1, p, a2, n))
    return pair_set(a1, p), pair_set(a2, n)


def test_fixed_thresholds_without_label_agreement():
    pos, neg = mine(thresholds="fixed", t1=0.7, t2=0.3, require_label_agreement=False)
    assert pos == both_ways((0, 1), (0, 3))  # diagonal never mined
    assert neg == both_ways((0, 2), (1, 3))


def test_fixed_thresholds_with_label_agreement():
    pos, neg = mine(thresholds="fixed", t1=0.7, t2=0.3, require_label_agreement=True)
    assert pos == both_ways((0, 1))  # (0, 3) is similar but pseudo labels disagree
    assert neg == both_ways((0, 2), (1, 3))


def test_adaptive_thresholds_use_tracked_means():
    pos, neg = mine(0.45, 0.2, thresholds="adaptive", require_label_agreement=False)
    assert pos == both_ways((0, 1), (0, 3), (1, 2))
    assert neg == both_ways((0, 2), (1, 3))
    pos, neg = mine(0.45, 0.2, thresholds="adaptive", require_label_agreement=True)
    assert pos == both_ways((0, 1))
    assert neg == both_ways((0, 2), (1, 3))


def test_adaptive_needs_stats():
    miner = BasisPairMiner(MiningConfig(thresholds="adaptive"))
    with pytest.raises(ValueError, match="mu_pos"):
        miner.mine(SIM, LABELS)
    with pytest.raises(ValueError, match="fixed"):
        miner.mine(SIM, LABELS, math.nan, 0.1)


def test_contradictory_pairs_are_dropped():
    # T1 <= T2: pairs with 0.4 <= s <= 0.5 would be both positive and negative
    pos, neg = mine(0.4, 0.5, thresholds="adaptive", require_label_agreement=False)
    assert not pos & neg
    assert (1, 2) not in pos | neg and (2, 3) not in pos | neg
    assert (0, 1) in pos and (0, 2) in neg


def test_bad_shapes_are_rejected():
    miner = BasisPairMiner(MiningConfig(thresholds="fixed"))
    with pytest.raises(ValueError, match=r"\[B, B\]"):
        miner.mine(SIM[:3], LABELS)
    with pytest.raises(ValueError, match="pseudo_labels"):
        miner.mine(SIM, LABELS[:3])


def test_mined_pairs_feed_the_ranking_loss():
    miner = BasisPairMiner(MiningConfig(thresholds="fixed", t1=0.7, t2=0.3))
    pairs = miner.mine(SIM, LABELS)
    x = torch.nn.functional.normalize(torch.randn(4, 3), dim=1).requires_grad_(True)
    loss = build_ranking_loss(RankingLossConfig(name="multi_similarity"))(x, LABELS, pairs=pairs)
    loss.backward()
    assert torch.isfinite(x.grad).all()
