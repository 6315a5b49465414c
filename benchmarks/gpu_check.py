"""The GPU path's first run, as one prepared command for a lent device (at most 8 minutes on
one H100 or H200, over ../shared/data; no internet needed).

    .venv/bin/python benchmarks/gpu_check.py --out gpu_check.json       # on the device
    .venv/bin/python benchmarks/gpu_check.py --quick --out /tmp/gc.json   # CPU smoke run

Sections, in order (each one's failure is caught and reported, and the JSON is rewritten
after each, so a run cut short still leaves what it measured):
1. Whole-trunk training throughput against the bare model (the >= 90% target), for
   EfficientNet-Lite0 at 128 px and ResNet-50 at 224 px, random weights
   (`benchmarks/throughput.py`).
2. The teacher, control, full student and oracle rows (full recipe and pseudo labels only) of
   `benchmarks/birds.py` on benchmarks/presets/birds_dense.yaml with the whole trunk trained
   (model.trainable_blocks = -1, 128 px, the offline Lite0 weights `lite0-package`), seed 0:
   the CPU table's rows, so the two compare.
It prints the device's name first and one table at the end. `--quick` runs every section on
the CPU with tiny sizes over generated images in the shared data's layout, in about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import birds  # noqa: E402
import throughput  # noqa: E402

from slade_core.io import write_json  # noqa: E402
from slade_core.workers import usable_cpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DENSE = REPO / "benchmarks" / "presets" / "birds_dense.yaml"
# (backbone, image size): the bird benchmark's model at the shared images' size, and the
# paper's model at the paper's size; --quick times timm's tiny test network instead
BACKBONES = (("tf_efficientnet_lite0", 128), ("resnet50", 224))
QUICK_BACKBONES = (("test_byobnet", 32),)
BIRD_ROWS = (
    birds.TEACHER_ROW,
    birds.CONTROL_ROW,
    birds.STUDENTS[-1][0],
    birds.ORACLE_ROW,
    birds.ORACLE_PL_ROW,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="results JSON")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny sizes and images")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--work-dir", type=Path, help="scratch folder (default: a fresh temp dir)")
    return p.parse_args(argv)


def throughput_argv(backbone: str, size: int, quick: bool, data_root: Path, work: Path):
    """throughput.py's arguments: a few hundred real images and enough steps for a steady
    GPU figure; with `quick` the smallest run that still measures every figure, on images
    throughput.py generates."""
    cache = ["--cache-dir", str(work / f"decoded-{backbone}"), "--backbone", backbone]
    if quick:
        sizes = ["--image-size", str(size), "--batch", "16", "--steps", "1", "--warmup", "1"]
        return [*sizes, "--rounds", "1", "--images", "32", "--device", "cpu", "--workers", "0",
                "--no-pil", "--data-root", str(work / "absent"), *cache]  # fmt: skip
    sizes = ["--image-size", str(size), "--batch", "64", "--steps", "10", "--warmup", "5"]
    return [*sizes, "--rounds", "3", "--images", "800", "--data-root", str(data_root), *cache]


def birds_argv(quick: bool, data_root: Path, work: Path) -> list[str]:
    """birds.py's arguments for the dense protocol's five rows with the whole trunk; with
    `quick` two steps per row at 32 px on the CPU."""
    size, threads = ("32", "2") if quick else ("128", str(usable_cpus()))
    argv = [
        "--data", str(DENSE), "--finetune", "--image-size", size, "--seeds", "1",
        "--rows", "teacher,controls,full,oracle", "--set", "model.weights=lite0-package",
        "--data-root", str(data_root), "--work-dir", str(work / "birds"),
        "--cache-dir", str(work / "birds-cache"), "--out", str(work / "birds.json"),
        "--threads", threads,
    ]  # fmt: skip
    if quick:
        argv += ["--epochs", "1", "--k", "10"]
        for setting in (
            "teacher.optim.iterations_per_epoch=2",
            "student.optim.iterations_per_epoch=2",
            "student.basis.warmup_iterations=1",
            "runtime.device=cpu",
            "runtime.amp_on_cpu=false",
            "runtime.num_workers=0",
            "model.embedding_dim=64",
        ):
            argv += ["--set", setting]
    return argv


def tiny_bird_sets(root: Path) -> Path:
    """Generated stand-ins for ../shared/data (cub100: 100 classes x 4 images, birds525: 12
    classes x 2), same layout, so --quick runs the dense protocol's class ranges anywhere."""
    rng = np.random.default_rng(0)
    for name, classes, per_class in (("cub100", 100, 4), ("birds525", 12, 2)):
        rows = []
        for label in range(classes):
            # random letters: no two names come near the leakage filter's threshold
            species = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 10))
            folder = root / name / "images" / species
            folder.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, (1, 1, 3))
            for i in range(per_class):
                pixels = np.clip(base + rng.normal(0, 30, (40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
                rows.append((f"images/{species}/{i}.jpg", label, species))
        frame = pd.DataFrame(rows, columns=["path", "label", "class_name"])
        frame.to_csv(root / name / "index.csv", index=False)
    return root


def throughput_summary(result: dict[str, Any]) -> str:
    figures, ratios = result["img_s"], result["ratios"]
    shares = ", ".join(f"{k.split('/')[0]} {100 * v:.0f}%" for k, v in ratios.items())
    return f"bare {figures['bare']:.4g} img/s; of bare: {shares}"


def birds_summary(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, result) per row, and the real gain as a share of the oracle gain."""
    by_name = {row["name"]: row for row in payload["rows"]}
    lines = []
    for name in BIRD_ROWS:
        if name in by_name:
            row = by_name[name]
            values = " / ".join(f"{100 * row[m]:.2f}" for m in birds.METRICS)
            lines.append((name, f"{values} ({row['seconds']:.0f}s)"))
    control, full, oracle = (by_name.get(n) for n in (BIRD_ROWS[1], BIRD_ROWS[2], BIRD_ROWS[4]))
    if control and full and oracle:
        real = 100 * (full["map_at_r"] - control["map_at_r"])
        gain = 100 * (oracle["map_at_r"] - control["map_at_r"])
        share = f" = {100 * real / gain:.0f}%" if gain > 0 else ""
        lines.append(
            ("full - control, of oracle PL - control", f"{real:+.2f} of {gain:+.2f}{share}")
        )
    return lines


def format_table(sections: dict[str, dict[str, Any]]) -> str:
    """One markdown table over every section; a failed one shows its error."""
    lines = ["| check | result | seconds |", "|---|---|---:|"]
    for name, section in sections.items():
        seconds = f"{section.get('seconds', 0):.0f}"
        if section["status"] != "ok":
            error = section.get("error", "").replace("|", "/").replace("\n", " ")
            lines.append(f"| {name} | {section['status'].upper()}: {error} | {seconds} |")
        elif name.startswith("throughput"):
            result = section["result"]
            label = f"{name}, {result['image_size']} px, batch {result['batch']}"
            lines.append(f"| {label} | {throughput_summary(result)} | {seconds} |")
        else:
            lines.append(f"| {name}, seed 0 | MAP@R / R-Precision / P@1 (%) | {seconds} |")
            lines += [
                f"| {label} | {value} | |" for label, value in birds_summary(section["result"])
            ]
    return "\n".join(lines)


def run_section(name: str, fn: Callable[[], Any], payload: dict[str, Any], out: Path) -> None:
    """Run one section; its result or its error (a SystemExit too) goes into the payload,
    which is written before and after, so a run killed mid-section shows which one."""
    sections = payload["sections"]
    sections[name] = {"status": "running"}
    write_json(out, payload)
    start = time.perf_counter()
    try:
        sections[name] = {"status": "ok", "result": fn()}
    except (Exception, SystemExit) as err:
        sections[name] = {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(),
        }
        print(f"section {name} FAILED:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
    sections[name]["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out, payload)


def device_name(quick: bool) -> str:
    if not quick and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {usable_cpus()} usable CPUs)"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    wall = time.perf_counter()
    device = device_name(args.quick)
    print(f"device: {device}", flush=True)
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        data_root = tiny_bird_sets(work / "data") if args.quick else args.data_root
        payload: dict[str, Any] = {
            "device": device,
            "torch": torch.__version__,
            "quick": args.quick,
            "data_root": str(data_root),
            "command": " ".join(["gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "sections": {},
        }
        for backbone, size in QUICK_BACKBONES if args.quick else BACKBONES:
            run_section(
                f"throughput {backbone}",
                lambda b=backbone, s=size: throughput.main(
                    throughput_argv(b, s, args.quick, data_root, work)
                ),
                payload,
                args.out,
            )
        run_section(
            "birds_dense whole trunk",
            lambda: birds.main(birds_argv(args.quick, data_root, work)),
            payload,
            args.out,
        )
    payload["seconds"] = round(time.perf_counter() - wall, 1)
    payload["table"] = format_table(payload["sections"])
    write_json(args.out, payload)
    print(f"\ndevice: {device}\n{payload['table']}")
    print(f"wall {payload['seconds']:.0f}s; JSON in {args.out}")
    return payload


if __name__ == "__main__":
    main()
