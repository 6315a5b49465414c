"""Shards of the index and the partitioned Parquet datasets they become.

An unlabeled set of millions of images does not fit one process: extraction maps over
shards (fixed row ranges of the selected index rows) and writes one part per shard;
clustering reads the parts one at a time. A dataset is a directory `<name>.parquet/` of
`part-<shard:05d>.parquet` files, so a re-run overwrites a part instead of adding one and
pyarrow (and pandas) read the directory as one table, in shard order. A single Parquet file
is a one-part dataset, so readers take both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from slade_core.io import file_stats_digest, stable_hash

PART_GLOB = "part-*.parquet"


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of the selected index rows, with digests naming their content."""

    number: int
    start: int
    stop: int
    rows_digest: str  # image ids, paths, splits and labels of the rows
    files_digest: str  # sizes and modification times of the image files

    @property
    def part_name(self) -> str:
        return part_name(self.number)

    def __len__(self) -> int:
        return self.stop - self.start


def part_name(number: int) -> str:
    return f"part-{number:05d}.parquet"


def select_rows(index_path: str | os.PathLike, splits: Sequence[str]) -> pd.DataFrame:
    """The index rows whose split is in `splits`, in index order (what gets sharded)."""
    splits = [splits] if isinstance(splits, str) else list(splits)
    index = pd.read_parquet(index_path)
    frame = index[index["split"].isin(splits)].reset_index(drop=True)
    if frame.empty:
        raise ValueError(
            f"no rows of {index_path} have split in {splits}; "
            f"available splits: {sorted(index['split'].unique())}"
        )
    return frame


def plan_shards(frame: pd.DataFrame, rows_per_shard: int) -> list[Shard]:
    """Consecutive shards of at most `rows_per_shard` rows covering `frame`."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    return [
        _shard(frame, number, start, min(start + rows_per_shard, len(frame)))
        for number, start in enumerate(range(0, len(frame), rows_per_shard))
    ]


def shard_rows(frame: pd.DataFrame, shard: Shard) -> pd.DataFrame:
    """The shard's rows of `frame`; fails when they are not the rows it was planned on."""
    rows = frame.iloc[shard.start : shard.stop].reset_index(drop=True)
    if _rows_digest(rows) != shard.rows_digest:
        raise ValueError(
            f"shard {shard.number} no longer matches the index (rows {shard.start}:{shard.stop} "
            "changed since it was planned); plan the shards again from the current index"
        )
    return rows


def dataset_parts(path: str | os.PathLike) -> list[Path]:
    """The part files of a dataset directory in shard order (a file is its own one part)."""
    path = Path(path)
    if path.is_file():
        return [path]
    parts = sorted(path.glob(PART_GLOB))
    if not parts:
        raise FileNotFoundError(
            f"{path} is neither a Parquet file nor a dataset directory with {PART_GLOB} files"
        )
    return parts


def read_dataset(
    path: str | os.PathLike, columns: Sequence[str] | None = None, filters=None
) -> pa.Table:
    """All parts as one table in shard order, with the first part's schema metadata."""
    parts = dataset_parts(path)
    schema = pq.read_schema(parts[0])
    table = pq.read_table([str(p) for p in parts], columns=columns, filters=filters, schema=schema)
    return table.replace_schema_metadata(schema.metadata)


def _shard(frame: pd.DataFrame, number: int, start: int, stop: int) -> Shard:
    rows = frame.iloc[start:stop]
    return Shard(number, start, stop, _rows_digest(rows), file_stats_digest(rows["path"]))


def _rows_digest(rows: pd.DataFrame) -> str:
    columns = ["image_id", "path", "split", "label"]
    return stable_hash(rows[columns].astype(str).to_numpy().tolist())
