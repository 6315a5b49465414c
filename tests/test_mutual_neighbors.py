"""Pseudo labels from mutual nearest neighbours: links, groups, the files and their stats."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_clustering import write_embeddings
from test_shards import _write_dataset

from slade_core.clustering import make_pseudo_labels, make_sharded_pseudo_labels
from slade_core.config import ClusterConfig
from slade_core.mutual_neighbors import mutual_neighbor_groups, nearest_neighbors
from slade_core.shards import read_dataset


def on_circle(angles) -> np.ndarray:
    """Unit rows at these angles (radians) in the first two of 4 dimensions."""
    angles = np.asarray(angles, dtype=np.float64)
    x = np.zeros((len(angles), 4), dtype=np.float32)
    x[:, 0], x[:, 1] = np.cos(angles), np.sin(angles)
    return x


# 0-1 and 3-4 are each other's nearest; 2's nearest is 1 (whose nearest is 0), 5's is 4
ANGLES = [0.0, 0.1, 0.25, 1.0, 1.05, 1.4]


def test_nearest_neighbors_are_other_rows_nearest_first_even_for_duplicates():
    x = on_circle([0.0, 0.0, 0.3, 1.0])  # rows 0 and 1 are the same point
    found = nearest_neighbors(x, 2)
    assert found[0].tolist() == [1, 2] and found[1].tolist() == [0, 2]
    assert set(found[2].tolist()) == {0, 1} and found[3][0] == 2
    assert all(i not in row for i, row in enumerate(found.tolist()))
    with pytest.raises(ValueError, match="cluster.neighbors=4"):
        nearest_neighbors(x, 4)


def test_groups_are_components_of_mutual_links_and_lonely_rows_get_none():
    groups, distances = mutual_neighbor_groups(on_circle(ANGLES), neighbors=1)
    assert groups.tolist() == [0, 0, -1, 1, 1, -1]
    assert groups.dtype == np.int64 and distances.dtype == np.float32
    # each member of a pair is half the pair's angle from the pair's mean direction
    expected = [2 - 2 * np.cos(0.05), 2 - 2 * np.cos(0.025)]
    np.testing.assert_allclose(distances[[0, 1, 3, 4]], np.repeat(expected, 2), atol=1e-6)
    assert np.isnan(distances[[2, 5]]).all()


def test_more_neighbors_link_more_and_a_component_can_chain():
    groups, _ = mutual_neighbor_groups(on_circle(ANGLES), neighbors=2)
    # 2 <-> 1 and 2 <-> 0 are now mutual; 5 <-> 4 and 5 <-> 3 too: two chains of three
    assert groups.tolist() == [0, 0, 0, 1, 1, 1]


def test_groups_do_not_depend_on_row_order():
    x = on_circle(ANGLES)
    order = np.array([5, 3, 0, 2, 4, 1])
    groups, _ = mutual_neighbor_groups(x, 1)
    shuffled, _ = mutual_neighbor_groups(x[order], 1)
    same_group = lambda g: g[:, None] == g[None, :]  # noqa: E731
    assert (same_group(groups)[np.ix_(order, order)] == same_group(shuffled)).all()
    assert ((groups[order] < 0) == (shuffled < 0)).all()


def test_pseudo_label_file_leaves_out_rows_without_a_label(tmp_path):
    x = on_circle(ANGLES)
    write_embeddings(tmp_path / "emb.parquet", x, ["unlabeled"] * 6, [7, 7, 7, 8, 8, 9])
    cfg = ClusterConfig(method="mutual_neighbors", neighbors=1)
    result = make_pseudo_labels(tmp_path / "emb.parquet", tmp_path / "pl.parquet", cfg)
    table = pq.read_table(result.path)
    assert table.column("image_id").to_pylist() == [f"img/{i}.jpg" for i in (0, 1, 3, 4)]
    assert table.column("cluster").to_pylist() == [0, 0, 1, 1]
    assert table.schema.metadata[b"slade.k"] == b"2"  # the number of pseudo labels
    assert result.stats["k"] == 2 and result.stats["n_points"] == 4
    assert result.stats["n_without_label"] == 2
    assert result.stats["purity"] == 1.0  # of the labeled rows, against their real labels
    assert json.loads(table.schema.metadata[b"slade.stats"]) == result.stats


def test_kmeans_labels_every_row(tmp_path):
    write_embeddings(tmp_path / "emb.parquet", on_circle(ANGLES), ["unlabeled"] * 6, [-1] * 6)
    cfg = ClusterConfig(method="kmeans", k=2, iterations=5)
    stats = make_pseudo_labels(tmp_path / "emb.parquet", tmp_path / "pl.parquet", cfg).stats
    assert stats["n_points"] == 6 and stats["n_without_label"] == 0


def test_sharded_mutual_neighbor_labels_equal_the_single_file_ones(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.where(np.arange(90) % 3 == 0, np.arange(90) % 5, -1)
    dataset = _write_dataset(tmp_path / "embeddings.parquet", x, 20, labels)
    single = _write_dataset(tmp_path / "single", x, 90, labels) / "part-00000.parquet"
    cfg = ClusterConfig(method="mutual_neighbors", neighbors=2)

    one = make_pseudo_labels(single, tmp_path / "one.parquet", cfg)
    parts = make_sharded_pseudo_labels(dataset, tmp_path / "pseudo_labels.parquet", cfg)

    expected, got = pq.read_table(one.path), read_dataset(parts.path)
    assert 0 < got.num_rows < 90  # some rows have no mutual neighbour
    assert got.column("image_id").to_pylist() == expected.column("image_id").to_pylist()
    assert got.column("cluster").to_pylist() == expected.column("cluster").to_pylist()
    assert parts.stats == one.stats and parts.stats["n_without_label"] == 90 - got.num_rows
    assert len(list(parts.path.glob("part-*.parquet"))) == 5
