"""Basis-similarity pair mining on a hand-made similarity matrix."""

from __future__ import annotations

import math

import pytest
import torch

from slade_core.config import MiningConfig, RankingLossConfig
from slade_core.losses import build_ranking_loss
from slade_core.miners import BasisPairMiner, build_miner

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


def test_adaptive_thresholds_keep_the_pseudo_label_pairs_beyond_the_tracked_means():
    # T1 = mu+ = 0.45, T2 = mu- = 0.2: positive (0, 1) at 0.9 stays, (2, 3) at 0.4 goes;
    # negatives at or below 0.2 stay; (0, 3) at 0.75 is similar but its labels disagree
    pos, neg = mine(0.45, 0.2, thresholds="adaptive")
    assert pos == both_ways((0, 1))  # diagonal never mined
    assert neg == both_ways((0, 2), (1, 3))


def test_adaptive_needs_stats():
    miner = BasisPairMiner(MiningConfig(thresholds="adaptive"))
    with pytest.raises(ValueError, match="mu_pos"):
        miner.mine(SIM, LABELS)
    with pytest.raises(ValueError, match="warm-up"):
        miner.mine(SIM, LABELS, {"mu_pos": math.nan, "mu_neg": 0.1})


def test_a_pair_is_positive_or_negative_by_its_labels_whatever_the_thresholds():
    # T1 <= T2 (0.4 <= s <= 0.5 passes both): the labels still decide the side
    pos, neg = mine(0.4, 0.5, thresholds="adaptive")
    assert pos == both_ways((0, 1), (2, 3))
    assert neg == both_ways((0, 2), (1, 2), (1, 3))  # (0, 3) at 0.75 is above T2


def test_bad_shapes_are_rejected():
    miner = BasisPairMiner(MiningConfig())
    with pytest.raises(ValueError, match=r"\[B, B\]"):
        miner.mine(SIM[:3], LABELS)
    with pytest.raises(ValueError, match="pseudo_labels"):
        miner.mine(SIM, LABELS[:3])


def test_mined_pairs_feed_the_ranking_loss():
    pairs = BasisPairMiner(MiningConfig()).mine(SIM, LABELS, {"mu_pos": 0.8, "mu_neg": 0.3})
    x = torch.nn.functional.normalize(torch.randn(4, 3), dim=1).requires_grad_(True)
    loss = build_ranking_loss(RankingLossConfig(name="multi_similarity"))(x, LABELS, pairs=pairs)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_crossed_thresholds_only_veto_pairs_beyond_the_other_sides_mean():
    # T1 = mu- = 0.3, T2 = mu+ = 0.8; with agreement: positives (0,1) 0.9 and (2,3) 0.4 stay,
    # negatives above 0.8 would go (none here), all four negatives stay
    pos, neg = mine(0.8, 0.3, thresholds="crossed")
    assert pos == both_ways((0, 1), (2, 3))
    assert neg == both_ways((0, 2), (0, 3), (1, 2), (1, 3))
    pos, _ = mine(0.8, 0.45, thresholds="crossed")
    assert pos == both_ways((0, 1))  # (2, 3) at 0.4 is less alike than an average negative


@pytest.mark.parametrize(
    ("option", "message"),
    [({"thresholds": "boundary"}, "'boundary' and 'fixed' thresholds were removed; 'crossed'"),
     ({"thresholds": "fixed"}, r"is not one of \('adaptive', 'crossed'\)"),
     ({"t1": 0.7}, "t1 was removed: .*tracked means"),
     ({"require_label_agreement": False}, "require_label_agreement was removed: .*equal pseudo")],
)  # fmt: skip
def test_removed_mining_options_say_what_replaced_them(option, message):
    with pytest.raises(ValueError, match=message):
        MiningConfig(**option)


def test_a_miner_is_built_by_its_name_and_an_unknown_name_is_refused():
    assert isinstance(build_miner(MiningConfig()), BasisPairMiner)
    unknown = MiningConfig.model_construct(name="hard_pairs", thresholds="crossed")
    with pytest.raises(
        ValueError, match="unknown miner 'hard_pairs'; registered: \\['basis_pairs'\\]"
    ):
        build_miner(unknown)
