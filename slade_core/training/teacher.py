"""Teacher: the embedding network fine-tuned on labeled data with a ranking loss.

Batches hold `batch_size // m_per_class` classes x m images of split=="train" (the
reality-check protocol's 8 x 4), so every batch has positive pairs for L_rank. Under
torchrun each rank embeds a slice of every batch and the loss sees the gathered whole.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from slade_core.config import ModelConfig, RuntimeConfig, TeacherConfig
from slade_core.device import Precision, resolve_device
from slade_core.io import file_digest, stable_hash
from slade_core.losses import build_ranking_loss
from slade_core.models import create_model
from slade_core.samplers import MPerClassBatchSampler, first_occurrences
from slade_core.training import distributed
from slade_core.training.data import make_source, read_split
from slade_core.training.loop import (
    EpochCallback,
    TrainResult,
    build_optimizer,
    finish,
    run_epochs,
    seed_everything,
)


def train_teacher(
    index_path: str | os.PathLike,
    model: ModelConfig,
    teacher: TeacherConfig,
    runtime: RuntimeConfig,
    out_dir: str | os.PathLike,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train on split=="train" rows; write out_dir/teacher.pt and out_dir/history.json.

    Resumes from out_dir/resume.pt when it was written for the same configuration and index.
    """
    out_dir = Path(out_dir)
    frame = read_split(index_path, "train")
    labels = frame["label"].to_numpy(np.int64)
    if (labels < 0).any():
        raise ValueError(f"{index_path}: split=='train' rows must have labels >= 0")
    config = {
        "model": model.model_dump(mode="json"),
        "teacher": teacher.model_dump(mode="json"),
        "runtime": runtime.model_dump(mode="json", include={"seed", "cached_views", "amp"}),
    }
    config_hash = stable_hash({**config, "index": file_digest(index_path)})

    ctx = distributed.current()
    seed_everything(runtime.seed)
    device = ctx.device(resolve_device(runtime.device))
    precision = Precision.for_runtime(runtime, device)
    net = create_model(model)
    net = precision.place(net, images=net.trainable_trunk())
    ctx.seed_rank(runtime.seed)
    iterations = teacher.optim.iterations_per_epoch or max(1, len(frame) // teacher.batch_size)
    sampler = MPerClassBatchSampler(
        labels, teacher.m_per_class, teacher.batch_size, runtime.seed, iterations
    )
    source = make_source(net, [frame], ctx.shard(sampler, teacher.batch_size), runtime, precision)
    embed = ctx.embedder(net, source.embed, device)
    label_tensor = torch.tensor(labels, device=device)
    ranking = build_ranking_loss(teacher.loss)

    def step(inputs: torch.Tensor, positions: torch.Tensor, iteration: int):
        positions = ctx.gather(positions.to(device))
        embeddings = embed(inputs)
        keep = first_occurrences(positions) if source.repeats_identical else None
        if keep is not None:
            embeddings, positions = embeddings[keep], positions[keep]
        duplicates = 0.0 if keep is None else 1.0 - keep.float().mean()
        return ranking(embeddings, label_tensor[positions]), {"duplicate_fraction": duplicates}

    history = run_epochs(
        stage="teacher",
        out_dir=out_dir,
        config_hash=config_hash,
        epochs=teacher.optim.epochs,
        source=source,
        step=step,
        modules={"model": net},
        optimizer=build_optimizer(net, teacher.optim),
        precision=precision,
        on_epoch=on_epoch,
        schedule=teacher.optim.schedule,
    )
    meta = {"stage": "teacher", "epochs": teacher.optim.epochs, "config": config}
    return finish(net, out_dir, "teacher.pt", meta, history)
