"""tasks.stage_dir: one writer per stage key across processes, partial work reused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.stage_dir import compute_once, lock_file, partial_dir

REPO = Path(__file__).resolve().parents[1]

# One process: announce itself, then compute_once. The first to get the lock waits (bounded)
# until every process has announced, so the others are waiting on the lock meanwhile.
WORKER = """
import json, os, sys, time
from pathlib import Path
from tasks.stage_dir import compute_once

final, log, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
(log.parent / f"ready-{os.getpid()}").touch()

def compute(work):
    with log.open("a") as f:
        f.write(f"start {os.getpid()} {sorted(p.name for p in work.iterdir())}\\n")
    deadline = time.monotonic() + 60
    while len(list(log.parent.glob("ready-*"))) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(float(os.environ.get("HOLD_SECONDS", "1")))
    (work / "out.txt").write_text(str(os.getpid()))
    with log.open("a") as f:
        f.write(f"end {os.getpid()}\\n")

print(json.dumps({"computed": compute_once(final, compute)}))
"""


def _spawn(final: Path, log: Path, n: int, hold: float = 1.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(final), str(log), str(n)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "HOLD_SECONDS": str(hold)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_with_one_key_compute_once_and_share_the_result(tmp_path):
    final = tmp_path / "runs" / "cluster" / "abc123"
    log = tmp_path / "log" / "events.txt"
    log.parent.mkdir()
    procs = [_spawn(final, log, 2) for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1])["computed"])
    assert sorted(results) == [False, True]
    events = log.read_text().splitlines()
    assert len(events) == 2 and events[0].startswith("start") and events[1].startswith("end")
    assert events[0].split()[1] == events[1].split()[1]  # one process, start to end
    assert (final / "out.txt").read_text() == events[0].split()[1]
    assert not partial_dir(final).exists()


def test_a_failed_compute_leaves_its_partial_directory_for_the_next_attempt(tmp_path):
    final = tmp_path / "stage" / "key"

    def fail(work: Path) -> None:
        (work / "epoch-1.ckpt").write_text("state")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        compute_once(final, fail)
    assert not final.exists()
    seen = []

    def resume(work: Path) -> None:
        seen.extend(p.name for p in work.iterdir())
        (work / "done").touch()

    assert compute_once(final, resume) is True
    assert seen == ["epoch-1.ckpt"]
    assert sorted(p.name for p in final.iterdir()) == ["done", "epoch-1.ckpt"]
    assert compute_once(final, fail) is False  # complete: never computed again


def test_a_killed_holder_releases_the_lock_and_its_partial_work_is_continued(tmp_path):
    final = tmp_path / "runs" / "train_teacher" / "k"
    log = tmp_path / "log" / "events.txt"
    log.parent.mkdir()
    proc = _spawn(final, log, 1, hold=600)
    deadline = time.monotonic() + 60
    while not (log.exists() and "start" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    (partial_dir(final) / "resume.pt").write_text("epoch 3")  # what the killed stage left
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert lock_file(final).exists() and not final.exists()
    seen, waited = [], []
    computed = compute_once(
        final, lambda work: seen.extend(os.listdir(work)), lambda: waited.append(True)
    )
    assert computed is True
    assert seen == ["resume.pt"] and waited == []  # the lock died with its holder
