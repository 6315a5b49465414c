import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from slade_core import metrics
from slade_core.metrics import nearest_neighbors, retrieval_metrics

PML_NAMES = {
    "map_at_r": "mean_average_precision_at_r",
    "r_precision": "r_precision",
    "precision_at_1": "precision_at_1",
}


def pml(query, query_labels, reference=None, reference_labels=None):
    calc = AccuracyCalculator(
        include=tuple(PML_NAMES.values()), k="max_bin_count", device=torch.device("cpu")
    )
    out = calc.get_accuracy(query, query_labels, reference, reference_labels)
    return {name: out[pml_name] for name, pml_name in PML_NAMES.items()}


def clustered(rng, n, dim, classes, lone):
    """Noisy class clusters (continuous values: no tied distances) plus `lone` unique labels."""
    labels = rng.integers(0, classes, n)
    labels[:lone] = classes + np.arange(lone)
    x = rng.standard_normal((classes + lone, dim))[labels] + 1.5 * rng.standard_normal((n, dim))
    return x.astype(np.float32), labels


@pytest.mark.parametrize(
    ("n", "dim", "classes", "lone"),
    [
        (40, 4, 5, 2),
        (300, 16, 30, 5),
        (1500, 32, 60, 10),
        (2000, 8, 4, 0),
        (5000, 8, 400, 3),
        (4110, 16, 300, 60),
    ],
)
def test_self_retrieval_matches_pml(n, dim, classes, lone):
    """Same FAISS distances and order as PML, so equal up to float64 summation order."""
    x, y = clustered(np.random.default_rng(n), n, dim, classes, lone)
    rng = np.random.default_rng(1)
    y = rng.permutation(y)  # lone queries spread over all query blocks
    ours = retrieval_metrics(x, y)
    for name, value in pml(x, y).items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name


@pytest.mark.parametrize(
    ("n_query", "n_ref", "classes"), [(30, 50, 6), (400, 900, 50), (1500, 2000, 40)]
)
def test_query_vs_reference_matches_pml(n_query, n_ref, classes):
    rng = np.random.default_rng(n_query)
    x, y = clustered(rng, n_query + n_ref, 12, classes, 0)
    y[:3] = -5  # lone queries: their label never occurs among the references
    query, q_labels, ref, r_labels = x[:n_query], y[:n_query], x[n_query:], y[n_query:]
    ours = retrieval_metrics(query, q_labels, ref, r_labels)
    for name, value in pml(query, q_labels, ref, r_labels).items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name


def test_label_and_array_types_do_not_change_results():
    x, y = clustered(np.random.default_rng(0), 500, 8, 20, 4)
    ref, ref_y = x[:200], y[:200]
    base = retrieval_metrics(x, y, ref, ref_y)
    as_strings = retrieval_metrics(x, [f"c{v}" for v in y], ref, [f"c{v}" for v in ref_y])
    as_torch = retrieval_metrics(
        torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(ref).double(), ref_y.tolist()
    )
    huge = retrieval_metrics(x, y + 2**40, ref, ref_y + 2**40)  # float32 would merge these
    assert base == as_strings == as_torch == huge


def test_hand_computed_case():
    def points(*xs):
        return np.array([[v, 0.0] for v in xs], dtype=np.float32)

    refs, ref_labels = points(1, 2, 3, 4), ["A", "B", "A", "B"]
    # query A at 0: order A B A B, R=2 -> P@1 1, RP 1/2, AP@R (1/1)/2 = 0.5
    # query B at 2.6: order A(3) B(2) B(4) A(1), R=2 -> P@1 0, RP 1/2, AP@R (1/2)/2 = 0.25
    # query C at 0.5: lone (no reference labelled C) -> skipped everywhere
    out = retrieval_metrics(points(0, 2.6, 0.5), ["A", "B", "C"], refs, ref_labels, (1, 2, 3))
    assert out == pytest.approx(
        {
            "map_at_r": 0.375,
            "r_precision": 0.5,
            "precision_at_1": 0.5,
            "recall_at_1": 0.5,
            "recall_at_2": 1.0,
            "recall_at_3": 1.0,
        }
    )


def test_self_is_excluded():
    # every point's nearest *other* point has the other label
    x = np.array([[0.0], [0.1], [5.0], [5.1]], dtype=np.float32)
    out = retrieval_metrics(x, [0, 1, 0, 1])
    assert out["precision_at_1"] == 0.0
    assert out["recall_at_4"] == 1.0  # the same-label point is 3rd or nearer


def test_all_lone_queries_give_nan():
    x = np.random.default_rng(0).standard_normal((5, 3))
    out = retrieval_metrics(x, [0, 1, 2, 3, 4])
    assert all(math.isnan(v) for v in out.values())
    out = retrieval_metrics(x, [0, 0, 0, 0, 0], x, [1, 1, 1, 1, 1])
    assert all(math.isnan(v) for v in out.values())


def test_ties_are_broken_by_reference_index_across_the_cut_off():
    # 12 identical references; only index 0 shares the query's label (R = 1), so the search
    # cut-off (k = R) falls inside the tie group and must still keep index 0 first.
    refs = np.ones((12, 4), dtype=np.float32)
    labels = np.array([7] + [3] * 11)
    query = np.zeros((1, 4), dtype=np.float32)
    assert retrieval_metrics(query, [7], refs, labels, (1,))["precision_at_1"] == 1.0
    assert retrieval_metrics(query, [7], refs, labels[::-1].copy(), (1,))["precision_at_1"] == 0.0
    _, idx = nearest_neighbors(query, refs, k=3)
    assert idx.tolist() == [[0, 1, 2]]


def test_duplicates_in_self_retrieval_exclude_only_self():
    x = np.zeros((4, 2), dtype=np.float32)  # all identical: every distance ties
    dist, idx = nearest_neighbors(x, k=5)
    assert idx.tolist() == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    assert (dist == 0).all()
    assert retrieval_metrics(x, [1, 1, 2, 2])["precision_at_1"] == 0.5


def test_recall_definition():
    x, y = clustered(np.random.default_rng(3), 600, 6, 30, 5)
    out = retrieval_metrics(x, y, recall_at=(1, 5, 50))
    assert out["recall_at_1"] == out["precision_at_1"]
    assert out["recall_at_1"] <= out["recall_at_5"] <= out["recall_at_50"]
    # brute force: fraction of non-lone queries with a same-label neighbour in the top 5
    d = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    top = np.argsort(d, axis=1, kind="stable")[:, :5]
    non_lone = np.bincount(y)[y] > 1
    expected = (y[top] == y[:, None]).any(axis=1)[non_lone].mean()
    assert out["recall_at_5"] == pytest.approx(expected)


def test_torch_search_path_agrees_with_faiss():
    """The path used for CUDA tensors, exercised here on CPU tensors."""
    x, _ = clustered(np.random.default_rng(1), 700, 10, 10, 0)
    rows = np.arange(0, 700, 3)
    faiss_blocks = list(metrics._iter_knn(x, x, 9, rows, exclude_self=True))
    t = torch.from_numpy(x)
    torch_blocks = list(metrics._iter_knn(t, t, 9, rows, exclude_self=True))
    np.testing.assert_array_equal(faiss_blocks[0][2], torch_blocks[0][2])
    np.testing.assert_allclose(faiss_blocks[0][1], torch_blocks[0][1], atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tensors_match_cpu():
    x, y = clustered(np.random.default_rng(2), 3000, 32, 50, 5)
    cpu = retrieval_metrics(x, y)
    gpu = retrieval_metrics(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda())
    assert gpu == pytest.approx(cpu, abs=1e-6)


def test_bad_inputs_are_named():
    x = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="3 query embeddings but 2"):
        retrieval_metrics(x, [0, 1])
    with pytest.raises(ValueError, match="together"):
        retrieval_metrics(x, [0, 1, 1], x)
    with pytest.raises(ValueError, match="dim"):
        retrieval_metrics(x, [0, 1, 1], np.zeros((3, 5)), [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((3, 2), np.nan), [0, 1, 1])
    with pytest.raises(ValueError, match="both be numeric"):
        retrieval_metrics(x, [0, 1, 1], x, ["a", "b", "b"])
    with pytest.raises(ValueError, match="recall_at"):
        retrieval_metrics(x, [0, 1, 1], recall_at=(0,))
