"""Prefix feature cache: the reason frozen- and partial-trunk runs are fast on a CPU.

The frozen prefix of the network (`EmbeddingNet.prefix`: the whole trunk when it is frozen,
the stages before the first trainable one otherwise) is the expensive part of a forward
pass and a pure function of (prefix weights, image, transform). Each "view" is therefore
computed once and stored: `view=None` is the eval transform, `view=i` the i-th train
augmentation. Training then cycles through `runtime.cached_views` views per image and runs
only the suffix and head. Pooled features (frozen trunk) are stored as float32, feature maps
(partial trunk, e.g. Lite0's 4x4x192 stage-5 maps at 128 px) as float16; both memory-mapped.

Augmentation of view i for an image is seeded by (i, image_id) alone: it does not depend on
batch order, worker count, `runtime.seed` or which other images are in the frame, so every
seed, the teacher, the student and the benchmarks share one cache. Different runtime seeds
still differ in head initialisation, sampling order and which cached view each step uses.

Cache key: backbone, which modules form the prefix, a digest of the prefix's actual weights
(so a checkpoint, the lite0 package and timm weights can never be confused, a trained prefix
gets a new key, and teacher and student share the maps of their common frozen prefix), image
size, normalisation, transform recipe, view, the ordered image ids and the image files' sizes
and modification times (so an image rewritten under the same path is recomputed).
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
from slade_core.device import resolve_device
from slade_core.images import IndexDataset, build_transform
from slade_core.io import atomic_path, file_stats_digest, stable_hash
from slade_core.models import EmbeddingNet
from slade_core.workers import loader_workers

# Bump when build_transform or the view seeding changes, so old cache files are not reused.
_RECIPE = "v1:rrc(0.16,1)+flip|resize(256/224)+center"


def view_seeds(image_ids: list[str], view: int) -> list[int]:
    """Per-image RNG seed of augmentation view `view` (independent of everything else)."""
    return [int(stable_hash(["slade-view", view, i], length=15), 16) for i in image_ids]


def prefix_fingerprint(model: EmbeddingNet) -> str:
    """sha256 of the prefix modules' state_dict content (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for module_name in model.prefix_modules():
        state = model.get_submodule(module_name).state_dict()
        for name, tensor in sorted(state.items()):
            t = tensor.detach().cpu().contiguous().reshape(-1)
            h.update(f"{module_name}.{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def prefix_output_shape(model: EmbeddingNet) -> tuple[int, ...]:
    """Shape of one image's prefix output at the model's image size."""
    if model.mode.frozen:
        return (model.trunk_dim,)
    size = model.spec.image_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model.prefix(torch.zeros(1, 3, size, size, device=device))
    finally:
        model.train(was_training)
    return tuple(out.shape[1:])


def cache_dir(runtime: RuntimeConfig) -> Path:
    """runtime.feature_cache_dir, or a per-machine temp folder when unset."""
    if runtime.feature_cache_dir is not None:
        return Path(runtime.feature_cache_dir)
    return Path(tempfile.gettempdir()) / "slade-feature-cache"


def prefix_feature_file(
    model: EmbeddingNet, frame: pd.DataFrame, view: int | None, runtime: RuntimeConfig
) -> Path:
    """Path of the cached [N, *prefix_output_shape] .npy for this view, computing it if
    absent (float32 pooled features of a frozen trunk, float16 maps of a partial one)."""
    if not model.mode.caches_prefix:
        raise ValueError(
            "model.trainable_blocks=-1 trains the whole trunk: there is no frozen prefix to "
            "cache; use trainable_blocks >= 0"
        )
    if "image_id" not in frame.columns or len(frame) == 0:
        raise ValueError("trunk features need a non-empty index frame with an 'image_id' column")
    if view is not None and view < 0:
        raise ValueError(f"view must be None (eval transform) or >= 0, got {view}")
    image_ids = frame["image_id"].astype(str).tolist()
    mean, std = model.normalization()
    shape = prefix_output_shape(model)
    dtype = np.float32 if len(shape) == 1 else np.float16
    key = stable_hash(
        {
            "backbone": model.spec.backbone,
            "prefix": model.prefix_modules(),
            "weights": prefix_fingerprint(model),
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
            if cached.shape == (len(frame), *shape) and cached.dtype == dtype:
                return path
        except (OSError, ValueError):
            pass  # unreadable leftover: recompute below
    _compute(model, frame, view, runtime, path, shape, dtype)
    return path


def cached_prefix_features(
    model: EmbeddingNet, frame: pd.DataFrame, view: int | None, runtime: RuntimeConfig
) -> torch.Tensor:
    """Prefix outputs [N, ...] (CPU; float32 or float16, see the module doc) of `frame`'s
    rows, in row order."""
    return torch.from_numpy(np.load(prefix_feature_file(model, frame, view, runtime)))


def _compute(
    model: EmbeddingNet,
    frame: pd.DataFrame,
    view: int | None,
    runtime: RuntimeConfig,
    path: Path,
    shape: tuple[int, ...],
    dtype: type,
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
        num_workers=loader_workers(runtime),
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
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(frame), *shape))
            with (
                torch.inference_mode(),
                torch.autocast(device.type, enabled=cuda and runtime.amp),
                tqdm(
                    total=len(frame), desc=f"prefix features ({label})", unit="img", disable=None
                ) as bar,
            ):
                for images, rows in loader:
                    images = images.to(device, non_blocking=True, memory_format=memory_format)
                    out[rows.numpy()] = model.prefix(images).float().cpu().numpy()
                    bar.update(len(rows))
            out.flush()
            del out
    finally:
        model.train(was_training)
