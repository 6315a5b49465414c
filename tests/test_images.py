"""Image loading (mode conversion, clear errors), transforms and the index dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from slade_core.images import IndexDataset, UnreadableImageError, build_transform, load_rgb

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def _noise(size=(40, 30), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("mode", "ext"),
    [("CMYK", "jpg"), ("L", "png"), ("P", "png"), ("RGBA", "png"), ("LA", "png"), ("1", "png")],
)
def test_load_rgb_converts_modes(tmp_path, mode, ext):
    path = tmp_path / f"img.{ext}"
    _noise().convert(mode).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.size == (40, 30)


def test_load_rgb_palette_transparency_becomes_white(tmp_path):
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    path = tmp_path / "t.png"
    image.save(path, transparency=0)
    assert load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


def test_load_rgb_16_bit_grayscale(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert np.asarray(image).max() == 255


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "missing"])
def test_load_rgb_unreadable_names_file(tmp_path, kind):
    path = tmp_path / f"bad_{kind}.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        _noise((64, 64)).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "text":
        path.write_text("not an image")
    with pytest.raises(UnreadableImageError, match=f"bad_{kind}.jpg"):
        load_rgb(path)


def test_transforms_shapes_and_eval_is_deterministic():
    image = _noise((50, 37))
    evaluate = build_transform(32, False, MEAN, STD)
    train = build_transform(32, True, MEAN, STD)
    assert evaluate(image).shape == train(image).shape == (3, 32, 32)
    assert torch.equal(evaluate(image), evaluate(image))


def test_index_dataset_seeds_make_augmentation_repeatable(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        _noise((48, 40), seed=i).save(paths[-1])
    frame = pd.DataFrame({"path": [str(p) for p in paths]})
    train = build_transform(24, True, MEAN, STD)
    seeded = IndexDataset(frame, train, seeds=[7, 8, 9])
    torch.manual_seed(1)
    first = [seeded[i][0] for i in (2, 0, 1)]
    torch.manual_seed(2)
    again = [seeded[i][0] for i in (2, 0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    image, pos = IndexDataset(frame, train)[1]
    assert pos == 1 and image.shape == (3, 24, 24)
    with pytest.raises(ValueError, match="seeds"):
        IndexDataset(frame, train, seeds=[1])
