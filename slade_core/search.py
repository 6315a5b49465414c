"""From a trained checkpoint to image search: a servable embedder and a FAISS gallery index.

`ImageEmbedder` wraps an `EmbeddingNet` with the evaluation preprocessing (resize the
shorter side to image_size * 256/224, centre crop, scale to 0..1, normalise), so it maps a
batch of raw RGB images (uint8 [N, H, W, 3]) to L2-normalised embeddings [N, d]: this is the
module logged as the MLflow model.

A gallery index is two files in one folder:
- `gallery.faiss`: a FAISS `IndexFlatL2` over the gallery's L2-normalised embeddings, so a
  search returns squared L2 distances (0 = identical, 4 = opposite; the metrics' distance);
- `gallery.parquet`: row `id` of the FAISS index -> `image_id`, `path`, `label`,
  `class_name`; metadata `slade.dim`, `slade.source`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import ImageOps
from torch import nn
from torchvision.transforms import functional as TF

from slade_core.config import RuntimeConfig
from slade_core.embeddings import extract_embeddings, read_embeddings
from slade_core.evaluate import RetrievalExample, draw_examples_grid, evaluation_protocol
from slade_core.images import eval_resize, load_rgb
from slade_core.io import atomic_path
from slade_core.metrics import retrieval_metrics
from slade_core.models import EmbeddingNet

INDEX_FILE = "gallery.faiss"
ROWS_FILE = "gallery.parquet"
GALLERY_FILES = (INDEX_FILE, ROWS_FILE)
ROWS_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("label", pa.int64()),
        ("class_name", pa.string()),
    ]
)


class ImageEmbedder(nn.Module):
    """Raw RGB images (uint8 [N, H, W, 3], one size per batch) -> L2-normalised embeddings."""

    def __init__(self, net: EmbeddingNet) -> None:
        super().__init__()
        self.net = net.eval()
        self.image_size = net.spec.image_size
        self.resize_to = eval_resize(self.image_size)  # as build_transform(train=False)
        mean, std = net.normalization()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 images [N, H, W, 3], got shape {tuple(images.shape)}; "
                "use slade_core.search.image_array(path) for one file"
            )
        x = images.permute(0, 3, 1, 2).float() / 255.0
        x = TF.resize(x, self.resize_to, antialias=True)
        x = TF.center_crop(x, [self.image_size, self.image_size])
        return self.net((x - self.mean) / self.std)

    def example_input(self, path: str | os.PathLike) -> np.ndarray:
        """One real image at the model's input size, as the batch [1, S, S, 3] it takes."""
        size = (self.image_size, self.image_size)
        return np.asarray(ImageOps.fit(load_rgb(path), size), dtype=np.uint8)[None]


def image_array(path: str | os.PathLike) -> np.ndarray:
    """A file as the uint8 batch [1, H, W, 3] an ImageEmbedder takes."""
    return np.array(load_rgb(path), dtype=np.uint8)[None]  # a writable copy for torch


@torch.inference_mode()
def embed_images(embedder: nn.Module, paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """[N, d] float32 embeddings of image files, one forward pass per image (sizes differ)."""
    embedder.eval()
    rows = [embedder(torch.from_numpy(image_array(p))).float().cpu().numpy() for p in paths]
    return np.concatenate(rows, axis=0).astype(np.float32)


def score_embedder(
    embedder: nn.Module, index_path: str | os.PathLike, recall_at: Sequence[int] = (1,)
) -> dict[str, float]:
    """Retrieval metrics of an embedder on the index's evaluation protocol, from the image
    files (so models from different runs are compared on exactly the same inputs)."""
    index = pd.read_parquet(index_path, columns=["path", "label", "split"])
    protocol, splits = evaluation_protocol(index["split"].unique())
    rows = index[index["split"].isin(splits)]
    embeddings = embed_images(embedder, rows["path"].tolist())
    labels = rows["label"].to_numpy()
    if protocol == "test-vs-test":
        return retrieval_metrics(embeddings, labels, recall_at=recall_at)
    query = (rows["split"] == "query").to_numpy()
    return retrieval_metrics(
        embeddings[query], labels[query], embeddings[~query], labels[~query], recall_at
    )


@dataclass(frozen=True)
class Neighbour:
    rank: int
    distance: float  # squared L2 between unit vectors
    image_id: str
    path: str
    label: int
    class_name: str


class GalleryIndex:
    """A FAISS index over gallery embeddings plus the rows it maps ids to."""

    def __init__(self, index: faiss.Index, rows: pd.DataFrame, source: str) -> None:
        if index.ntotal != len(rows):
            raise ValueError(f"gallery index has {index.ntotal} vectors for {len(rows)} rows")
        self.index, self.rows, self.source = index, rows.reset_index(drop=True), source

    @property
    def dim(self) -> int:
        return self.index.d

    @classmethod
    def from_embeddings(
        cls, embeddings: np.ndarray, rows: pd.DataFrame, source: str
    ) -> GalleryIndex:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        index = faiss.IndexFlatL2(embeddings.shape[1])
        index.add(embeddings)
        rows = rows[["image_id", "path", "label", "class_name"]].reset_index(drop=True)
        return cls(index, rows.assign(id=np.arange(len(rows), dtype=np.int64)), source)

    def save(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write gallery.faiss + gallery.parquet atomically; returns both paths."""
        out_dir = Path(out_dir)
        with atomic_path(out_dir / INDEX_FILE) as tmp:
            faiss.write_index(self.index, str(tmp))
        table = pa.Table.from_pandas(
            self.rows[ROWS_SCHEMA.names], schema=ROWS_SCHEMA, preserve_index=False
        ).replace_schema_metadata({"slade.dim": str(self.dim), "slade.source": self.source})
        with atomic_path(out_dir / ROWS_FILE) as tmp:
            pq.write_table(table, tmp)
        return [out_dir / name for name in GALLERY_FILES]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> GalleryIndex:
        folder = Path(folder)
        missing = [name for name in GALLERY_FILES if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} has no {missing}: not a slade gallery index (a model logged by the "
                "publish stage carries one under extra_files/)"
            )
        table = pq.read_table(folder / ROWS_FILE)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        index = faiss.read_index(str(folder / INDEX_FILE))
        return cls(index, table.to_pandas(), meta.get("slade.source", ""))

    def search(self, queries: np.ndarray, k: int) -> list[list[Neighbour]]:
        """Top-k gallery rows of each query embedding, nearest first."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"query embeddings have shape {queries.shape}; this gallery holds {self.dim}-d "
                "vectors (was the index built with another model?)"
            )
        k = min(k, self.index.ntotal)
        distances, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [
            [
                Neighbour(
                    rank=r + 1,
                    distance=float(d),
                    image_id=str(self.rows.at[int(i), "image_id"]),
                    path=str(self.rows.at[int(i), "path"]),
                    label=int(self.rows.at[int(i), "label"]),
                    class_name=str(self.rows.at[int(i), "class_name"]),
                )
                for r, (d, i) in enumerate(zip(dist_row, id_row, strict=True))
                if i >= 0
            ]
            for dist_row, id_row in zip(distances, ids, strict=True)
        ]


def build_gallery(
    checkpoint_path: str | os.PathLike,
    index_path: str | os.PathLike,
    splits: Sequence[str],
    out_dir: str | os.PathLike,
    runtime: RuntimeConfig,
    source: str,
) -> GalleryIndex:
    """Embed the index rows of `splits` with the checkpoint and save their FAISS index."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = extract_embeddings(
        checkpoint_path, index_path, out_dir / "gallery_embeddings.parquet", splits, runtime
    )
    table = read_embeddings(info.path)
    rows = pd.read_parquet(index_path).set_index("image_id").loc[table.image_ids].reset_index()
    gallery = GalleryIndex.from_embeddings(table.embeddings, rows, source)
    gallery.save(out_dir)
    info.path.unlink()
    return gallery


def draw_search_grid(
    queries: Sequence[str | os.PathLike],
    results: Sequence[Sequence[Neighbour]],
    path: str | os.PathLike,
) -> Path:
    """PNG: one row per query image, then its neighbours (border: grey, unknown relevance)."""
    examples = [
        RetrievalExample(
            model=Path(query).name,
            query={"path": str(query), "label": None},
            neighbours=[
                {"path": n.path, "label": n.label, "caption": n.class_name or str(n.label)}
                for n in hits
            ],
        )
        for query, hits in zip(queries, results, strict=True)
    ]
    return draw_examples_grid(examples, path)
