"""Reading images and turning them into tensors.

Real collections hold CMYK JPEGs, palette PNGs, grayscale scans and the odd truncated file;
`load_rgb` turns the first kinds into RGB and the last into an error that names the file.
Transforms follow the reality-check protocol (REFERENCE.md section 3) scaled to `image_size`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import transforms as T


class UnreadableImageError(RuntimeError):
    """An image file that PIL cannot decode (missing, empty, truncated, not an image)."""


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB (EXIF rotation applied)."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now so truncated files fail here, not in a worker later
            return _to_rgb(ImageOps.exif_transpose(im))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImageError(
            f"cannot read image {os.fspath(path)!r}: {e}. Replace the file or drop it from "
            "the index (re-run prepare_data, whose image check lists unreadable files)"
        ) from e


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16/32-bit grayscale: rescale
        a = np.asarray(im, dtype=np.float32)
        span = float(a.max() - a.min()) or 1.0
        return Image.fromarray(((a - a.min()) * (255.0 / span)).astype(np.uint8)).convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):  # transparent pixels become white
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


# Area range of the training crop, as a share of the image (RandomResizedCrop's `scale`).
TRAIN_CROP_SCALE = (0.16, 1.0)


def eval_resize(image_size: int) -> int:
    """Shorter side the eval view resizes to before its centre crop (256 for 224)."""
    return int(image_size * 256 / 224)


def build_transform(
    image_size: int, train: bool, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """Train: RandomResizedCrop(TRAIN_CROP_SCALE) + flip. Eval: Resize(eval_resize) +
    CenterCrop."""
    if train:
        geometry = [
            T.RandomResizedCrop(image_size, scale=TRAIN_CROP_SCALE),
            T.RandomHorizontalFlip(),
        ]
    else:
        geometry = [T.Resize(eval_resize(image_size)), T.CenterCrop(image_size)]
    return T.Compose([*geometry, T.ToTensor(), T.Normalize(mean, std)])


class IndexDataset(Dataset):
    """Rows of an index frame as (image tensor, row position).

    `seeds` (one int per row) makes a random transform repeatable per image: the transform
    runs under a forked torch RNG seeded with that row's seed, whatever the batch order,
    worker count or global RNG state.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        transform: Callable[[Image.Image], torch.Tensor],
        seeds: Sequence[int] | None = None,
    ) -> None:
        if "path" not in frame.columns:
            raise ValueError("IndexDataset needs a 'path' column (an index.parquet frame)")
        if seeds is not None and len(seeds) != len(frame):
            raise ValueError(f"got {len(seeds)} seeds for {len(frame)} rows")
        self.paths = frame["path"].astype(str).tolist()
        self.transform = transform
        self.seeds = None if seeds is None else [int(s) for s in seeds]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, pos: int) -> tuple[torch.Tensor, int]:
        image = load_rgb(self.paths[pos])
        if self.seeds is None:
            return self.transform(image), pos
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seeds[pos])
            return self.transform(image), pos
