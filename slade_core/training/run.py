"""The training skeleton teacher and student share; a stage brings only its batches and loss.

`TrainingRun` does the rest, in an order that fixes every RNG draw: the config hash (the
resume key), seeding, device and precision, and the network on it (at construction); then,
once the stage has built its objective on `run.device`, per-rank seeding, the batch source
over the stage's sampler, the embedder (DDP under torchrun), dropping repeated rows and the
epoch loop (`epochs`); last the checkpoint and history (`finish`).

Repeats: on cached inputs a row drawn twice into one batch (a class or cluster smaller than
m) is the same input twice; only its first draw reaches the objective, so it never forms a
self-pair (`samplers.first_occurrences`). Decoded images are a fresh view on every draw and
are all kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Sampler

from slade_core.config import (
    ModelConfig,
    RankingLossConfig,
    RuntimeConfig,
    StudentConfig,
    TeacherConfig,
)
from slade_core.device import Precision, resolve_device
from slade_core.io import stable_hash
from slade_core.losses import build_ranking_loss
from slade_core.models import create_model
from slade_core.samplers import first_occurrences
from slade_core.training import distributed
from slade_core.training.data import make_source
from slade_core.training.loop import (
    EpochCallback,
    TrainResult,
    build_optimizer,
    finish,
    run_epochs,
    seed_everything,
)


@dataclass(frozen=True)
class Batch:
    """One step's embeddings of the global batch, repeated rows dropped."""

    embeddings: torch.Tensor
    positions: torch.Tensor  # row positions of the kept embeddings
    keep: torch.Tensor | None  # per drawn row: its first draw (None: every row kept)
    warmup: bool  # a warm-up step: the network gets no gradient (see loop.run_epochs)

    def kept(self, stop: int) -> int:
        """How many of the first `stop` drawn rows were kept."""
        return stop if self.keep is None else int(self.keep[:stop].sum())

    def repeated_share(self, start: int = 0) -> torch.Tensor | float:
        """The share of drawn rows from `start` on that repeat an earlier draw."""
        return 0.0 if self.keep is None else 1.0 - self.keep[start:].float().mean()


# objective(batch) -> (loss to minimise, per-step metrics to average)
Objective = Callable[[Batch], tuple[torch.Tensor, Mapping[str, torch.Tensor | float]]]


def ranking_objective(
    loss: RankingLossConfig, labels: np.ndarray, device: torch.device
) -> Objective:
    """L_rank of each batch under its rows' `labels`, with the batch's repeated share as
    `duplicate_fraction` (the teacher's objective, and the control's on labeled data)."""
    label_tensor = torch.tensor(labels, device=device)
    ranking = build_ranking_loss(loss)

    def objective(batch: Batch):
        value = ranking(batch.embeddings, label_tensor[batch.positions])
        return value, {"duplicate_fraction": batch.repeated_share()}

    return objective


class TrainingRun:
    """One training stage ("teacher" or "student") from seeding to its checkpoint."""

    def __init__(
        self,
        stage: str,
        model: ModelConfig,
        stage_config: TeacherConfig | StudentConfig,
        runtime: RuntimeConfig,
        out_dir: str | os.PathLike,
        inputs: Mapping[str, Any],
        start: ModelConfig | None = None,
    ) -> None:
        """`inputs`: digests of the input files, hashed with the config into the resume key;
        `start`: the network's spec when it differs from `model` (its starting weights)."""
        self.stage = stage
        self.runtime = runtime
        self.optim = stage_config.optim
        self.out_dir = Path(out_dir)
        self.config = {
            "model": model.model_dump(mode="json"),
            stage: stage_config.model_dump(mode="json"),
            "runtime": runtime.model_dump(
                mode="json", include={"seed", "cached_views", "amp", "amp_on_cpu"}
            ),
        }
        self.config_hash = stable_hash({**self.config, **inputs})
        self.ctx = distributed.current()
        seed_everything(runtime.seed)
        self.device = self.ctx.device(resolve_device(runtime.device))
        net = create_model(start or model)
        self.precision = Precision.for_runtime(runtime, self.device, whole_trunk=net.mode.whole)
        self.net = self.precision.place(net, images=net.mode.trains_trunk)

    def epochs(
        self,
        frames: Sequence[pd.DataFrame],
        sampler: Sampler,
        batch_size: int,
        objective: Objective,
        on_epoch: EpochCallback | None = None,
        *,
        warmup_steps: int = 0,
        modules: Mapping[str, nn.Module] | None = None,
        extra_parameters: Sequence[tuple[Iterable[nn.Parameter], float]] = (),
        epoch_metrics: Callable[[], dict[str, float]] | None = None,
    ) -> list[dict[str, float]]:
        """Train on batches of `sampler` (over the concatenated `frames`, `batch_size` rows
        each) to minimise `objective`; return the history.

        Call it after building the objective's modules: every rank then starts from the same
        weights. `warmup_steps` steps come first, in which the network embeds without gradient
        (see `run_epochs`).
        `modules` train and resume with the network, `extra_parameters` are (params, lr)
        groups of the optimiser, `epoch_metrics` adds to each epoch's history entry.
        """
        ctx, device = self.ctx, self.device
        ctx.seed_rank(self.runtime.seed)
        shard = ctx.shard(sampler, batch_size)
        source = make_source(self.net, frames, shard, self.runtime, self.precision)
        embed = ctx.embedder(self.net, source.embed, device)

        def step(inputs: torch.Tensor, positions: torch.Tensor, warmup: bool):
            positions = ctx.gather(positions.to(device))
            with torch.set_grad_enabled(not warmup):
                embeddings = embed(inputs)
            keep = first_occurrences(positions) if source.repeats_identical else None
            if keep is not None:
                embeddings, positions = embeddings[keep], positions[keep]
            return objective(Batch(embeddings, positions, keep, warmup))

        return run_epochs(
            stage=self.stage,
            out_dir=self.out_dir,
            config_hash=self.config_hash,
            epochs=self.optim.epochs,
            source=source,
            step=step,
            modules={"model": self.net, **(modules or {})},
            optimizer=build_optimizer(self.net, self.optim, extra=extra_parameters),
            precision=self.precision,
            on_epoch=on_epoch,
            schedule=self.optim.schedule,
            epoch_metrics=epoch_metrics,
            warmup_steps=warmup_steps,
        )

    def finish(self, history: list[dict[str, float]], **meta: Any) -> TrainResult:
        """Write out_dir/<stage>.pt (meta: stage, epochs, config, then `meta`) and
        history.json."""
        meta = {"stage": self.stage, "epochs": self.optim.epochs, "config": self.config, **meta}
        return finish(self.net, self.out_dir, f"{self.stage}.pt", meta, history)
