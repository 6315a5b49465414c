import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slade_core.clustering import (
    cluster_rows,
    cluster_size_stats,
    label_agreement,
    make_pseudo_labels,
    sample_rows,
    train_centroids,
    write_pseudo_labels,
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


def kmeans(k, **cfg):
    return ClusterConfig(method="kmeans", k=k, **cfg)


def test_same_seed_same_result_and_separated_blobs_recovered():
    x, truth = blobs()
    labels, distances = cluster_rows(x, kmeans(3, iterations=10, seed=4))
    again, _ = cluster_rows(x, kmeans(3, iterations=10, seed=4))
    np.testing.assert_array_equal(labels, again)
    assert labels.dtype == np.int64 and distances.dtype == np.float32
    assert label_agreement(labels, truth)["purity"] == 1.0
    centroids = train_centroids(x / np.linalg.norm(x, axis=1, keepdims=True), 3, 10, 4)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)


def test_sample_train_then_assign_every_point():
    x, _ = blobs(n=500, k=4, spread=0.3, seed=1)
    labels, distances = cluster_rows(x, kmeans(4, iterations=5, seed=0, train_sample_size=60))
    assert labels.shape == distances.shape == (500,)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = sample_rows(500, 4, 0, 60)
    assert len(rows) == 60 and (np.diff(rows) > 0).all()
    centroids = train_centroids(unit[rows], 4, 5, 0)
    sq = ((unit[:, None, :] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(labels, sq.argmin(axis=1))
    np.testing.assert_allclose(distances, sq.min(axis=1), atol=1e-5)


@pytest.mark.parametrize("method", ["kmeans", "ward"])
def test_bad_inputs_are_explained(method):
    x, _ = blobs(n=10)
    with pytest.raises(ValueError, match="k=11 clusters but only 10 points"):
        cluster_rows(x, ClusterConfig(method=method, k=11))
    with pytest.raises(ValueError, match="k >= 2"):
        sample_rows(10, 1, 0, None)
    with pytest.raises(ValueError, match="smaller than k"):
        cluster_rows(x, ClusterConfig(method=method, k=5, train_sample_size=4))
    bad = x.copy()
    bad[[2, 7]] = np.nan
    bad[8, 0] = np.inf
    with pytest.raises(
        ValueError, match=r"3 embedding rows contain NaN or inf \(first rows: \[2, 7, 8\]"
    ):
        cluster_rows(bad, ClusterConfig(method=method, k=2))
    zero = x.copy()
    zero[4] = 0
    with pytest.raises(ValueError, match=r"1 embedding rows are zero vectors \(first rows: \[4\]"):
        cluster_rows(zero, ClusterConfig(method=method, k=2))


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
    assert labeled.stats["n_labeled"] == 20  # three separated blobs: recovered exactly
    assert labeled.stats["purity"] == 1.0 and labeled.stats["nmi"] == pytest.approx(1.0)

    with pytest.raises(ValueError, match="no rows with split='test'"):
        make_pseudo_labels(tmp_path / "emb.parquet", tmp_path / "pl3.parquet", cfg, "test")


def test_write_pseudo_labels_is_the_file_the_student_reads(tmp_path):
    path = write_pseudo_labels(tmp_path / "new" / "pl.parquet", ["b", "a"], [7, 3])
    table = pq.read_table(path)
    assert table.column_names == ["image_id", "cluster", "distance"]
    assert table.schema.field("cluster").type == pa.int64()
    assert table.schema.field("distance").type == pa.float32()
    assert table.column("image_id").to_pylist() == ["b", "a"]  # order kept
    assert table.column("cluster").to_pylist() == [7, 3]
    assert table.column("distance").to_pylist() == [0.0, 0.0]  # no centre: 0
    assert [p.name for p in path.parent.iterdir()] == ["pl.parquet"]  # no temporary left


@pytest.mark.parametrize(
    ("option", "message"),
    [({"method": "mutual_neighbors"},
      r"method='mutual_neighbors' is not one of \('ward', 'kmeans'\): .* labels were removed"),
     ({"neighbors": 2}, "neighbors was removed: .*delete it"),
     ({"anchors": "labeled_classes"}, "anchors was removed: .*all k centroids train"),
     ({"n_init": 3}, "n_init was removed: k-means trains once"),
     ({"max_points_per_centroid": 64}, "max_points_per_centroid was removed: .*train_sample_size")],
)  # fmt: skip
def test_removed_cluster_options_say_what_replaced_them(option, message):
    with pytest.raises(ValueError, match=message):
        ClusterConfig(**option)
