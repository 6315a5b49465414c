"""Run a training stage in `runtime.processes` torchrun processes (DDP), from any caller.

`launch_teacher` / `launch_student` / `launch_control` take the same arguments as
`train_teacher` / `train_student` / `train_control` and return the same `TrainResult`, so a
caller (the Prefect stage) picks one or the other by `needs_torchrun(runtime)`. With
`runtime.nnodes > 1` each machine calls the launcher with the same inputs and config;
torchrun's c10d rendezvous at `runtime.rdzv_endpoint` joins them, and the node that gets
rank 0 writes the outputs into the (shared) output directory. They start
`python -m slade_core.training` under torchrun, relay its per-epoch JSON lines to
`on_epoch`, and turn a failed run into an error carrying the end of the ranks' stderr
(kept in `out_dir/<stage>_launch.log`). A killed launch resumes like an in-process run:
rank 0 keeps `resume.pt` in `out_dir`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path

from slade_core.config import ModelConfig, RuntimeConfig, StudentConfig, TeacherConfig
from slade_core.io import stable_hash, write_json
from slade_core.training.loop import EpochCallback, TrainResult

# the PipelineConfig section each stage reads its settings from (the control: the student's)
CONFIG_SECTIONS = {"teacher": "teacher", "student": "student", "control": "student"}
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
    sections = {"model": model, "runtime": runtime, CONFIG_SECTIONS[stage]: stage_config}
    config = write_json(
        out_dir / f"{stage}_launch.json",
        {name: section.model_dump(mode="json") for name, section in sections.items()},
    )
    command = torchrun_command(stage, arguments, runtime, config, out_dir)
    log = out_dir / (
        f"{stage}_launch.log"
        if runtime.nnodes == 1
        else f"{stage}_launch-{socket.gethostname()}-{os.getpid()}.log"  # nodes share out_dir
    )
    checkpoint = None
    with log.open("w") as stderr:
        stderr.write(f"$ {shlex.join(command)}\n")  # what other nodes run to join (nnodes > 1)
        stderr.flush()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True) as process:
            for line in process.stdout:
                if not line.startswith("{"):
                    continue
                record = json.loads(line)
                if "checkpoint" in record:
                    checkpoint = Path(record["checkpoint"])
                elif on_epoch is not None:
                    epoch, total = record.pop("epoch"), record.pop("epochs")
                    on_epoch(epoch, total, record)
    if process.returncode != 0:
        raise RuntimeError(
            f"{stage} training under torchrun ({runtime.nnodes} x {runtime.processes} "
            f"processes) failed with exit code {process.returncode}; full log: {log}\n"
            f"{_errors(log)}"
        )
    if checkpoint is None:  # another node held rank 0 and wrote the outputs
        checkpoint = out_dir / f"{stage}.pt"
        if runtime.nnodes == 1 or not checkpoint.is_file():
            raise RuntimeError(
                f"{stage} training under torchrun ended without a checkpoint in {out_dir}; "
                f"with runtime.nnodes > 1 every node must see the same output directory "
                f"(shared storage for SLADE_RUNS_DIR); full log: {log}"
            )
    return TrainResult(checkpoint, json.loads((out_dir / "history.json").read_text()))


def needs_torchrun(runtime: RuntimeConfig) -> bool:
    """More than one process or machine: train through launch_* instead of train_*."""
    return runtime.processes > 1 or runtime.nnodes > 1


def torchrun_command(
    stage: str, arguments: list[str], runtime: RuntimeConfig, config: Path, out_dir: Path
) -> list[str]:
    """torchrun for this node: `--standalone`, or c10d rendezvous when nnodes > 1.

    Every node runs the same command; the rendezvous id is derived from the stage, its
    inputs and its config, so the nodes of one stage meet and other stages do not.
    """
    if runtime.nnodes == 1:
        nodes = ["--standalone"]
    elif runtime.rdzv_endpoint is None:
        raise ValueError(
            f"runtime.nnodes={runtime.nnodes} needs runtime.rdzv_endpoint: host:port of one "
            f"of the machines that all of them reach (e.g. the first node's address:29400)"
        )
    else:
        run_id = stable_hash(
            {"stage": stage, "arguments": arguments, "config": json.loads(config.read_text())}
        )
        nodes = [
            f"--nnodes={runtime.nnodes}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={runtime.rdzv_endpoint}", f"--rdzv-id=slade-{stage}-{run_id}",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "torch.distributed.run", *nodes,
        f"--nproc_per_node={runtime.processes}",
        "-m", "slade_core.training", stage, *arguments,
        "--config", str(config), "--out", str(out_dir),
    ]  # fmt: skip


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


def _launch_on_pseudo_labels(
    stage: str,
    index_path: str | os.PathLike,
    pseudo_labels_path: str | os.PathLike,
    teacher_checkpoint: str | os.PathLike,
    model: ModelConfig,
    student: StudentConfig,
    runtime: RuntimeConfig,
    out_dir: str | os.PathLike,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """`train_student` or `train_control` (the same arguments) under torchrun."""
    arguments = [
        "--index", str(index_path),
        "--pseudo-labels", str(pseudo_labels_path),
        "--teacher", str(teacher_checkpoint),
    ]  # fmt: skip
    return _launch(stage, arguments, model, student, runtime, Path(out_dir), on_epoch)


launch_student = functools.partial(_launch_on_pseudo_labels, "student")
launch_student.__doc__ = "`train_student` in runtime.processes torchrun processes."
launch_control = functools.partial(_launch_on_pseudo_labels, "control")
launch_control.__doc__ = "`train_control` in runtime.processes torchrun processes."
