"""slade_core.search with a real FAISS index: gallery files, search order, the embedder's
preprocessing against the stages' transform, a gallery from a folder dataset, the grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from slade_core.checkpoints import save_checkpoint
from slade_core.config import ModelConfig, RuntimeConfig
from slade_core.data.prepare import index_dataset
from slade_core.data.preset import DatasetRef
from slade_core.images import build_transform, load_rgb
from slade_core.models import create_model
from slade_core.search import (
    GalleryIndex,
    ImageEmbedder,
    build_gallery,
    draw_search_grid,
    embed_images,
    image_array,
)


def _rows(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"g/{i}" for i in range(n)],
            "path": [f"/img/{i}.png" for i in range(n)],
            "label": [i % 3 for i in range(n)],
            "class_name": [f"class{i % 3}" for i in range(n)],
        }
    )


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_gallery_round_trip_and_nearest_first(tmp_path):
    embeddings = _unit(np.random.default_rng(0).normal(size=(12, 8)))
    gallery = GalleryIndex.from_embeddings(embeddings, _rows(12), "test split")
    gallery.save(tmp_path)
    loaded = GalleryIndex.load(tmp_path)
    assert (loaded.dim, loaded.source, len(loaded.rows)) == (8, "test split", 12)
    (hits,) = loaded.search(embeddings[5:6], k=4)
    assert [h.rank for h in hits] == [1, 2, 3, 4]
    assert hits[0].image_id == "g/5" and hits[0].distance == pytest.approx(0.0, abs=1e-5)
    assert (hits[0].label, hits[0].class_name, hits[0].path) == (2, "class2", "/img/5.png")
    distances = [h.distance for h in hits]
    assert distances == sorted(distances)
    expected = np.sort(((embeddings - embeddings[5]) ** 2).sum(axis=1))[:4]
    np.testing.assert_allclose(distances, expected, atol=1e-5)
    assert len(loaded.search(embeddings[:2], k=50)[0]) == 12  # k capped at the gallery size


def test_gallery_refuses_other_dimensions_and_missing_files(tmp_path):
    gallery = GalleryIndex.from_embeddings(_unit(np.ones((3, 4))), _rows(3), "x")
    with pytest.raises(ValueError, match="4-d vectors"):
        gallery.search(np.ones((1, 5), np.float32), k=1)
    with pytest.raises(FileNotFoundError, match="not a slade gallery index"):
        GalleryIndex.load(tmp_path)


def _image(path, seed: int, size=(48, 40)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


def test_embedder_matches_the_evaluation_transform(tmp_path):
    net = create_model(ModelConfig(weights="none", image_size=32, embedding_dim=8)).eval()
    embedder = ImageEmbedder(net)
    paths = [_image(tmp_path / f"{i}.png", i, size=(60 + 10 * i, 44)) for i in range(3)]
    got = embed_images(embedder, paths)
    mean, std = net.normalization()
    transform = build_transform(32, False, mean, std)
    with torch.inference_mode():
        expected = net(torch.stack([transform(load_rgb(p)) for p in paths])).numpy()
    assert got.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (np.sum(got * expected, axis=1) > 0.99).all()
    assert embedder.example_input(paths[2]).shape == (1, 32, 32, 3)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        embedder(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_gallery_from_a_folder_dataset_and_its_grid(tmp_path):
    for c in ("gull", "tern"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(3):
            _image(tmp_path / "photos" / c / f"{i}.png", hash((c, i)) % 1000)
    (tmp_path / "photos" / "tern" / "broken.png").write_bytes(b"not an image")
    ref = DatasetRef.model_validate(
        {"dataset": {"name": "shore", "type": "folder", "path": str(tmp_path / "photos")}}
    )
    index = index_dataset(ref, tmp_path / "downloads", "gallery", tmp_path / "g.parquet")
    frame = pd.read_parquet(index)
    assert len(frame) == 6 and set(frame["split"]) == {"gallery"}  # the broken file left out
    assert sorted(frame["label"].unique()) == [0, 1]

    net = create_model(ModelConfig(weights="none", image_size=32, embedding_dim=8))
    checkpoint = save_checkpoint(net, tmp_path / "m.pt", {})
    runtime = RuntimeConfig(device="cpu", feature_cache_dir=tmp_path / "cache")
    gallery = build_gallery(checkpoint, index, ["gallery"], tmp_path / "g", runtime, "shore")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "gallery.faiss",
        "gallery.parquet",
    ]
    query = frame["path"].iloc[4]
    results = gallery.search(embed_images(ImageEmbedder(net), [query]), k=3)
    assert results[0][0].path == query
    grid = draw_search_grid([query], results, tmp_path / "grid.png")
    assert Image.open(grid).size[1] > 100
    assert image_array(query).shape[0] == 1
