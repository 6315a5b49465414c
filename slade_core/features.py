"""Trunk feature cache: the reason a frozen-trunk run is fast on a CPU.

With a frozen trunk, the only expensive part of a forward pass (the CNN) is a pure function
of (trunk weights, image, transform). Each "view" is therefore computed once and stored:
`view=None` is the eval transform, `view=i` the i-th train augmentation. Training then samples
among `runtime.cached_views` views per image and runs only the head.

Augmentation of view i for an image is seeded by (i, image_id) alone: it does not depend on
batch order, worker count, `runtime.seed` or which other images are in the frame, so every
seed, the teacher, the student and the benchmarks share one cache. Different runtime seeds
still differ in head initialisation, sampling order and which cached view each step uses.

Cache key: backbone, a digest of the trunk's actual weights (so a checkpoint, the lite0
package and timm weights can never be confused, and a trunk that was trained gets a new key),
image size, normalisation, transform recipe, view, the ordered image ids and the image files'
sizes and modification times (so an image rewritten under the same path is recomputed).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from slade_core.config import RuntimeConfig
from slade_core.images import IndexDataset, build_transform
from slade_core.io import atomic_path, file_stats_digest, stable_hash
from slade_core.models import EmbeddingNet, resolve_device

# Bump when build_transform or the view seeding changes, so old cache files are not reused.
_RECIPE = "v1:rrc(0.16,1)+flip|resize(256/224)+center"


def view_seeds(image_ids: list[str], view: int) -> list[int]:
    """Per-image RNG seed of augmentation view `view` (independent of everything else)."""
    return [int(stable_hash(["slade-view", view, i], length=15), 16) for i in image_ids]


def trunk_fingerprint(model: EmbeddingNet) -> str:
    """sha256 of the trunk's state_dict content (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.trunk.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_dir(runtime: RuntimeConfig) -> Path:
    """runtime.feature_cache_dir, or a per-machine temp folder when unset."""
    if runtime.feature_cache_dir is not None:
        return Path(runtime.feature_cache_dir)
    return Path(tempfile.gettempdir()) / "slade-feature-cache"


def trunk_feature_file(
    model: EmbeddingNet, frame: pd.DataFrame, view: int | None, runtime: RuntimeConfig
) -> Path:
    """Path of the cached [N, trunk_dim] float32 .npy for this view, computing it if absent."""
    if "image_id" not in frame.columns or len(frame) == 0:
        raise ValueError("trunk features need a non-empty index frame with an 'image_id' column")
    if view is not None and view < 0:
        raise ValueError(f"view must be None (eval transform) or >= 0, got {view}")
    image_ids = frame["image_id"].astype(str).tolist()
    mean, std = model.normalization()
    key = stable_hash(
        {
            "backbone": model.spec.backbone,
            "trunk": trunk_fingerprint(model),
            "image_size": model.spec.image_size,
            "normalization": [mean, std],
            "recipe": _RECIPE,
            "view": view,
            "image_ids": stable_hash(image_ids, length=32),
            "image_files": file_stats_digest(frame["path"].astype(str)),
        },
        length=24,
    )
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", model.spec.backbone)
    path = cache_dir(runtime) / f"{name}-{'eval' if view is None else f'view{view}'}-{key}.npy"
    if path.is_file():
        try:
            cached = np.load(path, mmap_mode="r")
            if cached.shape == (len(frame), model.trunk_dim) and cached.dtype == np.float32:
                return path
        except (OSError, ValueError):
            pass  # unreadable leftover: recompute below
    _compute(model, frame, view, runtime, path)
    return path


def cached_trunk_features(
    model: EmbeddingNet, frame: pd.DataFrame, view: int | None, runtime: RuntimeConfig
) -> torch.Tensor:
    """Trunk features [N, trunk_dim] (float32, CPU) of `frame`'s rows, in row order."""
    return torch.from_numpy(np.load(trunk_feature_file(model, frame, view, runtime)))


def _compute(
    model: EmbeddingNet,
    frame: pd.DataFrame,
    view: int | None,
    runtime: RuntimeConfig,
    path: Path,
) -> None:
    device = resolve_device(runtime.device)
    cuda = device.type == "cuda"
    mean, std = model.normalization()
    transform = build_transform(model.spec.image_size, view is not None, mean, std)
    seeds = None if view is None else view_seeds(frame["image_id"].astype(str).tolist(), view)
    loader = DataLoader(
        IndexDataset(frame, transform, seeds),
        batch_size=runtime.batch_size,
        shuffle=False,
        num_workers=runtime.num_workers,
        pin_memory=cuda,
    )
    # channels_last input alone makes convolutions run NHWC (about 1.5x on CPU for lite0)
    # without changing the caller's model.
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    was_training = model.training
    model.to(device).eval()
    label = "eval" if view is None else f"view {view}"
    try:
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float32, shape=(len(frame), model.trunk_dim)
            )
            with (
                torch.inference_mode(),
                torch.autocast(device.type, enabled=cuda and runtime.amp),
                tqdm(
                    total=len(frame), desc=f"trunk features ({label})", unit="img", disable=None
                ) as bar,
            ):
                for images, rows in loader:
                    images = images.to(device, non_blocking=True, memory_format=memory_format)
                    out[rows.numpy()] = model.trunk(images).float().cpu().numpy()
                    bar.update(len(rows))
            out.flush()
            del out
    finally:
        model.train(was_training)
