"""Pseudo labels for the unlabeled set: clusters of the teacher's embeddings.

SLADE step 2: the teacher embeds the unlabeled images and each cluster id becomes a pseudo
label for the student. Both centre methods fit on a seeded sample and then assign every
point, so they scale to unlabeled sets far larger than what the fit must see: with a
partitioned embeddings dataset (`slade_core.shards`) the sample is gathered and the points
assigned one part at a time, so memory is bounded by the sample and one shard.
`cluster.method = "ward"` (the default) cuts Ward's agglomerative tree of the sample
(`slade_core.ward`; at most `cluster.ward_max_points` rows) into k groups: the merged rows
keep their group, the others go to the nearest group centre. "kmeans" (the paper's) is
spherical FAISS k-means. `write_pseudo_labels` is the one writer of the pseudo-label file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from slade_core.config import ClusterConfig
from slade_core.directions import unit_rows
from slade_core.embeddings import read_embeddings
from slade_core.io import atomic_dir, atomic_path
from slade_core.shards import dataset_parts, part_name
from slade_core.ward import ward_groups

CENTROIDS = "_centroids.npy"  # beside the parts (a "_" file: Parquet readers skip it)


@dataclass(frozen=True)
class ClusterResult:
    path: Path
    stats: dict[str, Any]


def sample_rows(n: int, k: int, seed: int, train_sample_size: int | None) -> np.ndarray | None:
    """Sorted seeded row numbers the centres are fitted on; None when every row is used."""
    if k < 2:
        raise ValueError(f"clustering needs k >= 2 clusters, got k={k}")
    if k > n:
        raise ValueError(f"k={k} clusters but only {n} points; lower cluster.k")
    if train_sample_size is None or train_sample_size >= n:
        return None
    if train_sample_size < k:
        raise ValueError(
            f"train_sample_size={train_sample_size} is smaller than k={k}; "
            "raise cluster.train_sample_size or lower cluster.k"
        )
    return np.sort(np.random.default_rng(seed).choice(n, train_sample_size, replace=False))


def train_centroids(train: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """Unit-norm float32 [k, d] centroids of spherical FAISS k-means on unit rows (one run;
    FAISS trains on at most 256 seeded rows per centroid)."""
    kmeans = faiss.Kmeans(
        train.shape[1],
        k,
        niter=iterations,
        seed=seed,
        spherical=True,
        max_points_per_centroid=256,
        min_points_per_centroid=1,  # small unlabeled sets are fine; skip FAISS's warning
        verbose=False,
    )
    kmeans.train(train)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int64 cluster ids, float32 squared L2 distances) of unit rows to their nearest centroid."""
    nearest = faiss.IndexFlatL2(centroids.shape[1])  # kmeans.index is inner-product here
    nearest.add(centroids)
    distances, assignments = nearest.search(x, 1)
    return assignments[:, 0].astype(np.int64), distances[:, 0].astype(np.float32)


def cluster_size_stats(assignments: np.ndarray, k: int) -> dict[str, Any]:
    """k, n_points, min/median/max cluster size and number of empty clusters."""
    assignments = np.asarray(assignments)
    if assignments.size and (assignments.min() < 0 or assignments.max() >= k):
        raise ValueError(f"cluster ids must lie in 0..{k - 1}")
    return _size_stats(np.bincount(assignments, minlength=k))


def label_agreement(assignments: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Purity and NMI (arithmetic normalisation, as sklearn's default) of clusters vs labels.

    A diagnostic when the clustered rows do carry real labels (e.g. a labeled hold-out).
    """
    _, clusters = np.unique(np.asarray(assignments), return_inverse=True)
    _, classes = np.unique(np.asarray(labels), return_inverse=True)
    n, n_classes = clusters.size, int(classes.max()) + 1
    joint = np.bincount(clusters * n_classes + classes, minlength=(clusters.max() + 1) * n_classes)
    joint = joint.reshape(-1, n_classes) / n
    p_cluster, p_class = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mutual = float((joint[nz] * np.log(joint[nz] / np.outer(p_cluster, p_class)[nz])).sum())
    entropy = -(p_cluster * np.log(p_cluster)).sum() - (p_class * np.log(p_class)).sum()
    return {
        "n_labeled": int(n),
        "purity": float(joint.max(axis=1).sum()),
        "nmi": float(mutual / (entropy / 2)) if entropy > 0 else 1.0,
    }


def make_pseudo_labels(
    embeddings_path: str | Path,
    out_path: str | Path,
    cfg: ClusterConfig,
    split: str = "unlabeled",
) -> ClusterResult:
    """Cluster the `split` rows of an embeddings Parquet; write pseudo_labels.parquet atomically.

    Output columns: see `write_pseudo_labels`. Stats add purity/NMI when the clustered rows
    carry real labels (label >= 0).
    """
    table = read_embeddings(embeddings_path, splits=[split])
    if len(table.image_ids) == 0:
        raise ValueError(
            f"no rows with split={split!r} in {embeddings_path}; extract embeddings for that split"
        )
    assignments, distances = cluster_rows(table.embeddings, cfg)
    stats = cluster_size_stats(assignments, cfg.k)
    known = np.asarray(table.labels) >= 0
    if known.any():
        stats.update(label_agreement(assignments[known], np.asarray(table.labels)[known]))
    metadata = _pseudo_label_metadata(cfg, split, table.metadata)
    metadata[b"slade.stats"] = json.dumps(stats, sort_keys=True).encode()
    write_pseudo_labels(out_path, table.image_ids, assignments, distances, metadata)
    return ClusterResult(path=Path(out_path), stats=stats)


def cluster_rows(x: Any, cfg: ClusterConfig) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo labels of the rows of x by `cfg.method`: (int64 label 0..k-1 per row; float32
    squared L2 distance of the unit row to its label's centre)."""
    x = unit_rows(x)
    rows = sample_rows(len(x), cfg.k, cfg.seed, fit_sample_size(cfg))
    fit = fit_centres(x if rows is None else x[rows], cfg)
    assignments, distances = assign(x, fit.centroids)
    if fit.groups is not None:
        keep_groups(x, assignments, distances, fit, np.arange(len(x)) if rows is None else rows)
    return assignments, distances


def fit_sample_size(cfg: ClusterConfig) -> int | None:
    """How many seeded rows the centres are fitted on (None: all): cluster.train_sample_size,
    and for Ward at most cluster.ward_max_points (its memory grows with their square)."""
    if cfg.method != "ward":
        return cfg.train_sample_size
    return min(cfg.train_sample_size or cfg.ward_max_points, cfg.ward_max_points)


@dataclass(frozen=True)
class Fit:
    """The centres of `cluster.method`, fitted on some rows, and, for Ward, the group of each
    of those rows (they keep it; k-means' rows simply take their nearest centroid)."""

    centroids: np.ndarray  # float32 [k, d], unit norm
    groups: np.ndarray | None  # int64 [rows fitted] for Ward, else None


def fit_centres(train: np.ndarray, cfg: ClusterConfig) -> Fit:
    """Fit `cfg.method`'s centres on the unit rows `train`."""
    if cfg.method == "ward":
        groups, centres = ward_groups(train, cfg.k)
        return Fit(centres, groups)
    return Fit(train_centroids(train, cfg.k, cfg.iterations, cfg.seed), None)


def keep_groups(
    x: np.ndarray, assignments: np.ndarray, distances: np.ndarray, fit: Fit, rows: np.ndarray
) -> None:
    """Give the fitted `rows` of x (unit) their own group back, in place, with the squared
    L2 distance to that group's centre."""
    groups = np.asarray(fit.groups, dtype=np.int64)
    assignments[rows] = groups
    distances[rows] = np.maximum(2.0 - 2.0 * (x[rows] * fit.centroids[groups]).sum(axis=1), 0.0)


def make_sharded_pseudo_labels(
    embeddings_path: str | Path,
    out_dir: str | Path,
    cfg: ClusterConfig,
    split: str = "unlabeled",
    map_parts: PartMapper | None = None,
) -> ClusterResult:
    """Pseudo labels of an embeddings dataset as a dataset: part i labels embeddings part i.

    The centres are fitted on the seeded sample of `make_pseudo_labels` (the same rows,
    gathered part by part), then every part is assigned with them by `assign_part`. So the
    labels equal `make_pseudo_labels`' on the same rows, and peak memory is the sample plus
    one part. `map_parts` runs the assignment calls (keyword arguments of `assign_part`, one
    per part) and returns their results in order: one after another here by default, or on a
    cluster (the caller's engine). The centres reach the calls as a file (`_centroids.npy`
    beside the parts), read once per part. Parts carry the columns and metadata of
    pseudo_labels.parquet; `_common_metadata` adds the stats (known only at the end).
    """
    parts = dataset_parts(embeddings_path)
    fit, kept = sampled_centres(parts, cfg, split)
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / CENTROIDS, fit.centroids)
        calls = [
            {
                "part": str(part),
                "centroids": str(tmp / CENTROIDS),
                "out_file": str(tmp / part_name(number)),
                "cfg": cfg,
                "split": split,
                **({"kept": kept[number]} if kept else {}),
            }
            for number, part in enumerate(parts)
        ]
        results = (map_parts or _map_in_process)(calls)
        stats = _size_stats(np.sum([r.sizes for r in results], axis=0))
        clusters = np.concatenate([r.labeled_clusters for r in results])
        if clusters.size:
            stats.update(
                label_agreement(clusters, np.concatenate([r.labeled_labels for r in results]))
            )
        _write_common_metadata(tmp, stats)
    return ClusterResult(path=Path(out_dir), stats=stats)


def _write_common_metadata(directory: Path, stats: dict[str, Any]) -> None:
    """`_common_metadata`: the parts' schema plus the dataset's stats (known only at the end)."""
    schema = pq.read_schema(directory / part_name(0))
    stats_meta = {**schema.metadata, b"slade.stats": json.dumps(stats, sort_keys=True).encode()}
    pq.write_metadata(schema.with_metadata(stats_meta), directory / "_common_metadata")


@dataclass(frozen=True)
class PartLabels:
    """What one assigned part adds to the dataset's stats (sizes, and labels when known)."""

    sizes: np.ndarray  # int64 [k] points per cluster in this part
    labeled_clusters: np.ndarray  # int64 cluster ids of the part's rows with a real label
    labeled_labels: np.ndarray  # int64 those rows' labels


PartMapper = Callable[[list[dict[str, Any]]], list[PartLabels]]


def sampled_centres(
    parts: Sequence[Path], cfg: ClusterConfig, split: str
) -> tuple[Fit, list[tuple[list[int], list[int]]]]:
    """The centres of `cfg.method` fitted on the seeded sample of the `split` rows, read part
    by part, and for Ward, per part, (row numbers within the part's split rows, their
    groups) of the fitted rows: they keep their group (`assign_part`'s `kept`). The list is
    empty for k-means."""
    counts = [_split_rows(p, split) for p in parts]
    n = sum(counts)
    if n == 0:
        raise ValueError(
            f"no rows with split={split!r} in {parts[0].parent}; extract embeddings for that split"
        )
    rows = sample_rows(n, cfg.k, cfg.seed, fit_sample_size(cfg))
    train, local_rows, offset = [], [], 0
    for part, count in zip(parts, counts, strict=True):
        local = (
            np.arange(count)
            if rows is None
            else rows[(rows >= offset) & (rows < offset + count)] - offset
        )
        offset += count
        local_rows.append(local)
        if local.size:
            train.append(unit_rows(read_embeddings(part, splits=[split]).embeddings)[local])
    fit = fit_centres(np.concatenate(train), cfg)
    if fit.groups is None:
        return fit, []
    bounds = np.cumsum([0, *(len(local) for local in local_rows)])
    return fit, [
        (local.tolist(), fit.groups[start:stop].tolist())
        for local, start, stop in zip(local_rows, bounds[:-1], bounds[1:], strict=True)
    ]


def assign_part(
    part: str | Path,
    centroids: str | Path,
    out_file: str | Path,
    cfg: ClusterConfig,
    split: str = "unlabeled",
    kept: tuple[Sequence[int], Sequence[int]] = ((), ()),
) -> PartLabels:
    """Label one embeddings part with the nearest of the saved centroids; write it atomically.
    `kept`: (row numbers within the part's `split` rows, groups) of rows that keep their
    group instead (the rows Ward merged).

    A plain function of files, so any engine can run it where the files are reachable.
    """
    table = read_embeddings(part, splits=[split])
    if len(table):
        x, fitted = unit_rows(table.embeddings), np.load(centroids)
        assignments, distances = assign(x, fitted)
        rows, groups = (np.asarray(v, dtype=np.int64) for v in kept)
        if rows.size:
            keep_groups(x, assignments, distances, Fit(fitted, groups), rows)
    else:
        assignments, distances = np.zeros(0, np.int64), np.zeros(0, np.float32)
    metadata = _pseudo_label_metadata(cfg, split, table.metadata)
    write_pseudo_labels(out_file, table.image_ids, assignments, distances, metadata)
    labeled = table.labels >= 0
    return PartLabels(
        sizes=np.bincount(assignments, minlength=cfg.k),
        labeled_clusters=assignments[labeled],
        labeled_labels=np.asarray(table.labels)[labeled],
    )


def _map_in_process(calls: list[dict[str, Any]]) -> list[PartLabels]:
    return [assign_part(**call) for call in calls]


def _split_rows(part: Path, split: str) -> int:
    column = pq.read_table(part, columns=["split"]).column("split")
    return int(pc.sum(pc.equal(column, split)).as_py() or 0)


def _size_stats(sizes: np.ndarray) -> dict[str, Any]:
    return {
        "k": int(sizes.size),
        "n_points": int(sizes.sum()),
        "min_cluster_size": int(sizes.min()),
        "median_cluster_size": float(np.median(sizes)),
        "max_cluster_size": int(sizes.max()),
        "n_empty": int((sizes == 0).sum()),
    }


def _pseudo_label_metadata(
    cfg: ClusterConfig, split: str, embeddings_meta: dict[str, str]
) -> dict[bytes, bytes]:
    metadata = {
        b"slade.k": str(cfg.k).encode(),
        b"slade.seed": str(cfg.seed).encode(),
        b"slade.split": split.encode(),
        b"slade.config": cfg.model_dump_json().encode(),
    }
    if "slade.model" in embeddings_meta:  # lineage: which teacher made these pseudo labels
        metadata[b"slade.model"] = embeddings_meta["slade.model"].encode()
    return metadata


def write_pseudo_labels(
    path: str | os.PathLike,
    image_ids: Sequence[str],
    clusters: Any,
    distances: Any = None,
    metadata: dict[bytes, bytes] | None = None,
) -> Path:
    """Write a pseudo-label file atomically; return its path. Columns: image_id (string),
    cluster (int64, the pseudo label), distance (float32: squared L2 of the unit embedding to
    its cluster's centre; 0 where there is none, e.g. hidden species as oracle labels).
    `metadata`: the Parquet key-value metadata (k, seed, config, lineage, stats)."""
    clusters = np.asarray(clusters, dtype=np.int64)
    if distances is None:
        distances = np.zeros(len(clusters), dtype=np.float32)
    table = pa.table(
        {
            "image_id": pa.array(np.asarray(image_ids, dtype=object), pa.string()),
            "cluster": pa.array(clusters, pa.int64()),
            "distance": pa.array(np.asarray(distances, dtype=np.float32), pa.float32()),
        }
    ).replace_schema_metadata(metadata)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)
