"""Losses on tiny hand-computed cases: values, gradients, degenerate batches, momentum stats."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slade_core.config import BasisConfig, RankingLossConfig
from slade_core.losses import (
    BasisCrossEntropy,
    FeatureBasis,
    GlobalSimilarityCE,
    LocalSimilarityCE,
    SimilarityDistributionLoss,
    SimilarityMoments,
    build_basis_regularizer,
    build_ranking_loss,
)

SQRT2 = math.sqrt(2.0)
# Four unit vectors on the axes; labels pair the neighbours (0, 1) and (2, 3).
SQUARE = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
SQUARE_LABELS = torch.tensor([0, 0, 1, 1])


def contrastive(pos_margin=0.0, neg_margin=1.5):
    cfg = RankingLossConfig(name="contrastive", pos_margin=pos_margin, neg_margin=neg_margin)
    return build_ranking_loss(cfg)


def leaf(x):
    return x.clone().requires_grad_(True)


def assert_finite_grad(loss, x):
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --- ranking ----------------------------------------------------------------------------


def test_contrastive_matches_hand_computation():
    # positives (0,1), (2,3) at d = sqrt2 -> mean sqrt2; negatives at d = 2 (zero loss) and
    # d = sqrt2 -> 1.5 - sqrt2; PML averages the non-zero ones -> total 1.5.
    assert contrastive()(SQUARE, SQUARE_LABELS).item() == pytest.approx(1.5, abs=1e-5)
    # with m_pos = 0.5 the positive part is sqrt2 - 0.5
    loss = contrastive(pos_margin=0.5)(SQUARE, SQUARE_LABELS)
    assert loss.item() == pytest.approx(1.0, abs=1e-5)


def test_contrastive_with_mined_pairs_uses_only_those_pairs():
    pairs = (torch.tensor([0]), torch.tensor([1]), torch.tensor([0, 2]), torch.tensor([3, 0]))
    loss = contrastive()(SQUARE, None, pairs=pairs)
    # pos (0,1): sqrt2 ; neg (0,3): 1.5 - sqrt2, (2,0): d = 2 -> 0 and dropped
    assert loss.item() == pytest.approx(1.5, abs=1e-5)


def test_single_mined_pair_is_not_dropped():
    empty = torch.tensor([], dtype=torch.long)
    pairs = (torch.tensor([0]), torch.tensor([1]), empty, empty)
    assert contrastive()(SQUARE, None, pairs=pairs).item() == pytest.approx(SQRT2, abs=1e-5)


def test_empty_pairs_give_attached_zero():
    x = leaf(SQUARE)
    empty = torch.tensor([], dtype=torch.long)
    loss = contrastive()(x, None, pairs=(empty, empty, empty, empty))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    assert_finite_grad(loss, x)


def test_bad_pairs_are_rejected():
    with pytest.raises(ValueError, match="a1/p"):
        contrastive()(
            SQUARE, None, pairs=(torch.tensor([0]), torch.tensor([]), *[torch.tensor([])] * 2)
        )
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        contrastive()(
            SQUARE, None, pairs=(torch.tensor([0]), torch.tensor([7]), *[torch.tensor([])] * 2)
        )
    with pytest.raises(ValueError, match="labels, pairs"):
        contrastive()(SQUARE)


def ms_reference(x, labels, alpha, beta, base):
    s = x @ x.T
    total = 0.0
    for i in range(len(x)):
        pos = [s[i, j] for j in range(len(x)) if j != i and labels[i] == labels[j]]
        neg = [s[i, j] for j in range(len(x)) if labels[i] != labels[j]]
        total += math.log1p(sum(math.exp(-alpha * (v - base)) for v in pos)) / alpha if pos else 0
        total += math.log1p(sum(math.exp(beta * (v - base)) for v in neg)) / beta if neg else 0
    return total / len(x)


def test_multi_similarity_matches_formula():
    angles = np.array([0.0, 0.4, 1.9, 2.3, 3.0])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = [0, 0, 1, 1, 1]
    cfg = RankingLossConfig(name="multi_similarity", ms_alpha=2.0, ms_beta=10.0, ms_base=0.5)
    got = build_ranking_loss(cfg)(torch.tensor(x, dtype=torch.float32), torch.tensor(labels))
    assert got.item() == pytest.approx(ms_reference(x, labels, 2.0, 10.0, 0.5), rel=1e-5)


DEGENERATE_LABELS = {
    "all_same": [0] * 6,
    "all_different": list(range(6)),
    "duplicates": [0, 0, 1, 1, 2, 2],  # duplicated embeddings are positives (d = 0)
    "dup_negatives": [0, 1, 2, 0, 1, 2],  # duplicated embeddings are negatives (d = 0)
}


@pytest.mark.parametrize("name", ["contrastive", "multi_similarity"])
@pytest.mark.parametrize("case", ["all_same", "all_different", "duplicates", "dup_negatives"])
def test_ranking_gradients_finite_on_degenerate_batches(name, case):
    torch.manual_seed(0)
    raw = torch.randn(6, 8)
    labels = DEGENERATE_LABELS[case]
    if case in ("duplicates", "dup_negatives"):
        raw = raw[[0, 0, 1, 1, 2, 2]]
    x = leaf(raw)
    loss = build_ranking_loss(RankingLossConfig(name=name))(F.normalize(x), torch.tensor(labels))
    assert torch.isfinite(loss)
    assert_finite_grad(loss, x)


# --- basis ------------------------------------------------------------------------------


def test_feature_basis_init_and_similarity():
    torch.manual_seed(0)
    basis = FeatureBasis(embedding_dim=8, size=4)
    w = basis.weight.detach()
    assert w.shape == (4, 8) and basis.size == 4
    torch.testing.assert_close(w @ w.T, torch.eye(4), atol=1e-5, rtol=0)
    wide = FeatureBasis(embedding_dim=3, size=6).weight.detach()
    torch.testing.assert_close(wide.norm(dim=1), torch.ones(6))

    with torch.no_grad():
        basis.weight.copy_(torch.eye(4, 8))
    f = torch.zeros(3, 8)
    f[0, 0], f[1, 0], f[1, 1], f[2, 2] = 1.0, 3.0, 4.0, -2.0
    r = basis(f)
    torch.testing.assert_close(r, f[:, :4])
    s = basis.similarity(r)
    expected = torch.tensor([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(s, expected)


def test_basis_cross_entropy_direct_mode_is_ce_of_scaled_coordinates():
    ce = BasisCrossEntropy(size=4, num_classes=3, scale=2.0)
    assert list(ce.parameters()) == []
    r = torch.tensor([[0.5, -0.5, 0.0, 9.0], [0.1, 0.2, 0.3, -9.0]])
    labels = torch.tensor([0, 2])
    logits = 2.0 * r.numpy()[:, :3]
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -(logp[0, 0] + logp[1, 2]) / 2
    assert ce(r, labels).item() == pytest.approx(expected, rel=1e-6)


def test_basis_cross_entropy_uses_a_classifier_when_labels_exceed_basis():
    torch.manual_seed(0)
    ce = BasisCrossEntropy(size=2, num_classes=5)
    assert [p.shape for p in ce.parameters()] == [torch.Size([5, 2])]
    r = leaf(torch.randn(4, 2))
    loss = ce(r, torch.tensor([0, 4, 3, 1]))
    assert_finite_grad(loss, r)
    assert ce.classifier.grad is not None


def test_basis_cross_entropy_rejects_out_of_range_labels():
    ce = BasisCrossEntropy(size=4, num_classes=3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ce(torch.zeros(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="size 4"):
        ce(torch.zeros(2, 5), torch.tensor([0, 1]))


# --- similarity distribution ------------------------------------------------------------

# Symmetric similarities for labels [0, 0, 1, 1]: positives 0.8, 0.6; negatives 0.1..0.4.
SIM = torch.tensor(
    [[1.0, 0.8, 0.1, 0.2], [0.8, 1.0, 0.3, 0.4], [0.1, 0.3, 1.0, 0.6], [0.2, 0.4, 0.6, 1.0]]
)


def test_sd_first_batch_initialises_and_loss_is_hand_value():
    sd = SimilarityDistributionLoss(momentum=0.99, margin=0.5, lam=2.0)
    assert all(math.isnan(v) for v in sd.stats().values())
    loss = sd(SIM, SQUARE_LABELS)
    # mu+ 0.7 var+ 0.01 ; mu- 0.25 var- 0.0125 ; hinge 0.25 - 0.7 + 0.5 = 0.05
    assert loss.item() == pytest.approx(0.01 + 0.0125 + 2.0 * 0.05, abs=1e-6)
    stats = sd.stats()
    assert stats["mu_pos"] == pytest.approx(0.7) and stats["mu_neg"] == pytest.approx(0.25)
    assert stats["sigma_pos"] == pytest.approx(0.1)
    assert stats["sigma_neg"] == pytest.approx(math.sqrt(0.0125))


def test_sd_later_batches_blend_with_momentum():
    sd = SimilarityDistributionLoss(momentum=0.99, margin=0.5, lam=1.0)
    sd(SIM, SQUARE_LABELS)
    second = SIM.clone()
    second[0, 1] = second[1, 0] = 0.2  # positives 0.2, 0.6 -> mu 0.4, var 0.04
    loss = sd(second, SQUARE_LABELS)
    mu_pos = 0.01 * 0.4 + 0.99 * 0.7
    var_pos = 0.01 * 0.04 + 0.99 * 0.01
    stats = sd.stats()
    assert stats["mu_pos"] == pytest.approx(mu_pos, abs=1e-7)
    assert stats["sigma_pos"] == pytest.approx(math.sqrt(var_pos), abs=1e-7)
    assert stats["mu_neg"] == pytest.approx(0.25, abs=1e-7)  # same negatives both times
    expected = var_pos + 0.0125 + max(0.25 - mu_pos + 0.5, 0.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_sd_gradient_is_that_of_batch_statistics():
    sd = SimilarityDistributionLoss(momentum=0.99, margin=0.5, lam=1.0)
    sd(SIM, SQUARE_LABELS)
    s = leaf(SIM)
    sd(s, SQUARE_LABELS).backward()
    # d/ds of var_b+ + var_b- + (mu_b- - mu_b+): positives 2(s - mu)/n_pair - 1/n_pair ...
    pos_grad = 2 * (0.8 - 0.7) / 2 - 1 / 2
    neg_grad = 2 * (0.1 - 0.25) / 4 + 1 / 4
    assert s.grad[0, 1].item() == pytest.approx(pos_grad, abs=1e-6)
    assert s.grad[0, 2].item() == pytest.approx(neg_grad, abs=1e-6)
    assert s.grad[1, 0].item() == 0.0  # each unordered pair counted once (upper triangle)


def test_sd_loss_falls_as_positives_separate_from_negatives():
    def fresh_loss(gap):
        sim = torch.full((4, 4), 0.3)
        sim[0, 1] = sim[1, 0] = sim[2, 3] = sim[3, 2] = 0.3 + gap
        return SimilarityDistributionLoss(margin=0.5)(sim, SQUARE_LABELS).item()

    losses = [fresh_loss(gap) for gap in (0.0, 0.2, 0.4, 0.6)]
    assert losses == sorted(losses, reverse=True) and losses[-1] == pytest.approx(0.0)


def test_sd_degenerate_batches_have_finite_gradients():
    for labels in ([0, 0, 0, 0], [0, 1, 2, 3]):
        sd = SimilarityDistributionLoss()
        s = leaf(SIM)
        loss = sd(s, torch.tensor(labels))
        assert loss.grad_fn is not None
        assert_finite_grad(loss, s)
    stats = sd.stats()
    assert math.isnan(stats["mu_pos"]) and stats["mu_neg"] == pytest.approx(
        SIM[torch.triu(torch.ones(4, 4, dtype=torch.bool), 1)].mean().item()
    )
    # duplicated embeddings through the basis: identical rows, cos = 1 everywhere
    torch.manual_seed(0)
    basis = FeatureBasis(4, 3)
    f = leaf(F.normalize(torch.randn(1, 4)).repeat(4, 1))
    loss = SimilarityDistributionLoss()(basis.similarity(basis(f)), SQUARE_LABELS)
    assert_finite_grad(loss, f)


def test_moments_do_not_update_in_eval_and_survive_state_dict():
    moments = SimilarityMoments(0.9)
    moments(SIM, SQUARE_LABELS)
    before = moments.stats()
    moments.eval()
    moments(torch.zeros(4, 4), SQUARE_LABELS)
    assert moments.stats() == before
    restored = SimilarityMoments(0.9)
    restored.load_state_dict(moments.state_dict())
    assert restored.stats() == before


# --- CE alternatives ---------------------------------------------------------------------


def test_local_ce_matches_hand_softmax():
    sim = torch.tensor([[1.0, 0.5, 0.1], [0.5, 1.0, -0.2], [0.1, -0.2, 1.0]])
    loss = LocalSimilarityCE(temperature=0.5)(sim, torch.tensor([0, 0, 1]))
    a0 = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(0.2)))
    a1 = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(-0.4)))
    assert loss.item() == pytest.approx((a0 + a1) / 2, rel=1e-6)  # anchor 2 has no positive


def test_global_ce_matches_hand_bce():
    reg = GlobalSimilarityCE(momentum=0.99, temperature=0.5)
    loss = reg(SIM, SQUARE_LABELS)
    c = (0.7 + 0.25) / 2  # first batch initialises the tracked means

    def bce(x, t):
        return math.log1p(math.exp(-x)) if t else math.log1p(math.exp(x))

    pos = np.mean([bce((v - c) / 0.5, 1) for v in (0.8, 0.6)])
    neg = np.mean([bce((v - c) / 0.5, 0) for v in (0.1, 0.2, 0.3, 0.4)])
    assert loss.item() == pytest.approx((pos + neg) / 2, rel=1e-6)
    assert reg.stats()["mu_pos"] == pytest.approx(0.7)


@pytest.mark.parametrize("reg", [LocalSimilarityCE(), GlobalSimilarityCE()])
def test_ce_regularizers_degenerate_batches(reg):
    for labels in ([0, 0, 0, 0], [0, 1, 2, 3]):
        s = leaf(SIM)
        loss = reg(s, torch.tensor(labels))
        assert torch.isfinite(loss) and loss.grad_fn is not None
        assert_finite_grad(loss, s)


# --- builders -----------------------------------------------------------------------------


def test_build_basis_regularizer_from_config():
    labels = torch.tensor([0, 0, 1, 1])  # SIM: mu+ 0.7 var+ 0.01; mu- 0.25 var- 0.0125
    sd = build_basis_regularizer(
        BasisConfig(regularizer="sd", momentum=0.9, sd_margin=0.5, sd_lambda=3.0)
    )
    # hinge 0.25 - 0.7 + 0.5 = 0.05, weighted by sd_lambda
    assert sd(SIM, labels).item() == pytest.approx(0.01 + 0.0125 + 3.0 * 0.05, abs=1e-6)
    sd(SIM * 0.5, labels)  # mu+ of this batch 0.35, blended with momentum 0.9
    assert sd.stats()["mu_pos"] == pytest.approx(0.9 * 0.7 + 0.1 * 0.35)
    glob = build_basis_regularizer(BasisConfig(regularizer="global_ce", momentum=0.5))
    glob(SIM, labels)
    glob(SIM * 0.5, labels)
    assert glob.stats()["mu_pos"] == pytest.approx(0.5 * 0.7 + 0.5 * 0.35)
    local = build_basis_regularizer(BasisConfig(regularizer="local_ce"))
    assert local(SIM, labels).item() == pytest.approx(LocalSimilarityCE()(SIM, labels).item())
    assert local(SIM, labels).item() != pytest.approx(glob(SIM, labels).item())
    assert build_basis_regularizer(BasisConfig(regularizer="none")) is None
    with pytest.raises(ValueError, match="unknown basis regularizer 'l2'"):
        build_basis_regularizer(BasisConfig.model_construct(regularizer="l2"))


def test_build_ranking_loss_from_config():
    ms = build_ranking_loss(
        RankingLossConfig(name="multi_similarity", ms_alpha=3.0, ms_beta=40.0, ms_base=0.6)
    )
    assert (ms.loss.alpha, ms.loss.beta, ms.loss.base) == (3.0, 40.0, 0.6)
    c = build_ranking_loss(RankingLossConfig(pos_margin=0.1, neg_margin=0.4))
    assert (c.loss.pos_margin, c.loss.neg_margin) == (0.1, 0.4)
