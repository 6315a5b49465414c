"""Shards of the index, partitioned datasets, and clustering one part at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_clustering import blobs
from test_embeddings import _setup

from slade_core.clustering import make_pseudo_labels, make_sharded_pseudo_labels
from slade_core.config import ClusterConfig
from slade_core.embeddings import (
    embeddings_schema,
    extract_embedding_shard,
    extract_embeddings,
    read_embeddings,
)
from slade_core.shards import dataset_parts, plan_shards, read_dataset, select_rows


def test_plan_covers_every_row_once_in_order_and_names_parts_by_number(tmp_path):
    frame, index, *_ = _setup(tmp_path)
    rows = select_rows(index, ["train", "unlabeled"])
    shards = plan_shards(rows, 3)
    assert [(s.start, s.stop) for s in shards] == [(0, 3), (3, 6), (6, 7)]
    assert [s.part_name for s in shards] == [f"part-0000{i}.parquet" for i in range(3)]
    assert plan_shards(rows, 3) == shards  # deterministic
    assert len({s.rows_digest for s in shards}) == 3
    with pytest.raises(ValueError, match="rows_per_shard"):
        plan_shards(rows, 0)


def test_shard_refuses_rows_that_changed_since_planning(tmp_path):
    frame, index, _, checkpoint, runtime = _setup(tmp_path)
    (shard,) = plan_shards(select_rows(index, ["train", "unlabeled"]), 7)
    frame.iloc[::-1].to_parquet(index)
    with pytest.raises(ValueError, match="no longer matches the index"):
        extract_embedding_shard(
            checkpoint, index, tmp_path / "p.parquet", ["train", "unlabeled"], shard, runtime
        )


def test_shard_parts_read_back_as_the_single_file_extraction(tmp_path):
    frame, index, _, checkpoint, runtime = _setup(tmp_path)
    splits = ["train", "unlabeled"]
    whole = read_embeddings(
        extract_embeddings(checkpoint, index, tmp_path / "one.parquet", splits, runtime).path
    )
    dataset = tmp_path / "embeddings.parquet"
    shards = plan_shards(select_rows(index, splits), 2)
    for shard in reversed(shards):  # completion order does not matter, part names do
        extract_embedding_shard(
            checkpoint, index, dataset / shard.part_name, splits, shard, runtime
        )
    extract_embedding_shard(  # a re-run overwrites its part: none duplicated
        checkpoint, index, dataset / shards[1].part_name, splits, shards[1], runtime
    )
    assert [p.name for p in dataset_parts(dataset)] == [s.part_name for s in shards]
    parts = read_embeddings(dataset)
    assert list(parts.image_ids) == list(whole.image_ids) == list(frame["image_id"])
    np.testing.assert_allclose(parts.embeddings, whole.embeddings, atol=1e-6)
    assert parts.metadata == whole.metadata
    only = read_embeddings(dataset, splits=["unlabeled"])
    assert set(only.splits) == {"unlabeled"}
    assert read_dataset(dataset, columns=["image_id"]).num_rows == 7


def _write_dataset(root, x, rows_per_part, labels=None, splits=None):
    """Embeddings `x` as a dataset of parts of `rows_per_part` rows (split unlabeled unless
    `splits` says otherwise)."""
    schema = embeddings_schema(x.shape[1], "m")
    root.mkdir(parents=True)
    n = len(x)
    labels = np.full(n, -1) if labels is None else labels
    splits = ["unlabeled"] * n if splits is None else splits
    for number, start in enumerate(range(0, n, rows_per_part)):
        stop = min(start + rows_per_part, n)
        values = pa.array(x[start:stop].reshape(-1), pa.float32())
        table = pa.Table.from_arrays(
            [
                pa.array([f"img{i:04d}" for i in range(start, stop)], pa.string()),
                pa.array(splits[start:stop], pa.string()),
                pa.array(labels[start:stop], pa.int64()),
                pa.FixedSizeListArray.from_arrays(values, x.shape[1]),
            ],
            schema=schema,
        )
        pq.write_table(table, root / f"part-{number:05d}.parquet")
    return root


@pytest.mark.parametrize(
    ("method", "sample"), [("kmeans", None), ("kmeans", 120), ("ward", None), ("ward", 120)]
)
def test_sharded_pseudo_labels_equal_todays_on_the_same_rows(tmp_path, method, sample):
    x, truth = blobs(n=500, k=5, spread=0.2, seed=3)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.where(np.arange(500) % 4 == 0, truth, -1)
    dataset = _write_dataset(tmp_path / "embeddings.parquet", x, 64, labels)
    single = _write_dataset(tmp_path / "single", x, 500, labels) / "part-00000.parquet"
    cfg = ClusterConfig(method=method, k=5, iterations=10, seed=2, train_sample_size=sample)

    today = make_pseudo_labels(single, tmp_path / "today.parquet", cfg)
    sharded = make_sharded_pseudo_labels(dataset, tmp_path / "pseudo_labels.parquet", cfg)

    parts = dataset_parts(sharded.path)
    assert [p.name for p in parts] == [p.name for p in dataset_parts(dataset)]  # one per part
    expected, got = pq.read_table(today.path), read_dataset(sharded.path)
    assert got.column_names == ["image_id", "cluster", "distance"]
    assert got.column("image_id").to_pylist() == expected.column("image_id").to_pylist()
    assert got.column("cluster").to_pylist() == expected.column("cluster").to_pylist()
    np.testing.assert_allclose(
        got.column("distance").to_numpy(), expected.column("distance").to_numpy(), atol=1e-5
    )
    assert sharded.stats == today.stats and sharded.stats["n_labeled"] == 125
    meta = pq.read_schema(sharded.path / "_common_metadata").metadata
    assert json.loads(meta[b"slade.stats"]) == today.stats
    assert got.schema.metadata[b"slade.k"] == b"5" and got.schema.metadata[b"slade.model"] == b"m"


def test_assignment_calls_run_anywhere_and_give_the_same_labels(tmp_path):
    """map_parts gets one plain call per part (files in, a file out): run in other processes,
    last part first, they give the labels of the in-process default."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from slade_core.clustering import assign_part

    x, _ = blobs(n=300, k=4, spread=0.2, seed=1)
    dataset = _write_dataset(tmp_path / "embeddings.parquet", x, 64)
    cfg = ClusterConfig(k=4, iterations=10, seed=0)
    seen = []

    def elsewhere(calls):
        seen.extend(calls)
        spawn = multiprocessing.get_context("spawn")  # new interpreters, as on a cluster
        with ProcessPoolExecutor(2, mp_context=spawn) as pool:
            futures = [pool.submit(assign_part, **call) for call in reversed(calls)]
        return [future.result() for future in reversed(futures)]

    here = make_sharded_pseudo_labels(dataset, tmp_path / "here", cfg)
    there = make_sharded_pseudo_labels(dataset, tmp_path / "there", cfg, map_parts=elsewhere)
    assert [Path(c["part"]).name for c in seen] == [p.name for p in dataset_parts(dataset)]
    assert all(Path(c["centroids"]).name == "_centroids.npy" for c in seen)
    assert there.stats == here.stats
    for name in ("image_id", "cluster"):
        assert read_dataset(there.path).column(name) == read_dataset(here.path).column(name)
    centroids = np.load(there.path / "_centroids.npy")
    assert centroids.shape == (4, x.shape[1])
    single = assign_part(dataset_parts(dataset)[0], there.path / "_centroids.npy",
                         tmp_path / "one.parquet", cfg)  # fmt: skip
    assert single.sizes.sum() == 64 and single.labeled_clusters.size == 0


def test_sharded_pseudo_labels_name_the_missing_split(tmp_path):
    x, _ = blobs(n=20)
    dataset = _write_dataset(tmp_path / "embeddings.parquet", x, 8)
    with pytest.raises(ValueError, match="split='test'"):
        make_sharded_pseudo_labels(dataset, tmp_path / "out", ClusterConfig(k=2), split="test")


def test_a_dataset_digest_changes_with_any_part(tmp_path):
    from slade_core.io import file_digest

    x, _ = blobs(n=20)
    dataset = _write_dataset(tmp_path / "embeddings.parquet", x, 8)
    before = file_digest(dataset)
    assert file_digest(dataset) == before
    (dataset / "part-00001.parquet").rename(dataset / "part-00009.parquet")
    assert file_digest(dataset) != before
