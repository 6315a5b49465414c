"""Bird benchmark: SLADE on real offline images, against its teacher and honest controls.

Protocol (../shared/data/README.md): cub100 classes 0-49 labeled, classes 50-99 test (every
test image a query against all others), birds525 unlabeled after the data layer's leakage
filter. Hyperparameters are the birds_offline preset's: ImageNet EfficientNet-Lite0 with its
last stage trainable on cached maps of the frozen prefix (--set model.trainable_blocks=N
changes it, --finetune trains everything from images); prefix outputs are cached once per
augmented view under --cache-dir and shared by every row and seed.

Rows: the pretrained trunk's own pooled features (no training), the teacher, its control
(the student's extra steps on labeled data only), the poster's student ablation (pseudo
labels only, + basis, + basis + mining), a second self-training round, the student with
oracle labels through the full recipe and through pseudo labels only (diagnostics), and on
request a pytorch-metric-learning baseline; each student starts from the teacher of its seed.

    .venv/bin/python benchmarks/birds.py --out results_birds.json
    .venv/bin/python benchmarks/birds.py --quick --out /tmp/quick.json     # smoke run
    .venv/bin/python benchmarks/birds.py --validation --set student.lambda1=0.5   # tuning
    .venv/bin/python benchmarks/birds.py --data benchmarks/presets/birds_reverse.yaml  # other data

See benchmarks/README.md for what it prints and the measured results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from slade_core.checkpoints import save_checkpoint
from slade_core.clustering import label_agreement, make_pseudo_labels, write_pseudo_labels
from slade_core.config import (
    ModelConfig,
    PipelineConfig,
    RuntimeConfig,
    TeacherConfig,
)
from slade_core.data import validation
from slade_core.data.errors import DataError
from slade_core.data.filtering import FilterSettings
from slade_core.data.manifest import SubsetRules
from slade_core.data.prepare import prepare_data
from slade_core.data.validation import hold_out_classes
from slade_core.device import Precision, cpu_has_native_bf16, resolve_device
from slade_core.embeddings import extract_embeddings, extract_trunk_features, read_embeddings
from slade_core.experiment import load_experiment
from slade_core.features import cached_prefix_features, prefix_feature_file
from slade_core.images import IndexDataset, build_transform
from slade_core.io import write_json
from slade_core.losses import RANKING_LOSSES
from slade_core.metrics import retrieval_metrics
from slade_core.models import create_model
from slade_core.rounds import self_training
from slade_core.shards import select_rows
from slade_core.training import train_control, train_student, train_teacher
from slade_core.training.data import read_split
from slade_core.training.loop import build_optimizer, build_scheduler, seed_everything
from slade_core.trunk import TrunkMode
from slade_core.workers import loader_workers, usable_cpus

REPO = Path(__file__).resolve().parents[1]
PRESET = "birds_offline"
METRICS = ("map_at_r", "r_precision", "precision_at_1")

# The benchmark's hyperparameters are the preset's (data_manifests/presets/birds_offline.yaml),
# chosen on the --validation protocol (held-out training classes), see benchmarks/README.md.
# --quick: a smoke run of every code path in a few minutes (small images, few classes).
QUICK: dict[str, Any] = {
    "model.image_size": 64,
    "runtime.cached_views": 1,
    "teacher.optim.epochs": 1,
    "teacher.optim.iterations_per_epoch": 10,
    "student.optim.epochs": 1,
    "student.optim.iterations_per_epoch": 10,
    "student.basis.warmup_iterations": 3,
    "cluster.k": 20,
}
QUICK_LABELED_CLASSES = [*range(10), *range(50, 60)]  # 10 train + 10 test classes of cub100
QUICK_UNLABELED_CLASSES = 60

STUDENTS = (  # (row name, use_basis, use_mining): the poster's ablation 2, in its order
    ("student: pseudo labels", False, False),
    ("student: + basis", True, False),
    ("student: + basis + mining", True, True),
)
TRUNK_ROW = "pretrained trunk (no training)"
PML_ROW = "PML baseline"
TEACHER_ROW = "teacher"
CONTROL_ROW = "control: teacher, continued"  # the student's steps on labeled data only
ORACLE_ROW = "diagnostic: student, oracle labels"  # hidden species as pseudo labels
# the same labels through the plain recipe: what basis and mining cost when labels are right
ORACLE_PL_ROW = "diagnostic: pseudo labels only, oracle labels"
ROUND2_ROW = "student, rounds = 2"  # the full student as teacher of a second round
ROW_DIRS = {
    CONTROL_ROW: "control",
    STUDENTS[0][0]: "student_pl",
    STUDENTS[1][0]: "student_basis",
    STUDENTS[2][0]: "student_full",
    ORACLE_ROW: "oracle",
    ORACLE_PL_ROW: "oracle_pl",
    ROUND2_ROW: "round2",
}
ROW_GROUPS = ("trunk", "pml", "teacher", "controls", "students", "full", "oracle", "rounds")
DEFAULT_ROWS = ("trunk", "teacher", "controls", "students", "oracle", "rounds")
STUDENT_ROW_GROUPS = {"controls", "students", "full", "oracle", "rounds"}
ROW_ORDER = [
    TRUNK_ROW,
    PML_ROW,
    TEACHER_ROW,
    CONTROL_ROW,
    *(name for name, _, _ in STUDENTS),
    ROUND2_ROW,
    ORACLE_ROW,
    ORACLE_PL_ROW,
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1 for every trained row")
    p.add_argument("--out", type=Path, default=Path("results_birds.json"), help="results JSON")
    p.add_argument("--finetune", action="store_true", help="train the whole trunk (slow on CPU)")
    p.add_argument("--epochs", type=int, help="teacher, student and baseline epochs")
    p.add_argument("--image-size", type=int, help="trunk input size (images are 128 px)")
    p.add_argument("--k", type=int, help="number of pseudo-label clusters (cluster.k)")
    p.add_argument("--cache-dir", type=Path, default=REPO / ".slade" / "bench-cache")
    p.add_argument("--work-dir", type=Path, default=REPO / ".slade" / "bench-birds")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="tiny budget and data: a smoke run")
    p.add_argument(
        "--validation",
        action="store_true",
        help="tuning protocol: hold out the last --holdout training classes as the test set "
        "(the real test classes are not used)",
    )
    p.add_argument("--holdout", type=int, default=15, help="classes held out by --validation")
    p.add_argument(
        "--data",
        metavar="PRESET",
        help="take the data section (labeled, unlabeled, filter) from this preset (name or "
        "path), every other setting from birds_offline: the same defaults on other data, "
        "e.g. benchmarks/presets/birds_reverse.yaml",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra dotted config override, e.g. student.lambda1=0.5 (value parsed as JSON)",
    )
    p.add_argument(
        "--rows",
        help=f"comma-separated subset of: {','.join(ROW_GROUPS)} "
        f"(default {','.join(DEFAULT_ROWS)}; 'full' is the full student alone)",
    )
    return p.parse_args(argv)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """["a.b=1", "c=x"] -> {"a.b": 1, "c": "x"} (JSON values, else plain strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE (e.g. student.lambda1=0.5), got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """Preset <- --quick <- flags <- --set."""
    overrides: dict[str, Any] = {}
    if args.quick:
        overrides |= QUICK
    flags = {
        "teacher.optim.epochs": args.epochs,
        "student.optim.epochs": args.epochs,
        "model.image_size": args.image_size,
        "cluster.k": args.k,
        "model.trainable_blocks": -1 if args.finetune else None,
    }
    overrides |= {key: value for key, value in flags.items() if value is not None}
    overrides |= parse_overrides(args.set)
    overrides["runtime.feature_cache_dir"] = str(args.cache_dir)
    config = load_experiment(PRESET, overrides)
    if args.data:
        config.data = load_experiment(args.data).data
    if args.quick:
        data = config.data
        labeled = data.labeled.model_copy(
            update={"subset": SubsetRules(keep_classes=QUICK_LABELED_CLASSES)}
        )
        unlabeled = [
            ref.model_copy(update={"subset": SubsetRules(max_classes=QUICK_UNLABELED_CLASSES)})
            for ref in data.unlabeled
        ]
        config.data = data.model_copy(update={"labeled": labeled, "unlabeled": unlabeled})
    return config


def check_data_root(root: Path) -> Path:
    """The offline bird sets must be there; say where they are expected otherwise."""
    root = root.resolve()
    missing = [name for name in ("cub100", "birds525") if not (root / name / "index.csv").is_file()]
    if missing:
        raise SystemExit(
            f"bird benchmark data not found: {', '.join(f'{root}/{m}/index.csv' for m in missing)} "
            "missing. Put the offline sets cub100/ and birds525/ (see ../shared/data/README.md) "
            "in one folder and pass it with --data-root"
        )
    return root


def machine_description(device: torch.device, runtime: RuntimeConfig) -> str:
    """platform, CPU model, cores, torch version, device and training precision, one line."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = usable_cpus()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    dtype = Precision.for_runtime(runtime, device).dtype
    precision = "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast"
    if device.type == "cpu" and dtype == torch.bfloat16:
        precision += " (native)" if cpu_has_native_bf16() else " (emulated: slow)"
    return (
        f"{platform.platform()}, {cpu}, {cores} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {name}, training {precision}"
    )


def holdout_index(
    index_path: Path, out_path: Path, n_classes: int, settings: FilterSettings | None = None
) -> Path:
    """Tuning index: the product's validation rule (`data.validation_classes`,
    slade_core.data.validation) on the prepared index: the last `n_classes` training classes
    become the test set and the real test rows are dropped."""
    index = pd.read_parquet(index_path)
    try:
        held, _ = hold_out_classes(
            index, n_classes, settings or FilterSettings(), min_train_classes=8
        )
    except DataError as err:  # 8 classes stay for a batch of 8 x 4
        raise SystemExit(f"--holdout {n_classes}: {err}") from err
    out_path.parent.mkdir(parents=True, exist_ok=True)
    held.to_parquet(out_path, index=False)
    return out_path


def warm_prefix_cache(
    spec: ModelConfig,
    index_path: Path,
    runtime: RuntimeConfig,
    views: int,
    unlabeled: bool,
):
    """Compute every cached prefix file the rows will read (eval view of the test rows,
    `views` train views of the train rows, and with `unlabeled` the same for the unlabeled
    rows, whose eval view the clustering embeds); return seconds. With the whole trunk
    trained (-1) there is no prefix: the trunk row's pooled features of the test rows are
    cached instead."""
    start = time.perf_counter()
    splits = ("train", "unlabeled") if unlabeled else ("train",)
    if TrunkMode.of(spec).whole:
        spec = spec.with_frozen_trunk()
        jobs = [(None, ["test"])]
    else:
        jobs = [(None, ["test"])] + [(None, ["unlabeled"])] * unlabeled
        jobs += [(v, [s]) for v in range(views) for s in splits]
    model = create_model(spec)
    for view, names in jobs:
        prefix_feature_file(model, select_rows(index_path, names), view, runtime)
    return time.perf_counter() - start


def scores(embeddings: Any, labels: Any) -> dict[str, float]:
    """Test-vs-test retrieval (self excluded): MAP@R, R-Precision, P@1."""
    metrics = retrieval_metrics(embeddings, labels)
    return {name: metrics[name] for name in METRICS}


def evaluate_checkpoint(
    checkpoint: Path, index_path: Path, runtime: RuntimeConfig
) -> dict[str, float]:
    """Embed the test split with the library's extractor and score it."""
    out = checkpoint.with_name(checkpoint.stem + "-test.parquet")
    extract_embeddings(checkpoint, index_path, out, ["test"], runtime)
    table = read_embeddings(out)
    return scores(table.embeddings, table.labels)


def trunk_scores(spec: ModelConfig, index_path: Path, runtime: RuntimeConfig) -> dict[str, float]:
    """The pretrained trunk's own pooled features, L2-normalised (no head, no training)."""
    if TrunkMode.of(spec).whole:
        spec = spec.with_frozen_trunk()
    out = index_path.parent / f"trunk-{TrunkMode.of(spec).blocks}-test.parquet"
    extract_trunk_features(spec, index_path, out, ["test"], runtime)
    table = read_embeddings(out)
    return scores(table.embeddings, table.labels)


def train_pml_baseline(
    index_path: Path, spec: ModelConfig, teacher: TeacherConfig, runtime: RuntimeConfig, out: Path
) -> Path:
    """pytorch-metric-learning's loss (ContrastiveLoss or MultiSimilarityLoss, the teacher's
    choice and parameters) + MPerClassSampler in a plain loop.

    Same head, optimiser, batch (batch_size with m_per_class per class), epochs and
    iterations per epoch as the teacher; a frozen trunk reads the same cached views
    (epoch e: view (e-1) % cached_views), a trainable one sees augmented images.
    """
    from pytorch_metric_learning import samplers

    seed_everything(runtime.seed)  # PML's sampler draws from numpy's global RNG
    device = resolve_device(runtime.device)
    net = create_model(spec).to(device)
    frame = read_split(index_path, "train")
    labels = torch.tensor(frame["label"].to_numpy(np.int64))
    bs = teacher.batch_size
    iterations = teacher.optim.iterations_per_epoch or max(1, len(frame) // bs)
    sampler = samplers.MPerClassSampler(
        labels, teacher.m_per_class, batch_size=bs, length_before_new_iter=iterations * bs
    )
    loss_fn = RANKING_LOSSES[teacher.loss.name](teacher.loss)  # the PML loss itself
    optimizer = build_optimizer(net, teacher.optim)
    steps = teacher.optim.epochs * iterations
    scheduler = build_scheduler(optimizer, teacher.optim.schedule, steps)
    if net.mode.caches_prefix:
        positions = torch.arange(len(frame))
    else:
        mean, std = net.normalization()
        dataset = IndexDataset(frame, build_transform(spec.image_size, True, mean, std))
    for epoch in range(1, teacher.optim.epochs + 1):
        net.train()
        if not net.mode.caches_prefix:
            loader = torch.utils.data.DataLoader(
                dataset, bs, sampler=sampler, num_workers=loader_workers(runtime), drop_last=True
            )
            batches = ((x, labels[rows]) for x, rows in loader)
            embed = net
        else:
            features = cached_prefix_features(
                net, frame, (epoch - 1) % runtime.cached_views, runtime
            )
            loader = torch.utils.data.DataLoader(positions, bs, sampler=sampler, drop_last=True)
            batches = ((features[rows].float(), labels[rows]) for rows in loader)
            embed = net.embed_features
        for inputs, batch_labels in batches:
            loss = loss_fn(embed(inputs.to(device)), batch_labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return save_checkpoint(net, out, {"stage": "pml-baseline", "epochs": teacher.optim.epochs})


def pseudo_label_quality(index_path: Path, pseudo_path: Path) -> dict[str, float]:
    """Purity / NMI of the clusters against the hidden species names (a diagnostic only)."""
    index = pd.read_parquet(index_path, columns=["image_id", "class_name"])
    pseudo = pd.read_parquet(pseudo_path).merge(index, on="image_id")
    return label_agreement(pseudo["cluster"].to_numpy(), pseudo["class_name"].to_numpy())


def hidden_species(index_path: Path, settings: FilterSettings) -> dict[str, int]:
    """Unlabeled image id -> hidden species id (slade_core.data.validation.hidden_species)."""
    columns = ["image_id", "class_name", "split", "source"]
    return validation.hidden_species(pd.read_parquet(index_path, columns=columns), settings)


def oracle_pseudo_labels(species: dict[str, int], out: Path) -> Path:
    """The unlabeled rows' hidden species as "pseudo labels": the ceiling of pseudo-labelling
    (a diagnostic the method never sees, never a default)."""
    return write_pseudo_labels(out, list(species), list(species.values()))


PAIR_KEYS = (  # history metrics of a student that explain what its unlabeled half learned
    "mined_pos",
    "mined_neg",
    "pseudo_pos_precision",
    "mined_pos_precision",
    "mined_neg_precision",
    "grad_rank",
    "grad_rank_unlabeled_pos",
    "grad_rank_unlabeled_neg",
    "grad_ce",
    "grad_reg",
)


def pair_report(history: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-step means over the student's epochs (NaN-aware) of PAIR_KEYS, and the tracked
    basis means at the end (mu_pos, mu_neg)."""
    out = {}
    for key in (*PAIR_KEYS, "mu_pos", "mu_neg"):
        values = [e[key] for e in history if key in e and np.isfinite(e[key])]
        if values:
            out[key] = statistics.fmean(values) if key in PAIR_KEYS else values[-1]
    return out


def format_pairs(pairs: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.3g}" for k, v in pairs.items())


def run_seed(
    seed: int, config: PipelineConfig, index_path: Path, work: Path, rows: set[str]
) -> tuple[dict[str, dict[str, float]], dict[str, float], float, dict[str, dict[str, float]]]:
    """Train and score every row for one seed: ({row: metrics}, {row: seconds}, pl seconds,
    {student row: pair_report})."""
    runtime = config.runtime.model_copy(update={"seed": seed})
    out = work / f"seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    metrics: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    pair_diagnostics: dict[str, dict[str, float]] = {}
    pl_seconds = 0.0

    def timed(name: str, fn) -> Any:
        start = time.perf_counter()
        result = fn()
        seconds[name] = time.perf_counter() - start
        report(seed, name, result[1], seconds[name])
        metrics[name] = result[1]
        return result[0]

    def pseudo_labels(checkpoint: Path, name: str) -> Path:
        nonlocal pl_seconds
        start = time.perf_counter()
        unlabeled = extract_embeddings(
            checkpoint,
            index_path,
            out / name / "unlabeled.parquet",
            ["unlabeled"],
            runtime,
        )
        cluster = config.cluster.model_copy(update={"seed": seed})
        pseudo = make_pseudo_labels(unlabeled.path, out / name / "pseudo_labels.parquet", cluster)
        took = time.perf_counter() - start
        pl_seconds += took
        quality = pseudo_label_quality(index_path, pseudo.path)
        print(
            f"  seed {seed} pseudo labels from {name}: k={pseudo.stats['k']} sizes "
            f"{pseudo.stats['min_cluster_size']}-{pseudo.stats['max_cluster_size']} "
            f"(empty {pseudo.stats['n_empty']}), purity vs hidden species "
            f"{quality['purity']:.3f}, NMI {quality['nmi']:.3f} ({took:.1f}s)",
            flush=True,
        )
        return pseudo.path

    species = hidden_species(index_path, config.data.filter)

    def student(name: str, labels: Path, init: Path, **update: Any):
        cfg = config.student.model_copy(update=update)
        result = train_student(
            index_path, labels, init, config.model, cfg, runtime, out / ROW_DIRS[name],
            audit_classes=species,
        )  # fmt: skip
        pair_diagnostics[name] = pair_report(result.history)
        print(f"  seed {seed} {name} pairs: {format_pairs(pair_diagnostics[name])}", flush=True)
        return result.checkpoint_path, evaluate_checkpoint(
            result.checkpoint_path, index_path, runtime
        )

    if "pml" in rows:
        timed(
            PML_ROW,
            lambda: (
                None,
                evaluate_checkpoint(
                    train_pml_baseline(
                        index_path, config.model, config.teacher, runtime, out / "pml" / "pml.pt"
                    ),
                    index_path,
                    runtime,
                ),
            ),
        )
    if not rows & STUDENT_ROW_GROUPS and "teacher" not in rows:
        return metrics, seconds, pl_seconds, pair_diagnostics

    def teacher_row():
        result = train_teacher(index_path, config.model, config.teacher, runtime, out / "teacher")
        return result.checkpoint_path, evaluate_checkpoint(
            result.checkpoint_path, index_path, runtime
        )

    def control_row(labels: Path, teacher: Path):
        result = train_control(
            index_path, labels, teacher, config.model, config.student, runtime,
            out / ROW_DIRS[CONTROL_ROW],
        )  # fmt: skip
        return result.checkpoint_path, evaluate_checkpoint(
            result.checkpoint_path, index_path, runtime
        )

    teacher = timed(TEACHER_ROW, teacher_row)
    if not rows & STUDENT_ROW_GROUPS:
        return metrics, seconds, pl_seconds, pair_diagnostics
    labels = pseudo_labels(teacher, "teacher")
    if "controls" in rows:  # the product's control stage: the student's steps, labeled only
        timed(CONTROL_ROW, lambda: control_row(labels, teacher))
    full = None
    if rows & {"students", "full"}:
        chosen = STUDENTS if "students" in rows else STUDENTS[-1:]
        for name, use_basis, use_mining in chosen:
            checkpoint = timed(
                name,
                lambda name=name, b=use_basis, m=use_mining: student(
                    name, labels, teacher, use_basis=b, use_mining=m
                ),
            )
        full = checkpoint
    if "oracle" in rows:
        oracle = oracle_pseudo_labels(species, out / "oracle" / "pseudo_labels.parquet")
        timed(ORACLE_ROW, lambda: student(ORACLE_ROW, oracle, teacher))
        timed(
            ORACLE_PL_ROW,
            lambda: student(ORACLE_PL_ROW, oracle, teacher, use_basis=False, use_mining=False),
        )
    if "rounds" in rows and full is not None:  # a next round, the full student its teacher
        self_training(
            full,
            1,
            lambda model, _: pseudo_labels(model, ROW_DIRS[STUDENTS[-1][0]]),
            lambda model, labels, _: timed(ROUND2_ROW, lambda: student(ROUND2_ROW, labels, model)),
        )
    return metrics, seconds, pl_seconds, pair_diagnostics


def report(seed: int, name: str, metrics: Mapping[str, float], seconds: float) -> None:
    values = " ".join(f"{k}={100 * v:.2f}" for k, v in metrics.items())
    print(f"  seed {seed} {name}: {values} ({seconds:.1f}s)", flush=True)


def summarize(name: str, per_seed: Sequence[Mapping[str, float]], seconds: float) -> dict:
    """Mean and sample standard deviation (n-1; 0 for a single run) of each metric, and the
    per-seed MAP@R (seed order) for paired comparisons."""
    row: dict[str, Any] = {"name": name}
    for metric in METRICS:
        values = [run[metric] for run in per_seed]
        row[metric] = statistics.fmean(values)
        row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    row["seconds"] = seconds
    row["runs"] = len(per_seed)
    row["map_at_r_by_seed"] = [run["map_at_r"] for run in per_seed]
    return row


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: metrics in percent as mean ± std, wall seconds."""
    header = "| row | MAP@R | R-Precision | P@1 | seconds |"
    lines = [header, "|---|---:|---:|---:|---:|"]
    for row in rows:
        cells = [f"{100 * row[m]:.2f} ± {100 * row[f'{m}_std']:.2f}" for m in METRICS]
        lines.append(f"| {row['name']} | {' | '.join(cells)} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def verdicts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The targets, checked on MAP@R: full student > teacher-continued > teacher (difference
    of means against two standard deviations of the pair), full student - teacher >= +1.5,
    every trained row above the pretrained trunk, and the ablation in the poster's order.

    Each gap also gets a paired line: rows of one seed share that seed's teacher, pseudo
    labels and labeled batches, so the per-seed difference (mean ± its sample std) separates
    the rows' effect from the seed-to-seed spread that both rows share."""
    by_name = {row["name"]: row for row in rows}
    lines = []

    def gap(better: str, worse: str) -> None:
        if better not in by_name or worse not in by_name:
            return
        a, b = by_name[better], by_name[worse]
        diff = a["map_at_r"] - b["map_at_r"]
        bar = 2 * max(a["map_at_r_std"], b["map_at_r_std"])
        verdict = "yes" if diff > bar else "no"
        if min(a["runs"], b["runs"]) < 2:
            verdict = "n/a (one seed: no std)"
        lines.append(
            f"{better} - {worse}: {100 * diff:+.2f} MAP@R; > 2 std ({100 * bar:.2f})? {verdict}"
        )
        pairs = list(zip(a["map_at_r_by_seed"], b["map_at_r_by_seed"], strict=False))
        if len(pairs) >= 2 and a["runs"] == b["runs"]:
            diffs = [x - y for x, y in pairs]
            mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
            lines.append(
                f"  paired by seed: {100 * mean:+.2f} ± {100 * std:.2f} over {len(diffs)} seeds; "
                f"> 2 std? {'yes' if mean > 2 * std else 'no'}"
            )

    full = STUDENTS[-1][0]
    gap(full, CONTROL_ROW)
    gap(CONTROL_ROW, TEACHER_ROW)
    gap(full, TEACHER_ROW)
    gap(full, PML_ROW)
    if full in by_name and TEACHER_ROW in by_name:
        diff = 100 * (by_name[full]["map_at_r"] - by_name[TEACHER_ROW]["map_at_r"])
        lines.append(f"full student - teacher >= +1.50 MAP@R? {diff >= 1.5} ({diff:+.2f})")
    if TRUNK_ROW in by_name:
        trunk = by_name[TRUNK_ROW]["map_at_r"]
        below = [r["name"] for r in rows if r["name"] != TRUNK_ROW and r["map_at_r"] <= trunk]
        lines.append(f"every trained row above the pretrained trunk? {not below} {below or ''}")
    order = [TEACHER_ROW] + [name for name, _, _ in STUDENTS]
    if all(name in by_name for name in order):  # only meaningful with every ablation row
        values = [by_name[name]["map_at_r"] for name in order]
        ordered = all(a < b for a, b in zip(values, values[1:], strict=False))
        lines.append(f"ablation in the paper's order (teacher < ... < full student)? {ordered}")
    return lines


def results_payload(
    machine: str, rows: Sequence[Mapping[str, Any]], extra: Mapping[str, Any]
) -> dict[str, Any]:
    return {"machine": machine, "rows": list(rows), **extra}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    wall = time.perf_counter()
    torch.set_num_threads(args.threads)
    data_root = check_data_root(args.data_root)
    os.environ["SLADE_DATA_ROOT"] = str(data_root)  # read by the cub100/birds525 manifests
    config = build_config(args)
    rows = set((args.rows or ",".join(DEFAULT_ROWS)).split(","))
    unknown = rows - set(ROW_GROUPS)
    if unknown:
        raise SystemExit(f"--rows: unknown {sorted(unknown)}; use {','.join(ROW_GROUPS)}")
    seeds = 1 if args.quick else args.seeds
    work = args.work_dir / ("quick" if args.quick else "full")
    device = resolve_device(config.runtime.device)
    machine = machine_description(device, config.runtime)
    print(f"machine: {machine}", flush=True)

    start = time.perf_counter()
    prepared = prepare_data(config.data, work / "data", work / "downloads")
    prepare_seconds = time.perf_counter() - start
    filter_report = json.loads(Path(prepared.report_path).read_text())
    removed = [r["class_name"] for f in filter_report["filter"] for r in f.get("removed", [])]
    print(f"data ({prepare_seconds:.1f}s): {prepared.counts}", flush=True)
    print(f"leakage filter removed {len(removed)} unlabeled species: {', '.join(removed)}")
    index_path = Path(prepared.index_path)
    if args.validation:
        index_path = holdout_index(
            index_path, work / "validation" / "index.parquet", args.holdout, config.data.filter
        )
        print(f"VALIDATION protocol: last {args.holdout} training classes are the test set")

    views = min(
        config.runtime.cached_views, max(config.teacher.optim.epochs, config.student.optim.epochs)
    )
    cache_seconds = warm_prefix_cache(
        config.model,
        index_path,
        config.runtime,
        views,
        bool(rows & STUDENT_ROW_GROUPS),
    )
    print(f"trunk feature cache ready ({cache_seconds:.1f}s, {views} train views)", flush=True)

    per_seed: dict[str, list[dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    if "trunk" in rows:
        start = time.perf_counter()
        per_seed[TRUNK_ROW] = [trunk_scores(config.model, index_path, config.runtime)]
        seconds[TRUNK_ROW] = time.perf_counter() - start
        report(0, TRUNK_ROW, per_seed[TRUNK_ROW][0], seconds[TRUNK_ROW])
    pl_seconds = 0.0
    pair_diagnostics: dict[str, list[dict[str, float]]] = {}
    for seed in range(seeds):
        metrics, took, pl, pairs = run_seed(seed, config, index_path, work, rows)
        for name, report_ in pairs.items():
            pair_diagnostics.setdefault(name, []).append(report_)
        pl_seconds += pl
        for name, values in metrics.items():
            per_seed.setdefault(name, []).append(values)
            seconds[name] = seconds.get(name, 0.0) + took[name]

    table = [summarize(n, per_seed[n], seconds[n]) for n in ROW_ORDER if n in per_seed]
    total = time.perf_counter() - wall
    extra = {
        "protocol": "validation (held-out training classes)" if args.validation else "test",
        "seeds": list(range(seeds)),
        "std": "sample standard deviation over seeds (n-1)",
        "metrics_scale": "fractions (the printed table shows percent)",
        "data_counts": prepared.counts,
        "leakage_filter_removed": removed,
        "labels_hidden": filter_report.get("labels_hidden", {}),
        "pair_diagnostics_by_seed": pair_diagnostics,
        "config": config.model_dump(mode="json", exclude={"data"}),
        "timing_seconds": {
            "prepare_data": prepare_seconds,
            "trunk_feature_cache": cache_seconds,
            "pseudo_labels": pl_seconds,
            "total": total,
        },
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    payload = results_payload(machine, table, extra)
    write_json(args.out, payload)
    print()
    print(format_table(table))
    for line in verdicts(table):
        print(line)
    print(
        f"\nwall time {total:.0f}s (data {prepare_seconds:.0f}s, trunk features "
        f"{cache_seconds:.0f}s, pseudo labels {pl_seconds:.0f}s); seconds per row = that row's "
        f"training + evaluation summed over {seeds} seed(s); results in {args.out}"
    )
    return payload


if __name__ == "__main__":
    main()
