"""Decoded-image cache: the images of a whole-trunk run decoded once, as uint8 pixels.

Training the whole trunk (model.trainable_blocks = -1) on a GPU is bound by JPEG decoding
if every step decodes with PIL (~300 images/s per core against ~3,650 images/s of ResNet-50
training in bf16 on an H100). So each image is decoded once: `load_rgb` (EXIF rotation,
CMYK / palette / grayscale to RGB), its shorter side resized to
`stored_size(image_size)` = int(image_size * 256 / 224) with PIL's bilinear filter (the eval
transform's resize: 256 px for 224 px training), and the centre square of that side kept.
A frame's images go into one [N, S, S, 3] uint8 .npy (NHWC, rows in frame order), read
memory-mapped; a step then only crops, flips and normalises the batch on its device
(`slade_core.augment`). 9.4 GB for 48,000 images at 256 px, 1.2 GB for CUB-200.

The pass runs once per frame on a thread pool as wide as the machine's usable CPUs (PIL
releases the GIL while it decodes and resizes), with a progress bar; the file is written
under a temporary name and renamed when complete. An unreadable image stops the pass with
`UnreadableImageError` naming the file and what to do; no cache file is left behind.

Cache key: format version, stored size, the ordered image ids, and the image files' paths,
sizes and modification times (an image rewritten under its path gets a new file). It does not
depend on the model, the seed or the stage, so the teacher, the student, extraction and every
run on the machine share one file per frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd
from torchvision.transforms import functional as TF
from tqdm.auto import tqdm

from slade_core.config import RuntimeConfig
from slade_core.features import cache_dir
from slade_core.images import eval_resize, load_rgb
from slade_core.io import atomic_path, file_stats_digest, stable_hash
from slade_core.workers import usable_cpus

# Bump when decode_image or the file layout changes, so old cache files are not reused.
FORMAT = "slade-decoded-v1:load_rgb+resize(short,bilinear)+center-square|uint8-nhwc"


def stored_size(image_size: int) -> int:
    """Side of the stored square for a training resolution: the eval view's resize (256 for
    224), so the eval view is its centre crop."""
    return eval_resize(image_size)


def decode_image(path: str | os.PathLike, side: int) -> np.ndarray:
    """One image as the cache stores it: uint8 [side, side, 3], shorter side resized to
    `side` (torchvision Resize on the PIL image, bilinear) and centre-cropped."""
    image = load_rgb(path)
    return np.asarray(TF.center_crop(TF.resize(image, side), side), dtype=np.uint8)


def decoded_file(
    frame: pd.DataFrame, image_size: int, runtime: RuntimeConfig, workers: int | None = None
) -> Path:
    """Path of the [N, S, S, 3] uint8 .npy of `frame`'s images, building it if absent.

    `workers`: decode threads (None: the machine's usable CPUs)."""
    if "path" not in frame.columns or "image_id" not in frame.columns or len(frame) == 0:
        raise ValueError(
            "the decoded-image cache needs a non-empty index frame with 'path' and 'image_id'"
        )
    side = stored_size(image_size)
    paths = frame["path"].astype(str).tolist()
    key = stable_hash(
        {
            "format": FORMAT,
            "side": side,
            "image_ids": stable_hash(frame["image_id"].astype(str).tolist(), length=32),
            "image_files": file_stats_digest(paths),
        },
        length=24,
    )
    path = cache_dir(runtime) / f"decoded-{side}px-{key}.npy"
    if path.is_file():
        try:
            cached = np.load(path, mmap_mode="r")
            if cached.shape == (len(paths), side, side, 3) and cached.dtype == np.uint8:
                return path
        except (OSError, ValueError):
            pass  # unreadable leftover: rebuild below
    _build(paths, path, side, workers or usable_cpus())
    return path


def decoded_images(
    frame: pd.DataFrame, image_size: int, runtime: RuntimeConfig, workers: int | None = None
) -> np.ndarray:
    """`frame`'s images, uint8 [N, S, S, 3], memory-mapped read-only (see decoded_file)."""
    return np.load(decoded_file(frame, image_size, runtime, workers), mmap_mode="r")


def _build(paths: Sequence[str], path: Path, side: int, workers: int) -> None:
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(paths), side, side, 3)
        )

        pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="slade-decode")
        try:
            with tqdm(
                total=len(paths), desc=f"decoding images ({side} px)", unit="img", disable=None
            ) as bar:
                futures = [pool.submit(_fill, out, row, paths[row]) for row in range(len(paths))]
                for future in as_completed(futures):
                    future.result()  # an unreadable image: raise, cancel the rest below
                    bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        out.flush()
        del out


def _fill(out: np.ndarray, row: int, path: str) -> None:
    out[row] = decode_image(path, out.shape[1])


class DecodedImages:
    """Rows of one or more decoded caches, indexed as their concatenation (the training
    sources' row positions), gathered as whole batches.

    Holds file paths and opens the memory maps lazily, so it can go to DataLoader workers
    under any start method; each process maps the files once.
    """

    def __init__(self, files: Sequence[str | os.PathLike]) -> None:
        self.files = [Path(f) for f in files]
        sizes = [np.load(f, mmap_mode="r").shape[0] for f in self.files]
        self.offsets = np.cumsum([0, *sizes])
        self._arrays: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def arrays(self) -> list[np.ndarray]:
        if self._arrays is None:
            self._arrays = [np.load(f, mmap_mode="r") for f in self.files]
        return self._arrays

    def gather(self, positions: Sequence[int]) -> np.ndarray:
        """uint8 [B, S, S, 3] of the given row positions (in their order)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"row positions outside 0..{len(self) - 1}")
        arrays = self.arrays
        out = np.empty((len(positions), *arrays[0].shape[1:]), dtype=np.uint8)
        which = np.searchsorted(self.offsets, positions, side="right") - 1
        for k, (f, p) in enumerate(zip(which, positions, strict=True)):
            out[k] = arrays[f][p - self.offsets[f]]
        return out

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # workers map the files themselves
