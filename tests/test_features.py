"""Trunk feature cache: hits skip the trunk, keys follow view/weights, not seed or batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from slade_core.config import ModelConfig, RuntimeConfig
from slade_core.features import cached_prefix_features, prefix_feature_file
from slade_core.models import create_model


def make_index(root: Path, n: int = 6) -> pd.DataFrame:
    """n small noise images on disk and an index frame (contract columns) describing them."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = root / "images" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(path)
        split = "train" if i % 2 == 0 else "unlabeled"
        rows.append((f"toy/{i}.png", str(path), i // 2 if split == "train" else -1, "", split))
    columns = ["image_id", "path", "label", "class_name", "split"]
    frame = pd.DataFrame(rows, columns=columns).assign(source="toy")
    return frame.astype({"label": "int64"})


def tiny_model(**kw):
    spec = {"backbone": "resnet10t", "weights": "none", "embedding_dim": 8, "image_size": 32}
    torch.manual_seed(0)
    return create_model(ModelConfig(**(spec | kw)))


def _counting(model) -> list[int]:
    calls: list[int] = []
    model.trunk.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    return calls


def test_cache_hit_returns_identical_tensor_without_recomputing(tmp_path):
    frame, model = make_index(tmp_path), tiny_model()
    calls = _counting(model)
    runtime = RuntimeConfig(feature_cache_dir=tmp_path / "cache", batch_size=4)
    first = cached_prefix_features(model, frame, None, runtime)
    assert first.shape == (6, model.trunk_dim) and first.dtype == torch.float32
    assert calls == [4, 2]
    again = cached_prefix_features(model, frame, None, runtime.model_copy(update={"seed": 5}))
    assert torch.equal(first, again) and calls == [4, 2]
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_views_differ_and_are_repeatable_across_batching(tmp_path):
    frame, model = make_index(tmp_path), tiny_model()
    runtime = RuntimeConfig(feature_cache_dir=tmp_path / "a", batch_size=4)
    eval_file = prefix_feature_file(model, frame, None, runtime)
    view0 = prefix_feature_file(model, frame, 0, runtime)
    view1 = prefix_feature_file(model, frame, 1, runtime)
    assert len({eval_file, view0, view1}) == 3
    assert not np.allclose(np.load(view0), np.load(view1))
    other = RuntimeConfig(feature_cache_dir=tmp_path / "b", batch_size=1, seed=3)
    assert prefix_feature_file(model, frame, 0, other).name == view0.name
    torch.testing.assert_close(
        cached_prefix_features(model, frame, 0, other), torch.from_numpy(np.load(view0))
    )


def test_key_follows_weights_images_and_size_and_mode_is_restored(tmp_path):
    frame, model = make_index(tmp_path), tiny_model()
    runtime = RuntimeConfig(feature_cache_dir=tmp_path / "c", batch_size=8)
    model.train()
    base = prefix_feature_file(model, frame, None, runtime)
    assert model.head.training  # computing features left the model's mode alone
    with torch.no_grad():
        model.trunk.conv1[0].weight.add_(1.0)
    assert prefix_feature_file(model, frame, None, runtime) != base
    assert prefix_feature_file(model, frame.iloc[:3], None, runtime) != base
    bigger = tiny_model(image_size=48)
    assert prefix_feature_file(bigger, frame, None, runtime) != base
