"""Embedding extraction to `embeddings.parquet` (a file, or one part per shard), and reading it.

Batches are streamed to a pyarrow ParquetWriter, so memory stays flat however large the
index. With a frozen prefix (trainable_blocks >= 0) the cached, memory-mapped eval-view
prefix outputs are reused and only the suffix and head run. A whole trainable trunk (-1)
embeds the centre crops of the decoded-image cache (`slade_core.decoded`, the one training
built; runtime.decoded_cache=False: PIL's eval transform). Schema: README "File schemas"
(`embeddings.parquet`). `extract_embedding_shard` writes one shard's rows as one part of the
partitioned dataset (`slade_core.shards`); `read_embeddings` reads a file or a dataset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from slade_core.augment import DeviceAugment
from slade_core.config import ModelConfig, RuntimeConfig
from slade_core.decoded import decoded_images
from slade_core.device import resolve_device
from slade_core.features import prefix_feature_file
from slade_core.images import IndexDataset, build_transform
from slade_core.io import atomic_path, file_digest, stable_hash
from slade_core.models import EmbeddingNet, create_model, load_model
from slade_core.shards import Shard, read_dataset, select_rows, shard_rows
from slade_core.workers import loader_workers


@dataclass(frozen=True)
class EmbeddingsInfo:
    path: Path
    count: int
    dim: int


@dataclass(frozen=True)
class EmbeddingTable:
    image_ids: np.ndarray  # [N] str
    splits: np.ndarray  # [N] str
    labels: np.ndarray  # [N] int64
    embeddings: np.ndarray  # [N, d] float32, unit length
    metadata: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_ids)


def embeddings_schema(dim: int, model_digest: str) -> pa.Schema:
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("split", pa.string()),
            ("label", pa.int64()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ],
        metadata={
            b"slade.model": model_digest.encode(),
            b"slade.dim": str(dim).encode(),
            b"slade.normalized": b"true",
        },
    )


def extract_embeddings(
    checkpoint_path: str | os.PathLike,
    index_path: str | os.PathLike,
    out_path: str | os.PathLike,
    splits: Sequence[str],
    runtime: RuntimeConfig,
) -> EmbeddingsInfo:
    """Embed the index rows whose split is in `splits` (index order) into a parquet file."""
    model, _ = load_model(checkpoint_path)
    frame = select_rows(index_path, splits)
    return _write_embeddings(model, frame, out_path, runtime, model_digest(checkpoint_path))


def extract_embedding_shard(
    checkpoint_path: str | os.PathLike,
    index_path: str | os.PathLike,
    out_path: str | os.PathLike,
    splits: Sequence[str],
    shard: Shard,
    runtime: RuntimeConfig,
) -> EmbeddingsInfo:
    """Embed one shard of the `splits` rows into its own part file (same schema, atomic)."""
    model, _ = load_model(checkpoint_path)
    frame = shard_rows(select_rows(index_path, splits), shard)
    return _write_embeddings(model, frame, out_path, runtime, model_digest(checkpoint_path))


def model_digest(checkpoint_path: str | os.PathLike) -> str:
    """The checkpoint's content digest, as recorded in the `slade.model` metadata."""
    return file_digest(checkpoint_path)[:16]


def extract_trunk_features(
    spec: ModelConfig,
    index_path: str | os.PathLike,
    out_path: str | os.PathLike,
    splits: Sequence[str],
    runtime: RuntimeConfig,
) -> EmbeddingsInfo:
    """The untrained trunk's own pooled features (L2-normalised, no head) in the embeddings
    schema: the "what did training add" baseline. Reuses the prefix cache of `spec`."""
    model = create_model(spec)
    digest = "pretrained-trunk-" + stable_hash(spec.model_dump(mode="json"), length=8)
    frame = select_rows(index_path, splits)
    return _write_embeddings(model, frame, out_path, runtime, digest, head=False)


def _write_embeddings(
    model: EmbeddingNet,
    frame: pd.DataFrame,
    out_path: str | os.PathLike,
    runtime: RuntimeConfig,
    model_digest: str,
    head: bool = True,
) -> EmbeddingsInfo:
    device = resolve_device(runtime.device)
    model.to(device).eval()
    dim = model.spec.embedding_dim if head else model.trunk_dim
    schema = embeddings_schema(dim, model_digest)
    with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for rows, emb in _embedding_batches(model, frame, runtime, device, head):
            part = frame.iloc[rows]
            values = pa.array(emb.reshape(-1), type=pa.float32())
            writer.write_table(
                pa.Table.from_arrays(
                    [
                        pa.array(part["image_id"].astype(str), pa.string()),
                        pa.array(part["split"].astype(str), pa.string()),
                        pa.array(part["label"].astype(np.int64), pa.int64()),
                        pa.FixedSizeListArray.from_arrays(values, dim),
                    ],
                    schema=schema,
                )
            )
    return EmbeddingsInfo(Path(out_path), len(frame), dim)


def _embedding_batches(
    model: EmbeddingNet,
    frame: pd.DataFrame,
    runtime: RuntimeConfig,
    device: torch.device,
    head: bool,
) -> Iterator[tuple[slice, np.ndarray]]:
    """(row slice, float32 embeddings) per batch, in frame order; `head=False` gives the
    L2-normalised pooled trunk features instead."""
    bs = runtime.batch_size

    def embed(prefix_output: torch.Tensor) -> np.ndarray:
        if head:
            return _numpy(model.embed_features(prefix_output))
        return _numpy(F.normalize(model.suffix(prefix_output).float(), dim=-1))

    if model.mode.caches_prefix:
        features = np.load(prefix_feature_file(model, frame, None, runtime), mmap_mode="r")
        with torch.inference_mode():
            for start in range(0, len(frame), bs):
                # copy (the memmap is read-only) and widen float16 maps to float32
                x = torch.from_numpy(np.array(features[start : start + bs], dtype=np.float32))
                yield slice(start, start + len(x)), embed(x.to(device))
        return
    cuda = device.type == "cuda"
    mean, std = model.normalization()
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    if runtime.decoded_cache:
        pixels = decoded_images(frame, model.spec.image_size, runtime)
        augment = DeviceAugment(model.spec.image_size, mean, std)
        with torch.inference_mode(), torch.autocast(device.type, enabled=cuda and runtime.amp):
            for start in range(0, len(frame), bs):
                batch = torch.from_numpy(np.array(pixels[start : start + bs]))  # writable copy
                images = augment.eval_view(batch.to(device, non_blocking=True))
                images = images.contiguous(memory_format=memory_format)
                yield slice(start, start + len(batch)), embed(images)
        return
    loader = DataLoader(
        IndexDataset(frame, build_transform(model.spec.image_size, False, mean, std)),
        batch_size=bs,
        num_workers=loader_workers(runtime),
        pin_memory=cuda,
    )
    with torch.inference_mode(), torch.autocast(device.type, enabled=cuda and runtime.amp):
        for images, rows in loader:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            start = int(rows[0])
            yield slice(start, start + len(rows)), embed(images)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()


def read_embeddings(path: str | os.PathLike, splits: Sequence[str] | None = None) -> EmbeddingTable:
    """Load an embeddings.parquet file or dataset (optionally only some splits) as numpy."""
    if isinstance(splits, str):
        splits = [splits]
    filters = None if splits is None else [("split", "in", list(splits))]
    table = read_dataset(path, filters=filters)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    column = table.column("embedding")
    dim = table.schema.field("embedding").type.list_size
    values = column.combine_chunks().flatten() if column.num_chunks else pa.array([], pa.float32())
    return EmbeddingTable(
        image_ids=np.asarray(table.column("image_id").to_pylist(), dtype=object),
        splits=np.asarray(table.column("split").to_pylist(), dtype=object),
        labels=table.column("label").to_numpy().astype(np.int64),
        embeddings=values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim),
        metadata=meta,
    )
