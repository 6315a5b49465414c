"""Run a training stage in `runtime.processes` torchrun processes (DDP), from any caller.

`launch_teacher` / `launch_student` take the same arguments as `train_teacher` /
`train_student` and return the same `TrainResult`, so a caller (the Prefect stage) picks one
or the other by `runtime.processes`. They start `python -m slade_core.training` under
torchrun, relay its per-epoch JSON lines to `on_epoch`, and turn a failed run into an error
carrying the end of the ranks' stderr (kept in `out_dir/<stage>_launch.log`). A killed
launch resumes like an in-process run: rank 0 keeps `resume.pt` in `out_dir`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

from slade_core.config import ModelConfig, RuntimeConfig, StudentConfig, TeacherConfig
from slade_core.io import write_json
from slade_core.training.loop import EpochCallback, TrainResult

_RAISED = re.compile(r"\[rank\d+\]: [\w.]*(Error|Exception|Interrupt)\b")


def _errors(log: Path) -> str:
    """The ranks' exception lines from a torchrun log, else its last lines."""
    lines = log.read_text().splitlines()
    raised = [line for line in lines if _RAISED.match(line)]
    return "\n".join(dict.fromkeys(raised) or deque(lines, maxlen=30))


def _launch(
    stage: str,
    arguments: list[str],
    model: ModelConfig,
    stage_config: TeacherConfig | StudentConfig,
    runtime: RuntimeConfig,
    out_dir: Path,
    on_epoch: EpochCallback | None,
) -> TrainResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = {"model": model, "runtime": runtime, stage: stage_config}
    config = write_json(
        out_dir / f"{stage}_launch.json",
        {name: section.model_dump(mode="json") for name, section in sections.items()},
    )
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={runtime.processes}",
        "-m", "slade_core.training", stage, *arguments,
        "--config", str(config), "--out", str(out_dir),
    ]  # fmt: skip
    log = out_dir / f"{stage}_launch.log"
    checkpoint = None
    with (
        log.open("w") as stderr,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True) as process,
    ):
        for line in process.stdout:
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "checkpoint" in record:
                checkpoint = Path(record["checkpoint"])
            elif on_epoch is not None:
                epoch, total = record.pop("epoch"), record.pop("epochs")
                on_epoch(epoch, total, record)
    if process.returncode != 0 or checkpoint is None:
        raise RuntimeError(
            f"{stage} training under torchrun ({runtime.processes} processes) failed with exit "
            f"code {process.returncode}; full log: {log}\n{_errors(log)}"
        )
    return TrainResult(checkpoint, json.loads((out_dir / "history.json").read_text()))


def launch_teacher(
    index_path: str | os.PathLike,
    model: ModelConfig,
    teacher: TeacherConfig,
    runtime: RuntimeConfig,
    out_dir: str | os.PathLike,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """`train_teacher` in runtime.processes torchrun processes."""
    arguments = ["--index", str(index_path)]
    return _launch("teacher", arguments, model, teacher, runtime, Path(out_dir), on_epoch)


def launch_student(
    index_path: str | os.PathLike,
    pseudo_labels_path: str | os.PathLike,
    teacher_checkpoint: str | os.PathLike,
    model: ModelConfig,
    student: StudentConfig,
    runtime: RuntimeConfig,
    out_dir: str | os.PathLike,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """`train_student` in runtime.processes torchrun processes."""
    arguments = [
        "--index", str(index_path),
        "--pseudo-labels", str(pseudo_labels_path),
        "--teacher", str(teacher_checkpoint),
    ]  # fmt: skip
    return _launch("student", arguments, model, student, runtime, Path(out_dir), on_epoch)
