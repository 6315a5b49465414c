"""Where training batches come from: cached prefix features or decoded images.

A frozen prefix (model.trainable_blocks >= 0: the whole frozen trunk, or the stages before
the first trainable one) never changes its output for a given augmented image, so its
outputs are computed once per augmented view and cached on disk; each epoch then costs only
suffix, head (and basis) updates: epoch e uses view (e - 1) % runtime.cached_views.
A fully trainable trunk (-1) needs the images themselves: by default from the decoded-image
cache (`slade_core.decoded`: every image decoded once to uint8 at the training resolution),
cropped, flipped and normalised on the device (`slade_core.augment`), so PIL never runs in
the step; with runtime.decoded_cache=False decoded and augmented with PIL by DataLoader
workers every step.
Every source takes a batch sampler over the concatenation of `frames` and yields
(inputs on the device, row positions), and embeds inputs with `embed`. Under torchrun the
sampler yields only this rank's slice of each batch (see training.distributed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from slade_core.augment import DeviceAugment
from slade_core.config import RuntimeConfig
from slade_core.decoded import DecodedImages, decoded_file
from slade_core.device import Precision
from slade_core.features import cached_prefix_features
from slade_core.images import IndexDataset, build_transform
from slade_core.models import EmbeddingNet
from slade_core.training import distributed
from slade_core.workers import loader_workers


def read_split(index_path: str | os.PathLike, split: str) -> pd.DataFrame:
    """Rows of index.parquet with `split`, renumbered 0..n-1 (positions are row numbers)."""
    frame = pd.read_parquet(index_path)
    missing = {"image_id", "path", "label", "split"} - set(frame.columns)
    if missing:
        raise ValueError(
            f"{index_path} lacks columns {sorted(missing)}; re-create it with prepare_data"
        )
    rows = frame[frame["split"] == split].reset_index(drop=True)
    if rows.empty:
        counts = frame["split"].value_counts().to_dict()
        raise ValueError(
            f"{index_path} has no rows with split=={split!r} (splits: {counts}); check the "
            "data preset"
        )
    return rows


class CachedFeatureSource:
    """Batches of cached prefix outputs; `embed` runs the suffix and head.

    A row drawn twice into one batch is the same view twice: an identical input, so the
    trainers drop such repeats from their pair losses (`repeats_identical`).
    """

    repeats_identical = True

    def __init__(
        self,
        net: EmbeddingNet,
        frames: Sequence[pd.DataFrame],
        sampler,
        runtime: RuntimeConfig,
        precision: Precision,
    ) -> None:
        self.net = net
        self.frames = list(frames)
        self.sampler = sampler
        self.runtime = runtime
        self.precision = precision
        self._view: int | None = None
        self._features: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.sampler)

    def features(self, view: int) -> torch.Tensor:
        """Prefix outputs of all rows for one augmented view, on the device (last view kept).
        Distributed, rank 0 fills the disk cache while the other ranks wait, then all load."""
        if view != self._view:
            self._features = None  # free the previous view before loading the next
            with distributed.current().main_first():
                parts = [
                    cached_prefix_features(self.net, f, view, self.runtime) for f in self.frames
                ]
            self._features = torch.cat(parts).to(self.precision.device)
            self._view = view
        return self._features

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        features = self.features((epoch - 1) % self.runtime.cached_views)
        self.sampler.set_epoch(epoch)
        for batch in self.sampler:
            positions = torch.as_tensor(batch, dtype=torch.long)
            yield features[positions.to(features.device)], positions

    def embed(self, net: EmbeddingNet, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.float()  # partial-trunk maps are cached as float16
        if inputs.ndim == 4 and self.runtime.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            return net.embed_features(inputs).float()


class _WholeNetSource:
    """What both image sources share: the batch sampler, a per-(seed, epoch[, rank]) seed
    for the epoch's augmentations, the memory format, and `embed` through the whole net."""

    repeats_identical = False

    def __init__(self, sampler, runtime: RuntimeConfig, precision: Precision) -> None:
        self.sampler = sampler
        self.runtime = runtime
        self.precision = precision

    def __len__(self) -> int:
        return len(self.sampler)

    def _epoch_seed(self, epoch: int) -> int:
        self.sampler.set_epoch(epoch)
        entropy = [self.runtime.seed, epoch, *distributed.current().rank_key()]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.precision.channels_last else torch.contiguous_format

    def embed(self, net: EmbeddingNet, inputs: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            return net(inputs).float()


class DecodedImageSource(_WholeNetSource):
    """Batches from the decoded-image cache, augmented on the device; `embed` runs the
    whole net.

    DataLoader workers (runtime.num_workers) gather each batch's uint8 rows from the memory
    maps (pinned on CUDA); the main process moves them to the device and crops, flips and
    normalises there. Crop and flip parameters come from a generator seeded by (seed,
    epoch[, rank]): a run, and a run resumed at an epoch boundary, repeats its
    augmentations whatever the worker count. Every draw is a fresh crop, so repeats of a row
    in one batch are different views and stay valid positive pairs.
    Distributed, rank 0 builds the cache files while the other ranks wait.
    """

    def __init__(
        self,
        net: EmbeddingNet,
        frames: Sequence[pd.DataFrame],
        sampler,
        runtime: RuntimeConfig,
        precision: Precision,
    ) -> None:
        super().__init__(sampler, runtime, precision)
        size = net.spec.image_size
        with distributed.current().main_first():
            files = [decoded_file(frame, size, runtime) for frame in frames]
        self.images = _DecodedBatches(DecodedImages(files))
        self.augment = DeviceAugment(size, *net.normalization())

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self._epoch_seed(epoch))
        loader = DataLoader(
            self.images,
            batch_sampler=self.sampler,
            num_workers=loader_workers(self.runtime),
            pin_memory=self.precision.device.type == "cuda",
            collate_fn=_as_batch,
        )
        memory_format = self._memory_format()
        device = self.precision.device
        for pixels, positions in loader:
            # pinned on CUDA: both copies overlap the previous step's kernels, and positions
            # arrive on the device so the trainer's positions.to(device) does not synchronise
            pixels = pixels.to(device, non_blocking=True)
            positions = positions.to(device, non_blocking=True)
            images = self.augment.train_view(pixels, generator)
            yield images.contiguous(memory_format=memory_format), positions


class _DecodedBatches(torch.utils.data.Dataset):
    """Map-style dataset over decoded rows that a DataLoader fetches a batch at a time
    (`__getitems__`): (uint8 [B, S, S, 3], positions)."""

    def __init__(self, images: DecodedImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([pos])

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(self.images.gather(positions))
        return pixels, torch.as_tensor(positions, dtype=torch.long)


def _as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # __getitems__ already returns the whole batch


class ImageSource(_WholeNetSource):
    """Batches of train-augmented images through a DataLoader; `embed` runs the whole net.
    (runtime.decoded_cache=False: PIL decodes and augments every image every step.)

    Augmentations draw from torch's RNG (the global one with num_workers=0, per-worker seeds
    from a (seed, epoch[, rank]) generator otherwise), so a run repeats for a fixed worker
    and process count. Every draw is a fresh augmentation, so repeats of a row in one batch
    are different views and stay valid positive pairs.
    """

    def __init__(
        self,
        net: EmbeddingNet,
        frames: Sequence[pd.DataFrame],
        sampler,
        runtime: RuntimeConfig,
        precision: Precision,
    ) -> None:
        super().__init__(sampler, runtime, precision)
        mean, std = net.normalization()
        transform = build_transform(net.spec.image_size, True, mean, std)
        self.dataset = IndexDataset(pd.concat(list(frames), ignore_index=True), transform)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=loader_workers(self.runtime),
            pin_memory=self.precision.device.type == "cuda",
            generator=torch.Generator().manual_seed(self._epoch_seed(epoch)),
        )
        memory_format = self._memory_format()
        for images, positions in loader:
            images = images.to(self.precision.device, non_blocking=True)
            yield images.contiguous(memory_format=memory_format), positions


def make_source(
    net: EmbeddingNet,
    frames: Sequence[pd.DataFrame],
    sampler,
    runtime: RuntimeConfig,
    precision: Precision,
) -> CachedFeatureSource | DecodedImageSource | ImageSource:
    """Cached prefix features unless the whole trunk trains; images then, from the decoded
    cache (runtime.decoded_cache) or decoded with PIL every step."""
    if net.mode.caches_prefix:
        kind = CachedFeatureSource
    else:
        kind = DecodedImageSource if runtime.decoded_cache else ImageSource
    return kind(net, frames, sampler, runtime, precision)
