"""The epoch loop teacher and student share: seeding, optimiser, schedule, resume.

After every epoch the whole training state (modules, optimiser, grad scaler, RNG states,
history) is written atomically to `out_dir/resume.pt`. Batches are a pure function of
(seed, epoch) (see `slade_core.samplers`), so a run killed at any point and restarted from
that file ends with exactly the weights and history of an uninterrupted run.

Under torchrun (see `slade_core.training.distributed`) every rank runs this loop; rank 0
alone writes files, shows progress and calls `on_epoch`. The resume state then holds each
rank's RNG state, so a resumed multi-process run also repeats its augmentations.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from slade_core.checkpoints import save_checkpoint
from slade_core.config import OptimConfig
from slade_core.device import Precision
from slade_core.io import atomic_path, write_json
from slade_core.models import EmbeddingNet
from slade_core.training import distributed

log = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"
RESUME_FORMAT = "slade-resume-v1"

EpochCallback = Callable[[int, int, dict[str, float]], None]
# step(inputs, positions, warmup) -> (loss to minimise, per-step metrics to average)
StepFn = Callable[
    [torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, Mapping[str, torch.Tensor | float]]
]


@dataclass(frozen=True)
class TrainResult:
    checkpoint_path: Path
    history: list[dict[str, float]]


class BatchSource(Protocol):
    """Per-epoch batches as (inputs on the device, row positions); see training.data."""

    def __len__(self) -> int: ...

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; pick deterministic cuDNN kernels (cheap, no autotune)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def build_optimizer(
    net: nn.Module,
    optim: OptimConfig,
    extra: Sequence[tuple[Iterable[nn.Parameter], float]] = (),
) -> torch.optim.AdamW:
    """AdamW with the head at `optim.lr`, trainable trunk parameters at `optim.trunk_lr`,
    and each (params, lr) of `extra` (the feature basis) as its own group."""
    groups: list[dict[str, Any]] = [{"params": list(net.head.parameters()), "lr": optim.lr}]
    trunk = [p for p in net.trunk.parameters() if p.requires_grad]
    if trunk:
        groups.append({"params": trunk, "lr": optim.trunk_lr})
    for params, lr in extra:
        params = list(params)
        if params:
            groups.append({"params": params, "lr": lr})
    return torch.optim.AdamW(groups, lr=optim.lr, weight_decay=optim.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step learning-rate factor: 1 ("constant") or a cosine from 1 to 0 ("cosine")."""
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if schedule == "cosine":
        total = max(1, total_steps)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        )
    raise ValueError(f"unknown schedule {schedule!r}; use constant|cosine")


def run_epochs(
    *,
    stage: str,
    out_dir: Path,
    config_hash: str,
    epochs: int,
    source: BatchSource,
    step: StepFn,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    on_epoch: EpochCallback | None = None,
    epoch_metrics: Callable[[], dict[str, float]] | None = None,
    schedule: str = "constant",
    warmup_steps: int = 0,
) -> list[dict[str, float]]:
    """Train epochs 1..`epochs` (continuing from out_dir/resume.pt when it matches) and
    return the history: one dict per epoch with "epoch", the mean of every step metric
    (over the steps that report it a finite value: NaN means "no such pair this step"),
    "loss", `epoch_metrics()` and "lr" (of the first parameter group, the head, at the end
    of the epoch). `schedule` is OptimConfig.schedule.

    A fresh run first takes `warmup_steps` steps with step(..., warmup=True) on the batches
    of epoch 0 (cycled), at the schedule's first learning rate. They come before the
    epochs, not out of them: the network then trains exactly as many steps, on the same
    batches and schedule, as a run without warm-up (the controls it is compared with)."""
    scaler = precision.grad_scaler()
    iterations = len(source)
    scheduler = build_scheduler(optimizer, schedule, epochs * iterations)
    resume_path = Path(out_dir) / RESUME_FILE
    history = _restore(resume_path, stage, config_hash, modules, optimizer, scaler, scheduler)
    main = distributed.current().is_main

    def update(loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    if not history and warmup_steps:
        for module in modules.values():
            module.train()
        for inputs, positions in _cycled(source, warmup_steps):
            update(step(inputs, positions, True)[0])
    for epoch in range(len(history) + 1, epochs + 1):
        for module in modules.values():
            module.train()
        totals: dict[str, torch.Tensor] = {}  # per metric: sum and count of finite values
        counts: dict[str, torch.Tensor] = {}
        bar = tqdm(  # counts steps; off on other ranks and when stderr is not a terminal
            total=iterations,
            desc=f"{stage} {epoch}/{epochs}",
            leave=False,
            mininterval=2.0,
            disable=None if main else True,
        )
        for i, (inputs, positions) in enumerate(source.batches(epoch)):
            loss, metrics = step(inputs, positions, False)
            update(loss)
            scheduler.step()
            for name, value in {"loss": loss, **metrics}.items():
                value = torch.as_tensor(value).detach().float()
                finite = torch.isfinite(value)
                value = torch.where(finite, value, torch.zeros_like(value))
                totals[name] = totals[name] + value if name in totals else value
                counts[name] = counts[name] + finite if name in counts else finite.int()
            if i % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", refresh=False)
            bar.update(1)
        bar.close()
        summary = {
            name: float(total) / int(counts[name]) if int(counts[name]) else math.nan
            for name, total in totals.items()
        }
        if epoch_metrics is not None:
            summary.update(epoch_metrics())
        summary["lr"] = float(optimizer.param_groups[0]["lr"])
        history.append({"epoch": epoch, **summary})
        _save_resume(
            resume_path, stage, config_hash, history, modules, optimizer, scaler, scheduler
        )
        if on_epoch is not None and main:
            on_epoch(epoch, epochs, summary)
    return history


def _cycled(source: BatchSource, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first `steps` batches of epoch 0, repeated when one epoch is shorter."""
    done = 0
    while done < steps:
        for batch in source.batches(0):
            yield batch
            done += 1
            if done == steps:
                return


def finish(
    net: EmbeddingNet, out_dir: Path, filename: str, meta: dict, history: list[dict[str, float]]
) -> TrainResult:
    """Write the final checkpoint and history.json, then drop the resume state (rank 0;
    the other ranks return once the files exist)."""
    out_dir = Path(out_dir)
    ctx = distributed.current()
    path = out_dir / filename
    if ctx.is_main:
        save_checkpoint(net, path, {**meta, "history": history})
        write_json(out_dir / "history.json", history)
        (out_dir / RESUME_FILE).unlink(missing_ok=True)
    ctx.barrier()
    return TrainResult(path, history)


def _rng_state() -> dict[str, Any]:
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _own_rng_state(saved: dict | list[dict], path: Path) -> dict[str, Any]:
    """This rank's entry of the saved RNG state(s): one dict from a single process, one
    per rank from a distributed run."""
    ctx = distributed.current()
    states = saved if isinstance(saved, list) else [saved]
    if len(states) == ctx.world_size:
        return states[ctx.rank]
    log.warning(
        "%s was written by %d process(es), now %d: every rank continues from rank 0's RNG "
        "state, so augmentations differ from an uninterrupted run",
        path,
        len(states),
        ctx.world_size,
    )
    return states[0]


def _save_resume(
    path: Path,
    stage: str,
    config_hash: str,
    history: list[dict[str, float]],
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    ctx = distributed.current()
    rng = ctx.all_objects(_rng_state()) if ctx.enabled else _rng_state()  # a collective
    if not ctx.is_main:
        return
    payload = {
        "format": RESUME_FORMAT,
        "stage": stage,
        "config_hash": config_hash,
        "history": history,
        "modules": {name: m.state_dict() for name, m in modules.items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _restore(
    path: Path,
    stage: str,
    config_hash: str,
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> list[dict[str, float]]:
    """Load resume state into the given objects; return its history ([] = fresh start)."""
    if not path.is_file():
        return []
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != RESUME_FORMAT or state.get("stage") != stage:
        raise ValueError(
            f"{path} is not a {stage} resume file ({state.get('format')}, "
            f"stage {state.get('stage')!r}); delete it or use another out_dir"
        )
    if state["config_hash"] != config_hash:
        log.warning(
            "%s was written for another configuration or input (hash %s, now %s); "
            "ignoring it and training %s from scratch",
            path,
            state["config_hash"],
            config_hash,
            stage,
        )
        return []
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(_own_rng_state(state["rng"], path))
    history = list(state["history"])
    log.info("resuming %s after epoch %d from %s", stage, len(history), path)
    return history
