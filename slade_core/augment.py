"""Batched augmentation on the batch's device, for images from the decoded-image cache.

Input: a uint8 batch [B, S, S, 3] (NHWC, `slade_core.decoded`'s layout) on any device.
Output: float32 [B, 3, size, size], normalised with the model's mean / std.

- `train_view`: per image a random resized crop with torchvision's RandomResizedCrop sampling
  (area 0.16-1 of the stored square, aspect ratio 3/4-4/3 log-uniform, 10 tries, then the
  whole square), resized to `size` with bilinear interpolation, and a horizontal flip with
  probability 0.5: one `affine_grid` + `grid_sample` for the whole batch, so it runs on the
  GPU when the batch is there. It equals torchvision's resized_crop (bilinear, no
  antialias) of the same box except on the outermost output pixels of an enlarged crop
  (torchvision clamps to the box there, grid_sample blends in the neighbouring pixel).
  Departures from `images.build_transform`: the crop is taken from the stored centre square
  (256 px for 224) rather than the whole original image, and resized without PIL's
  antialias filter (a shrink is at most 256 / 224 = 1.14x, so there is little to alias).
- `eval_view`: the centre `size` square of the stored one (the eval transform's Resize(size *
  256 / 224) + CenterCrop(size); offsets may differ by one pixel from rounding twice).

Crop and flip parameters are drawn on the CPU from the torch.Generator given, so a seed
gives the same augmentations on every device and whatever the batch's placement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from slade_core.images import TRAIN_CROP_SCALE


class DeviceAugment:
    """Random resized crop + flip + normalise (`train_view`); centre crop + normalise
    (`eval_view`)."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        scale: tuple[float, float] = TRAIN_CROP_SCALE,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"bad crop scale {scale} or ratio {ratio}")
        self.size = size
        self.scale = scale
        self.ratio = ratio
        self.flip = flip
        mean_ = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_ = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # x * scale + shift == (x / 255 - mean) / std, kept per device (no copy per batch)
        self._affine = {torch.device("cpu"): (1.0 / (255.0 * std_), -mean_ / std_)}

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, h, w] float in 0..255 -> (x / 255 - mean) / std."""
        if images.device not in self._affine:
            cpu = self._affine[torch.device("cpu")]
            self._affine[images.device] = tuple(t.to(images.device) for t in cpu)
        scale, shift = self._affine[images.device]
        return torch.addcmul(shift, images, scale)

    def eval_view(self, batch: torch.Tensor) -> torch.Tensor:
        """The centre `size` square of each image, normalised."""
        side = _check(batch, self.size)
        top = int(round((side - self.size) / 2.0))
        crop = batch[:, top : top + self.size, top : top + self.size, :]
        return self._normalise(crop.permute(0, 3, 1, 2).float()).contiguous()

    def crop_boxes(self, n: int, side: int, generator: torch.Generator) -> torch.Tensor:
        """[n, 4] float (x0, y0, w, h) in pixels, RandomResizedCrop's sampling on a square."""
        area = float(side * side)
        tries = 10
        target = torch.empty(n, tries).uniform_(*self.scale, generator=generator) * area
        log_ratio = torch.empty(n, tries).uniform_(
            math.log(self.ratio[0]), math.log(self.ratio[1]), generator=generator
        )
        aspect = torch.exp(log_ratio)
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        fits = (w > 0) & (h > 0) & (w <= side) & (h <= side)
        first = fits.float().argmax(dim=1, keepdim=True)  # the first try that fits
        w = torch.where(fits.any(1), w.gather(1, first).squeeze(1), float(side))
        h = torch.where(fits.any(1), h.gather(1, first).squeeze(1), float(side))
        u = torch.rand(n, 2, generator=generator)
        x0 = torch.floor(u[:, 0] * (side - w + 1))
        y0 = torch.floor(u[:, 1] * (side - h + 1))
        return torch.stack([x0, y0, w, h], dim=1)

    def train_view(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random resized crop + horizontal flip + normalise, on `batch`'s device."""
        side = _check(batch, self.size)
        n = batch.shape[0]
        x0, y0, w, h = self.crop_boxes(n, side, generator).unbind(1)
        flip = torch.rand(n, generator=generator) < self.flip
        # affine_grid maps output coordinates in [-1, 1] to input ones (align_corners=False:
        # -1 and 1 are the outer pixel edges): the crop's edges x0 and x0 + w, mirrored when
        # flipped.
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = torch.where(flip, -w, w) / side
        theta[:, 0, 2] = (2 * x0 + w) / side - 1
        theta[:, 1, 1] = h / side
        theta[:, 1, 2] = (2 * y0 + h) / side - 1
        theta = _to_device(theta, batch.device)
        grid = F.affine_grid(theta, [n, 3, self.size, self.size], align_corners=False)
        images = batch.permute(0, 3, 1, 2).float()
        out = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return self._normalise(out)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU tensor to `device` without a host-device synchronisation (pinned, non-blocking:
    a pageable copy would wait for every kernel queued before it)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _check(batch: torch.Tensor, size: int) -> int:
    if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 [B, S, S, 3] batch, got {batch.dtype} {tuple(batch.shape)}"
        )
    side = batch.shape[1]
    if batch.shape[2] != side or side < size:
        raise ValueError(f"expected square images of side >= {size}, got {tuple(batch.shape)}")
    return side
