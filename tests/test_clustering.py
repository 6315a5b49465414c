import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slade_core.clustering import (
    cluster_size_stats,
    label_agreement,
    make_pseudo_labels,
    spherical_kmeans,
)
from slade_core.config import ClusterConfig
from slade_core.embeddings import embeddings_schema


def blobs(n=300, dim=8, k=3, seed=0, spread=0.05):
    """n points around k random unit directions; returns (x, true cluster)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim))
    truth = rng.integers(0, k, n)
    x = centres[truth] / np.linalg.norm(centres[truth], axis=1, keepdims=True)
    return (x + spread * rng.standard_normal((n, dim))).astype(np.float32), truth


def test_same_seed_same_result_and_separated_blobs_recovered():
    x, truth = blobs()
    a = spherical_kmeans(x, 3, iterations=10, seed=4)
    b = spherical_kmeans(x, 3, iterations=10, seed=4)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.assignments.dtype == np.int64 and a.distances.dtype == np.float32
    assert label_agreement(a.assignments, truth)["purity"] == 1.0
    np.testing.assert_allclose(np.linalg.norm(a.centroids, axis=1), 1.0, atol=1e-5)


def test_sample_train_then_assign_every_point():
    x, _ = blobs(n=500, k=4, spread=0.3, seed=1)
    result = spherical_kmeans(x, 4, iterations=5, seed=0, train_sample_size=60)
    assert result.assignments.shape == result.distances.shape == (500,)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sq = ((unit[:, None, :] - result.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(result.assignments, sq.argmin(axis=1))
    np.testing.assert_allclose(result.distances, sq.min(axis=1), atol=1e-5)
    again = spherical_kmeans(x, 4, iterations=5, seed=0, train_sample_size=60)
    np.testing.assert_array_equal(result.assignments, again.assignments)


def test_bad_inputs_are_explained():
    x, _ = blobs(n=10)
    with pytest.raises(ValueError, match="k=11 clusters but only 10 points"):
        spherical_kmeans(x, 11)
    with pytest.raises(ValueError, match="k >= 2"):
        spherical_kmeans(x, 1)
    with pytest.raises(ValueError, match="smaller than k"):
        spherical_kmeans(x, 5, train_sample_size=4)
    bad = x.copy()
    bad[[2, 7]] = np.nan
    bad[8, 0] = np.inf
    with pytest.raises(
        ValueError, match=r"3 embedding rows contain NaN or inf \(first rows: \[2, 7, 8\]"
    ):
        spherical_kmeans(bad, 2)
    zero = x.copy()
    zero[4] = 0
    with pytest.raises(ValueError, match=r"1 embedding rows are zero vectors \(first rows: \[4\]"):
        spherical_kmeans(zero, 2)


def test_cluster_size_stats():
    stats = cluster_size_stats(np.array([0, 0, 0, 2, 2, 3]), k=5)
    assert stats == {
        "k": 5,
        "n_points": 6,
        "min_cluster_size": 0,
        "median_cluster_size": 1.0,
        "max_cluster_size": 3,
        "n_empty": 2,
    }
    with pytest.raises(ValueError, match="0..4"):
        cluster_size_stats(np.array([0, 5]), k=5)


def test_label_agreement_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    clusters, labels = rng.integers(0, 7, 400), rng.integers(0, 5, 400)
    labels[:200] = clusters[:200] % 5
    out = label_agreement(clusters, labels)
    assert out["nmi"] == pytest.approx(
        sklearn_metrics.normalized_mutual_info_score(labels, clusters)
    )
    contingency = np.zeros((7, 5))
    np.add.at(contingency, (clusters, labels), 1)
    assert out["purity"] == pytest.approx(contingency.max(axis=1).sum() / 400)
    assert label_agreement(np.zeros(5, int), np.ones(5, int))["nmi"] == 1.0


def write_embeddings(path, x, splits, labels):
    table = pa.table(
        {
            "image_id": [f"img/{i}.jpg" for i in range(len(x))],
            "split": splits,
            "label": pa.array(labels, pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
        },
        schema=embeddings_schema(x.shape[1], "abc123"),
    )
    pq.write_table(table, path)


def test_make_pseudo_labels_writes_contract_schema(tmp_path):
    x, truth = blobs(n=120, k=3)
    splits = ["unlabeled"] * 100 + ["train"] * 20
    labels = [-1] * 100 + list(truth[100:])
    write_embeddings(tmp_path / "emb.parquet", x, splits, labels)
    cfg = ClusterConfig(k=3, iterations=8, seed=2)

    result = make_pseudo_labels(tmp_path / "emb.parquet", tmp_path / "out" / "pl.parquet", cfg)

    table = pq.read_table(result.path)
    assert table.schema.field("image_id").type == pa.string()
    assert table.schema.field("cluster").type == pa.int64()
    assert table.schema.field("distance").type == pa.float32()
    assert table.column("image_id").to_pylist() == [f"img/{i}.jpg" for i in range(100)]
    meta = table.schema.metadata
    assert meta[b"slade.k"] == b"3" and meta[b"slade.seed"] == b"2"
    assert meta[b"slade.model"] == b"abc123"
    assert json.loads(meta[b"slade.stats"]) == result.stats
    assert result.stats["k"] == 3 and result.stats["n_points"] == 100
    assert "purity" not in result.stats  # unlabeled rows carry label -1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["pl.parquet"]

    labeled = make_pseudo_labels(tmp_path / "emb.parquet", tmp_path / "pl2.parquet", cfg, "train")
    assert labeled.stats["n_labeled"] == 20 and 0 < labeled.stats["purity"] <= 1
    assert 0 <= labeled.stats["nmi"] <= 1

    with pytest.raises(ValueError, match="no rows with split='test'"):
        make_pseudo_labels(tmp_path / "emb.parquet", tmp_path / "pl3.parquet", cfg, "test")


def test_anchors_stay_fixed_as_the_first_centroids_and_gather_their_points():
    x, truth = blobs(n=300, k=3, spread=0.05, seed=5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    anchors = np.stack([unit[truth == c].mean(0) for c in (2, 0)])
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    result = spherical_kmeans(x, 4, iterations=10, seed=1, anchors=anchors)
    np.testing.assert_allclose(result.centroids[:2], anchors, atol=1e-5)
    assert (result.assignments[truth == 2] == 0).all()  # blob 2 gathers under anchor 0
    assert (result.assignments[truth == 0] == 1).all()
    assert (result.assignments[truth == 1] >= 2).all()  # the free centroids take the rest
    with pytest.raises(ValueError, match="raise cluster.k above 2"):
        spherical_kmeans(x, 2, anchors=anchors)


def test_pseudo_labels_anchored_at_the_labeled_classes(tmp_path):
    x, truth = blobs(n=200, k=5, spread=0.05, seed=6)
    # blobs 0-3 are labeled classes 10-13 (some of their rows labeled), blob 4 is novel
    labeled = (np.arange(200) < 80) & (truth < 4)
    x = np.concatenate([x[labeled], x[~labeled]])
    truth = np.concatenate([truth[labeled], truth[~labeled]])
    n = int(labeled.sum())
    splits = ["train"] * n + ["unlabeled"] * (200 - n)
    labels = [10 + int(t) for t in truth[:n]] + [-1] * (200 - n)
    write_embeddings(tmp_path / "emb.parquet", x, splits, labels)
    cfg = ClusterConfig(method="kmeans", k=10, iterations=10, anchors="labeled_classes")
    result = make_pseudo_labels(tmp_path / "emb.parquet", tmp_path / "pl.parquet", cfg)
    clusters = pq.read_table(result.path).column("cluster").to_numpy()
    unlabeled = truth[n:]
    # class 10 + c is anchor c (labels in order): it takes only blob c, and most of it
    for c in range(4):
        assert set(unlabeled[clusters == c]) == {c}
        assert (clusters[unlabeled == c] == c).mean() > 0.5
    assert (clusters[unlabeled == 4] >= 4).all()  # the novel blob goes to free centroids

    write_embeddings(tmp_path / "unl.parquet", x[n:], splits[n:], labels[n:])
    with pytest.raises(ValueError, match="needs the labeled .split 'train'. rows"):
        make_pseudo_labels(tmp_path / "unl.parquet", tmp_path / "pl2.parquet", cfg)


def test_anchors_need_kmeans():
    with pytest.raises(ValueError, match="needs cluster.method='kmeans'"):
        ClusterConfig(method="mutual_neighbors", anchors="labeled_classes")
