"""Data-parallel training under torchrun: one process per GPU (nccl), or CPU processes (gloo).

Every rank draws the same global m-per-class batch (samplers are pure functions of seed and
epoch), embeds its contiguous slice of it, and all-gathers the slices *with gradient*, so each
rank evaluates the loss on the whole global batch, exactly as a single process would. Pair
losses (contrastive, multi-similarity, the basis regulariser and the miner) need every pair
of the batch; a per-slice loss would drop all cross-slice pairs and change the objective.

Gradient scale: the loss is replicated on every rank, so the all-gather's backward (a sum
over ranks) hands each rank world_size x its slice's share of the gradient; DDP then averages
over ranks, which leaves exactly the single-process gradient. Modules after the gather (the
student's basis and classifier) compute identical gradients on every rank and need no sync.

A single process (no torchrun, or nproc_per_node=1) takes none of these paths and trains
bit for bit as before. Rank 0 alone writes files (resume state, checkpoint, history) and
shows progress; the trunk feature cache is computed by rank 0 while the others wait.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from slade_core.device import resolve_device
from slade_core.models import EmbeddingNet

# Ranks 1.. wait in a barrier while rank 0 computes the trunk feature cache, which can take
# far longer than torch's default 10 minute collective timeout on a large index.
TIMEOUT = timedelta(hours=2)

Embed = Callable[[EmbeddingNet, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; the defaults describe a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device this rank trains on: cuda:LOCAL_RANK when distributed on CUDA."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. fills a cache), the others after it is done."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def seed_rank(self, seed: int) -> None:
        """Give each rank its own torch RNG stream (image augmentations of its slice);
        call after model creation so every rank starts from the same weights."""
        if self.enabled:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))

    def rank_key(self) -> tuple[int, ...]:
        """Extra seed entropy that separates ranks; empty for a single process."""
        return (self.rank,) if self.enabled else ()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's equally sized `tensor` in rank order (differentiable)."""
        if not self.enabled:
            return tensor
        return _GatherWithGrad.apply(tensor)

    def all_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable `obj`, in rank order (e.g. per-rank RNG states)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def shard(self, sampler: Sampler, batch_size: int) -> Sampler:
        """This rank's slice of every global batch of `sampler` (`batch_size` entries each)."""
        if not self.enabled:
            return sampler
        if batch_size % self.world_size:
            raise ValueError(
                f"a global batch of {batch_size} cannot be split evenly over "
                f"{self.world_size} processes; use a batch size that is a multiple of the "
                "process count (nproc_per_node x nodes) or change the process count"
            )
        return ShardedBatchSampler(sampler, self.rank, self.world_size)

    def embedder(
        self, net: EmbeddingNet, embed: Embed, device: torch.device
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """inputs of this rank's slice -> embeddings of the whole global batch.

        Distributed, `net` runs under DDP (which only syncs parameters that require grad:
        the head, plus trunk blocks when they train; a frozen prefix on cached features never
        runs). With model.batchnorm="frozen" (default) BatchNorm layers use their loaded
        statistics on every rank, so there is nothing to synchronise and ranks stay
        identical. With "train" a trainable trunk gets synchronised BatchNorm on CUDA so
        batch statistics cover the global batch; gloo has no SyncBatchNorm, so on CPU they
        are per slice and rank 0's running statistics are broadcast.
        """
        if not self.enabled:
            return partial(embed, net)
        cuda = device.type == "cuda"
        batch_statistics = net.mode.trains_trunk and net.spec.batchnorm == "train"
        if cuda and batch_statistics:
            from timm.layers import convert_sync_batchnorm

            net.trunk = convert_sync_batchnorm(net.trunk)
        ddp = DistributedDataParallel(
            _Forward(net, embed),
            device_ids=[device.index] if cuda else None,
            forward_sync_buffers=batch_statistics,  # BatchNorm statistics follow rank 0
        )
        return lambda inputs: self.gather(ddp(inputs))


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward hands each rank the sum over ranks of the
    gradient of its own slice (the factor DDP's averaging then cancels, see the top)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        n = len(grad) // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


class _Forward(nn.Module):
    """Routes `embed(net, inputs)` through forward(), where DDP sets up its gradient sync."""

    def __init__(self, net: EmbeddingNet, embed: Embed) -> None:
        super().__init__()
        self.net = net
        self.embed = embed

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.embed(self.net, inputs)


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank r's contiguous r-th 1/world_size of each batch, so gathering the slices in rank
    order restores the global batch in its original order."""

    def __init__(self, sampler: Sampler, rank: int, world_size: int) -> None:
        self.sampler = sampler
        self.rank = rank
        self.world_size = world_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler:
            n = len(batch) // self.world_size
            yield batch[self.rank * n : (self.rank + 1) * n]


def current() -> Distributed:
    """The job this process belongs to (a single process unless a group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)


def from_env() -> Distributed:
    """Rank and world size from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    try:
        rank, world, local = (int(os.environ.get(k, v)) for k, v in defaults.items())
    except ValueError as e:
        raise ValueError(
            f"torchrun environment is malformed ({e}); launch with torchrun or unset "
            f"{', '.join(defaults)}"
        ) from e
    return Distributed(rank, world, local)


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[Distributed]:
    """Join the torchrun job for the block: nccl (one GPU per LOCAL_RANK) when `device`
    resolves to CUDA, gloo otherwise; a single process starts no group."""
    env = from_env()
    if not env.enabled or dist.is_initialized():
        yield current()
        return
    if resolve_device(device).type == "cuda":
        cuda = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(cuda)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=cuda)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    try:
        yield current()
    finally:
        dist.destroy_process_group()
