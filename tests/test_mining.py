"""Basis-similarity pair mining on a hand-made similarity matrix."""

from __future__ import annotations

import math

import pytest
import torch

from slade_core.config import MiningConfig, RankingLossConfig
from slade_core.losses import build_ranking_loss
from slade_core.miners import MINERS, BasisPairMiner, build_miner, decision_boundary

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
    moments = None if mu_pos is None else {"mu_pos": mu_pos, "mu_neg": mu_neg}
    a1, p, a2, n = BasisPairMiner(MiningConfig(**cfg)).mine(SIM, LABELS, moments)
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
        miner.mine(SIM, LABELS, {"mu_pos": math.nan, "mu_neg": 0.1})


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


def test_crossed_thresholds_only_veto_pairs_beyond_the_other_sides_mean():
    # T1 = mu- = 0.3, T2 = mu+ = 0.8; with agreement: positives (0,1) 0.9 and (2,3) 0.4 stay,
    # negatives above 0.8 would go (none here), all four negatives stay
    pos, neg = mine(0.8, 0.3, thresholds="crossed", require_label_agreement=True)
    assert pos == both_ways((0, 1), (2, 3))
    assert neg == both_ways((0, 2), (0, 3), (1, 2), (1, 3))
    pos, _ = mine(0.8, 0.45, thresholds="crossed", require_label_agreement=True)
    assert pos == both_ways((0, 1))  # (2, 3) at 0.4 is less alike than an average negative


def test_boundary_thresholds_split_every_pair_at_one_point():
    moments = {"mu_pos": 0.9, "sigma_pos": 0.1, "mu_neg": 0.2, "sigma_neg": 0.1}
    miner = BasisPairMiner(MiningConfig(thresholds="boundary", require_label_agreement=False))
    assert miner.thresholds(moments) == pytest.approx((0.55, 0.55))
    a1, p, a2, n = miner.mine(SIM, LABELS, moments)
    pos, neg = pair_set(a1, p), pair_set(a2, n)
    assert pos == both_ways((0, 1), (0, 3))  # no agreement: the basis decides alone
    assert neg == both_ways((0, 2), (1, 2), (1, 3), (2, 3))  # every other pair
    with pytest.raises(ValueError, match="sigma_pos"):
        miner.mine(SIM, LABELS, {"mu_pos": 0.8, "mu_neg": 0.2})


def test_decision_boundary_is_where_the_densities_meet():
    assert decision_boundary(0.8, 0.1, 0.2, 0.1) == pytest.approx(0.5)
    s = decision_boundary(0.9, 0.05, 0.5, 0.2)  # a narrow positive side pulls it up
    assert 0.7 < s < 0.9

    def density(x, mu, sigma):
        return math.exp(-((x - mu) ** 2) / (2 * sigma**2)) / sigma

    assert density(s, 0.9, 0.05) == pytest.approx(density(s, 0.5, 0.2), rel=1e-6)
    assert decision_boundary(0.3, 0.1, 0.5, 0.1) == pytest.approx(0.4)  # wrong order: midpoint


def test_miners_are_registered_by_name():
    assert isinstance(build_miner(MiningConfig()), BasisPairMiner)
    assert set(MINERS) == {"basis_pairs"}
