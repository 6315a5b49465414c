"""Whole-trunk training throughput: teacher and student steps through the real data path,
against the bare model's forward + backward on the same device and batch.

    .venv/bin/python benchmarks/throughput.py                       # CPU default, minutes
    .venv/bin/python benchmarks/throughput.py --backbone resnet50 --image-size 224 \\
        --batch 64 --steps 20 --images 800                          # the paper's model, GPU

Figures, in images per second (one JSON object on stdout, also written to --out):
- `bare`: the model (model.trainable_blocks = -1) forward + backward + AdamW step on one
  batch resident on the device (the teacher source's first augmented batch), with the
  teacher's loss: the ceiling.
- `teacher`: the teacher's training step through the library's data path
  (`training.data.make_source`: the decoded-image cache, batches gathered by DataLoader
  workers, moved to the device, cropped / flipped / normalised there) with its ranking loss.
- `student`: the student's step: a joint batch (half labeled, half pseudo-labeled) from the
  same source and the SLADE objective (basis, similarity-distribution loss, mining, per-term
  gradient norms).
- `teacher_pil` (skip with --no-pil): the teacher step with runtime.decoded_cache=False,
  PIL decoding and augmenting every image every step in DataLoader workers.
- `data_path`: the decoded source's batches alone (gather, transfer, augment), no model.
- `decode_pass`: the one-off parallel pass that builds the decoded cache (threads = CPUs).
Each figure is the best of `--rounds` rounds, which go round-robin over the figures (other
jobs on a shared machine only ever slow a round down); `img_s_per_round` has them all.
`ratios` divides each step figure by `bare`. Steps run under the stage's precision
(`slade_core.device.Precision`: channels_last, bf16 autocast on CUDA, fp32 on CPU); the
first `--warmup` steps of each figure are not timed. Variants to try, applied to every figure
alike: `--amp-on-cpu` (bf16 autocast on the CPU too, runtime.amp_on_cpu),
`--no-channels-last` (runtime.channels_last off), `--compile` (torch.compile each net; its
compile time falls in the untimed warm-up steps of the first round). Images: `--images` of
../shared/data/cub100 (the first images of as many classes as needed, 8 per class), or
generated 500 x 375 JPEGs when it is absent.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from slade_core.config import (
    BasisConfig,
    ModelConfig,
    RuntimeConfig,
    StudentConfig,
    TeacherConfig,
)
from slade_core.decoded import decoded_file
from slade_core.device import Precision, resolve_device
from slade_core.io import write_json
from slade_core.losses import SladeLoss, build_ranking_loss
from slade_core.models import create_model
from slade_core.samplers import JointBatchSampler, MPerClassBatchSampler
from slade_core.training.data import make_source
from slade_core.training.loop import build_optimizer, seed_everything
from slade_core.workers import loader_workers, usable_cpus

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = 8


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="timm model name")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32, help="images per step (4 per class)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per figure and round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    p.add_argument("--rounds", type=int, default=5, help="rounds over the figures (best)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    p.add_argument("--images", type=int, default=256, help="images to use (8 per class)")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--workers", default="auto", help="runtime.num_workers: auto or an int")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--cache-dir", type=Path, default=None, help="decoded cache (default: fresh)")
    p.add_argument("--no-pil", action="store_true", help="skip the PIL-every-step figure")
    p.add_argument("--amp-on-cpu", action="store_true", help="bf16 autocast on the CPU too")
    p.add_argument("--no-channels-last", action="store_true", help="contiguous (NCHW) tensors")
    p.add_argument("--compile", action="store_true", help="torch.compile every net")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.batch % 8 or args.batch < 16:
        p.error(
            "--batch must be a multiple of 8 and at least 16 (the student's halves hold "
            "4 images per class and at least 2 classes)"
        )
    if args.images // PER_CLASS < args.batch // 4:
        p.error(f"--images must be at least {2 * args.batch} ({PER_CLASS} per class, 4 per batch)")
    if args.workers != "auto":
        args.workers = int(args.workers)
    return args


def index_frame(data_root: Path, n: int, scratch: Path) -> tuple[pd.DataFrame, str]:
    """n rows (PER_CLASS per class) of cub100 if present, else generated JPEGs."""
    classes = max(2, n // PER_CLASS)
    csv = data_root / "cub100" / "index.csv"
    if csv.is_file():
        table = pd.read_csv(csv)
        table = table[table["label"] < classes].groupby("label").head(PER_CLASS)
        paths = [str(data_root / "cub100" / p) for p in table["path"]]
        labels, source = table["label"].to_numpy(np.int64), f"cub100 ({csv})"
    else:
        rng = np.random.default_rng(0)
        folder = scratch / "generated"
        folder.mkdir(parents=True, exist_ok=True)
        paths, labels = [], []
        for i in range(classes * PER_CLASS):
            path = folder / f"{i}.jpg"
            base = rng.integers(0, 256, (1, 1, 3))
            pixels = np.clip(base + rng.normal(0, 40, (375, 500, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
            paths.append(str(path))
            labels.append(i // PER_CLASS)
        labels, source = np.asarray(labels, np.int64), "generated 500x375 JPEGs"
    frame = pd.DataFrame(
        {
            "image_id": [f"bench/{i}" for i in range(len(paths))],
            "path": paths,
            "label": labels,
            "split": "train",
        }
    )
    return frame, source


Step = Callable[[int], Iterator[None]]  # run(epoch): one next() per training step


def training_epoch(net, source, loss_fn: Callable, optimizer, precision: Precision) -> Step:
    """The inner loop of training.loop.run_epochs over one epoch of `source`."""
    scaler = precision.grad_scaler()

    def run(epoch: int) -> Iterator[None]:
        net.train()
        for inputs, positions in source.batches(epoch):
            loss = loss_fn(source.embed(net, inputs), positions)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            yield

    return run


def measure(runs: dict[str, Step], args: argparse.Namespace, device: torch.device) -> dict:
    """Round-robin over the figures (so a load change on the machine hits them all alike):
    each round and figure starts an epoch (fresh loader), runs `warmup` untimed steps, then
    times `steps`. Returns img/s per figure per round."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(1, args.rounds + 1):
        for name, run in runs.items():
            steps = run(round_)
            for _ in range(args.warmup):
                next(steps)
            sync()
            start = time.perf_counter()
            for _ in range(args.steps):
                next(steps)
            sync()
            rates[name].append(args.steps * args.batch / (time.perf_counter() - start))
            steps.close()  # ends the epoch: its DataLoader workers exit
    return rates


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scratch = Path(tempfile.mkdtemp(prefix="slade-throughput-"))
    cache = args.cache_dir or scratch / "cache"
    device = resolve_device(args.device)
    runtime = RuntimeConfig(
        device=str(device),
        feature_cache_dir=cache,
        num_workers=args.workers,
        seed=0,
        amp_on_cpu=args.amp_on_cpu,
        channels_last=not args.no_channels_last,
    )
    precision = Precision.for_runtime(runtime, device, whole_trunk=True)  # the whole trunk trains
    spec = ModelConfig(
        backbone=args.backbone,
        weights="none",  # speed does not depend on the weights; nothing to download
        embedding_dim=512,
        image_size=args.image_size,
        trainable_blocks=-1,
    )
    frame, source_name = index_frame(args.data_root, args.images, scratch)
    labels = frame["label"].to_numpy(np.int64)
    per_epoch = args.warmup + args.steps
    result: dict = {
        "machine": f"{platform.node()} {platform.machine()}, {usable_cpus()} usable CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": str(precision.dtype or torch.float32).removeprefix("torch."),
        "channels_last": precision.channels_last,
        "compiled": args.compile,
        "backbone": args.backbone,
        "image_size": args.image_size,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "images": len(frame),
        "image_source": source_name,
        "loader_workers": loader_workers(runtime),
    }

    start = time.perf_counter()
    decoded_file(frame, args.image_size, runtime)
    seconds = time.perf_counter() - start
    result["decode_pass_seconds"] = round(seconds, 2)
    result["decode_pass_img_s"] = round(len(frame) / seconds, 1)

    teacher = TeacherConfig(batch_size=args.batch, m_per_class=4)
    ranking = build_ranking_loss(teacher.loss)
    label_tensor = torch.tensor(labels, device=device)

    def fresh_net():
        seed_everything(0)
        net = precision.place(create_model(spec), images=True)
        return torch.compile(net) if args.compile else net

    def teacher_run(run_runtime: RuntimeConfig) -> tuple[Step, object]:
        net = fresh_net()
        sampler = MPerClassBatchSampler(labels, 4, args.batch, 0, per_epoch)
        source = make_source(net, [frame], sampler, run_runtime, precision)
        run = training_epoch(
            net,
            source,
            lambda emb, pos: ranking(emb, label_tensor[pos.to(device)]),
            build_optimizer(net, teacher.optim),
            precision,
        )
        return run, source

    runs: dict[str, Step] = {}
    runs["teacher"], teacher_source = teacher_run(runtime)

    # bare: one real augmented batch, resident on the device, and the teacher's loss
    batches = teacher_source.batches(0)
    inputs, positions = next(batches)
    batches.close()
    batch_labels = label_tensor[positions.to(device)]
    bare_net = fresh_net()
    bare_optimizer = build_optimizer(bare_net, teacher.optim)
    bare_scaler = precision.grad_scaler()

    def bare(epoch: int) -> Iterator[None]:
        bare_net.train()
        for _ in range(per_epoch):
            with precision.autocast():
                loss = ranking(bare_net(inputs).float(), batch_labels)
            bare_optimizer.zero_grad(set_to_none=True)
            bare_scaler.scale(loss).backward()
            bare_scaler.step(bare_optimizer)
            bare_scaler.update()
            yield

    runs = {"bare": bare, **runs}

    half = args.batch // 2
    student = StudentConfig(
        labeled_batch_size=half,
        unlabeled_batch_size=half,
        m_per_class=4,
        basis=BasisConfig(warmup_iterations=0),
    )
    student_net = fresh_net()
    classes = int(labels.max()) + 1
    joint = JointBatchSampler(
        MPerClassBatchSampler(labels, 4, half, 0, per_epoch, stream=0),
        MPerClassBatchSampler(labels, 4, half, 0, per_epoch, stream=1),  # pseudo = labels
        unlabeled_offset=len(frame),
    )
    objective = SladeLoss(student, spec.embedding_dim, classes).to(device)
    joint_labels = torch.cat([label_tensor, label_tensor + classes])
    runs["student"] = training_epoch(
        student_net,
        make_source(student_net, [frame, frame], joint, runtime, precision),
        lambda emb, pos: objective(emb, joint_labels[pos.to(device)], half, False)[0],
        build_optimizer(
            student_net, student.optim, extra=[(objective.basis_parameters(), student.basis.lr)]
        ),
        precision,
    )
    if not args.no_pil:
        runs["teacher_pil"], _ = teacher_run(runtime.model_copy(update={"decoded_cache": False}))

    def data_path(epoch: int) -> Iterator[None]:
        for _ in teacher_source.batches(epoch):
            yield

    runs["data_path"] = data_path

    rates = measure(runs, args, device)
    # other jobs on a shared machine only ever slow a round down: the best round is the
    # closest to what the machine can do
    figures = {name: round(max(values), 1) for name, values in rates.items()}
    result["img_s"] = figures
    result["img_s_per_round"] = {
        name: [round(v, 1) for v in values] for name, values in rates.items()
    }
    result["ratios"] = {
        f"{name}/bare": round(figures[name] / figures["bare"], 3)
        for name in ("teacher", "student", "teacher_pil")
        if name in figures
    }
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    result["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
