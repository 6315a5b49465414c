"""The SLADE objective on hand-made batches: what L_CE classifies, what each term's gradient
is, and the pair diagnostics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slade_core.config import RankingLossConfig, StudentConfig
from slade_core.losses import SladeLoss

# 4 labeled rows (classes 0, 1) then 4 pseudo-labeled rows (clusters 0, 1 -> ids 2, 3).
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def _config(**update) -> StudentConfig:
    cfg = StudentConfig(
        labeled_batch_size=4,
        unlabeled_batch_size=4,
        m_per_class=2,
        loss=RankingLossConfig(name="multi_similarity"),  # every pair carries a gradient
    )
    return cfg.model_copy(update=update)


def _embeddings(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return F.normalize(torch.randn(8, 8), dim=-1).requires_grad_(True)


def _objective(cfg: StudentConfig) -> SladeLoss:
    torch.manual_seed(1)
    return SladeLoss(cfg, embedding_dim=8, num_classes=2)


def test_labeled_ce_classifies_the_labeled_half_with_the_basis_rows_as_class_weights():
    objective = _objective(_config(use_mining=False))
    assert objective.basis.size == 2  # one basis vector per labeled class
    assert objective.ce.classifier is None and objective.ce.num_classes == 2
    x = _embeddings()
    _, metrics = objective(x, LABELS, split=4, warmup=False)
    logits = objective.ce.scale * objective.basis(x[:4]).float()
    expected = F.cross_entropy(logits, LABELS[:4])
    assert float(metrics["loss_ce"]) == pytest.approx(float(expected))
    other = LABELS.clone()
    other[4:] = torch.tensor([3, 2, 2, 3])  # other pseudo labels: L_CE does not see them
    _, again = _objective(_config(use_mining=False))(x, other, split=4, warmup=False)
    assert float(again["loss_ce"]) == pytest.approx(float(metrics["loss_ce"]))


def test_each_term_and_each_unlabeled_side_reports_its_gradient():
    cfg = _config(use_mining=False)
    objective = _objective(cfg)
    x = _embeddings()
    loss, metrics = objective(x, LABELS, split=4, warmup=False)
    assert loss.requires_grad
    for term in ("rank", "rank_unlabeled", "ce", "reg"):
        assert float(metrics[f"grad_{term}"]) > 0, term
    assert float(metrics["grad_rank_unlabeled_pos"]) > 0
    assert float(metrics["grad_rank_unlabeled_neg"]) > 0
    _, zero = _objective(cfg.model_copy(update={"lambda1": 0.0}))(x, LABELS, 4, False)
    assert float(zero["grad_rank_unlabeled"]) == 0
    assert float(zero["grad_rank_unlabeled_pos"]) == 0


def test_pair_precision_against_hidden_classes():
    objective = _objective(_config(use_mining=False))
    # hidden classes of the 4 pseudo-labeled rows: the first cluster is right, the second
    # mixes two classes; -1 (unknown) rows are left out
    hidden = torch.tensor([5, 5, 6, 7])
    _, metrics = objective(_embeddings(), LABELS, split=4, warmup=False, hidden=hidden)
    assert metrics["pseudo_pos_precision"] == pytest.approx(0.5)  # 2 of 4 ordered pairs
    assert metrics["pseudo_neg_precision"] == pytest.approx(1.0)
    assert metrics["mined_pos_precision"] == pytest.approx(0.5)  # no mining: every pair
    _, unknown = objective(
        _embeddings(), LABELS, split=4, warmup=False, hidden=torch.tensor([-1, -1, 6, 7])
    )
    assert unknown["pseudo_pos_precision"] == pytest.approx(0.0)
    _, none = objective(_embeddings(), LABELS, 4, False, hidden=torch.full((4,), -1))
    assert math.isnan(none["pseudo_pos_precision"])


def test_warmup_end_records_tracked_against_recent_batch_means():
    objective = _objective(_config())
    x = _embeddings()
    for _ in range(3):
        _, metrics = objective(x, LABELS, split=4, warmup=True)
        assert math.isfinite(metrics["batch_mu_pos"])
    assert objective.warmup_end == {}
    objective(x, LABELS, split=4, warmup=False)
    end = objective.warmup_end
    # the same batch three times: the tracked means equal the batch means
    assert end["tracked_mu_pos"] == pytest.approx(end["last_50_batches_mu_pos"], abs=1e-5)
    assert end["tracked_mu_neg"] == pytest.approx(end["last_50_batches_mu_neg"], abs=1e-5)


def test_restart_moments_lets_the_first_joint_batch_set_the_thresholds():
    cfg = _config()
    cfg.basis.restart_moments = True
    objective = _objective(cfg)
    for seed in range(3):  # warm-up batches unlike the joint one
        objective(_embeddings(seed + 10), LABELS, split=4, warmup=True)
    _, metrics = objective(_embeddings(), LABELS, split=4, warmup=False)
    stats = objective.stats()
    assert stats["mu_pos"] == pytest.approx(metrics["batch_mu_pos"], abs=1e-5)
    assert stats["mu_neg"] == pytest.approx(metrics["batch_mu_neg"], abs=1e-5)
    assert objective.warmup_end["tracked_mu_pos"] != pytest.approx(stats["mu_pos"], abs=1e-5)
