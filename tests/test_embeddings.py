"""embeddings.parquet: exact schema + metadata, streaming in batches, round trip."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_features import make_index, tiny_model

from slade_core.checkpoints import save_checkpoint
from slade_core.config import RuntimeConfig
from slade_core.embeddings import extract_embeddings, read_embeddings
from slade_core.images import IndexDataset, build_transform
from slade_core.io import file_digest


def _setup(tmp_path, trainable_blocks=0):
    frame = make_index(tmp_path, n=7)
    index = tmp_path / "index.parquet"
    frame.to_parquet(index)
    model = tiny_model(trainable_blocks=trainable_blocks)
    checkpoint = save_checkpoint(model, tmp_path / "m.pt", {"stage": "teacher"})
    runtime = RuntimeConfig(feature_cache_dir=tmp_path / "cache", batch_size=2)
    return frame, index, model.eval(), checkpoint, runtime


def _expected(model, frame):
    mean, std = model.normalization()
    dataset = IndexDataset(frame, build_transform(model.spec.image_size, False, mean, std))
    with torch.inference_mode():
        return model(torch.stack([dataset[i][0] for i in range(len(frame))])).numpy()


@pytest.mark.parametrize("trainable_blocks", [0, -1])
def test_extract_streams_batches_with_exact_schema(tmp_path, trainable_blocks):
    frame, index, model, checkpoint, runtime = _setup(tmp_path, trainable_blocks)
    out = tmp_path / "out" / "embeddings.parquet"
    info = extract_embeddings(checkpoint, index, out, ["train", "unlabeled"], runtime)
    assert (info.path, info.count, info.dim) == (out, 7, 8)
    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_row_groups == 4  # one per batch of 2: written streaming
    schema = parquet.schema_arrow
    assert schema.names == ["image_id", "split", "label", "embedding"]
    assert schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert schema.field("label").type == pa.int64()
    assert schema.metadata == {
        b"slade.model": file_digest(checkpoint)[:16].encode(),
        b"slade.dim": b"8",
        b"slade.normalized": b"true",
    }
    table = read_embeddings(out)
    assert list(table.image_ids) == list(frame["image_id"])
    assert list(table.splits) == list(frame["split"])
    assert table.labels.dtype == np.int64 and list(table.labels) == list(frame["label"])
    assert table.embeddings.shape == (7, 8) and table.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(table.embeddings, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(table.embeddings, _expected(model, frame), atol=1e-5)
    assert table.metadata["slade.dim"] == "8"
    assert not list(out.parent.glob(".*tmp*"))  # atomic: no temp leftovers


def test_split_selection_and_filtering(tmp_path):
    frame, index, _, checkpoint, runtime = _setup(tmp_path)
    out = tmp_path / "e.parquet"
    info = extract_embeddings(checkpoint, index, out, "unlabeled", runtime)
    assert info.count == 3
    both = tmp_path / "both.parquet"
    extract_embeddings(checkpoint, index, both, ["train", "unlabeled"], runtime)
    only = read_embeddings(both, splits=["unlabeled"])
    assert set(only.splits) == {"unlabeled"} and len(only) == 3
    np.testing.assert_allclose(only.embeddings, read_embeddings(out).embeddings, atol=1e-6)
    assert only.metadata["slade.normalized"] == "true"
    empty = read_embeddings(both, splits=["test"])
    assert len(empty) == 0 and empty.embeddings.shape == (0, 8)
    with pytest.raises(ValueError, match="available splits"):
        extract_embeddings(checkpoint, index, out, ["query"], runtime)
