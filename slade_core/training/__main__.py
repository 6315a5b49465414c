"""Train the teacher, the student or its control as a process, so a stage can launch it
under torchrun:

    torchrun --nproc_per_node=4 -m slade_core.training teacher \\
        --index index.parquet --config config.json --out DIR
    torchrun --nproc_per_node=4 -m slade_core.training student --index index.parquet \\
        --pseudo-labels pseudo_labels.parquet --teacher teacher.pt --config config.json --out DIR

(`control` takes the student's arguments and reads the "student" section.)

config.json is a PipelineConfig dump, or any subset of its sections ("model", "runtime",
"teacher"/"student"); absent sections take their defaults. Rank 0 writes the outputs of
train_teacher/train_student to DIR, prints one JSON line per epoch and a final JSON line with
the checkpoint path. Any failure exits non-zero (torchrun then stops the other ranks).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from slade_core.config import (
    ModelConfig,
    PipelineConfig,
    RuntimeConfig,
    StudentConfig,
    TeacherConfig,
)
from slade_core.training.control import train_control
from slade_core.training.distributed import from_env, process_group
from slade_core.training.launch import CONFIG_SECTIONS
from slade_core.training.student import train_student
from slade_core.training.teacher import train_teacher


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m slade_core.training",
        description="Train the SLADE teacher or student (single process or under torchrun).",
    )
    stages = parser.add_subparsers(dest="stage", required=True)
    teacher = stages.add_parser("teacher", help="train the teacher on split=='train'")
    student = stages.add_parser("student", help="train the student with pseudo labels")
    control = stages.add_parser("control", help="the student's steps on labeled data only")
    for sub in (teacher, student, control):
        sub.add_argument("--index", type=Path, required=True, help="index.parquet")
        sub.add_argument("--config", type=Path, required=True, help="PipelineConfig JSON")
        sub.add_argument("--out", type=Path, required=True, help="output directory")
    for sub in (student, control):
        sub.add_argument("--pseudo-labels", type=Path, required=True, help="pseudo_labels.parquet")
        sub.add_argument("--teacher", type=Path, required=True, help="teacher checkpoint")
    return parser


def _read_config(path: Path, stage: str) -> tuple[ModelConfig, RuntimeConfig, Any]:
    """(model, runtime, teacher or student config) from a PipelineConfig-shaped JSON file."""
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError("the top level must be a JSON object of PipelineConfig sections")
    unknown = set(raw) - set(PipelineConfig.model_fields)
    if unknown:
        raise ValueError(
            f"unknown sections {sorted(unknown)}; expected PipelineConfig fields such as "
            "'model', 'runtime', 'teacher', 'student'"
        )
    section = CONFIG_SECTIONS[stage]
    kind = TeacherConfig if section == "teacher" else StudentConfig
    return (
        ModelConfig.model_validate(raw.get("model", {})),
        RuntimeConfig.model_validate(raw.get("runtime", {})),
        kind.model_validate(raw.get(section, {})),
    )


def _report_epoch(epoch: int, total: int, metrics: dict[str, float]) -> None:
    print(json.dumps({"epoch": epoch, "epochs": total, **metrics}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        model, runtime, stage_config = _read_config(args.config, args.stage)
    except (OSError, ValueError, ValidationError) as e:
        parser.error(f"config {args.config}: {e}")
    logging.basicConfig(
        level=logging.INFO, format=f"[rank {from_env().rank}] %(levelname)s %(name)s: %(message)s"
    )
    with process_group(runtime.device) as ctx:
        if args.stage == "teacher":
            result = train_teacher(
                args.index, model, stage_config, runtime, args.out, on_epoch=_report_epoch
            )
        else:
            train = train_student if args.stage == "student" else train_control
            result = train(
                args.index, args.pseudo_labels, args.teacher, model, stage_config, runtime,
                args.out, on_epoch=_report_epoch,
            )  # fmt: skip
    if ctx.is_main:
        print(json.dumps({"checkpoint": str(result.checkpoint_path), "processes": ctx.world_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
