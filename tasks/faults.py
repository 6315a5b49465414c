"""Test-only fault injection, each at most once per runs directory (a marker file there).

- SLADE_FAULT_ONCE=<stage> fails that stage before it computes.
- SLADE_HANG_ONCE=<stage> blocks that stage after its first reported epoch (its resume
  checkpoint is written), so a test can kill the process in the middle of the stage;
  SLADE_HANG_ONCE=embed_shard blocks the first extraction shard. The marker file holds the
  blocked process's id, the one to kill.
"""

from __future__ import annotations

import os
import time

from tasks.locations import runs_root

FAULT_ENV = "SLADE_FAULT_ONCE"
HANG_ENV = "SLADE_HANG_ONCE"
HANG_SECONDS = 600


class InjectedFault(RuntimeError):
    """Raised by the test-only fault hooks."""


def _first_time(env: str, kind: str, stage: str) -> bool:
    if os.environ.get(env) != stage:
        return False
    marker = runs_root() / f".{kind}-{stage}"
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(os.getpid()))
    return True


def maybe_inject_fault(stage: str) -> None:
    """Fail `stage` when $SLADE_FAULT_ONCE names it."""
    if _first_time(FAULT_ENV, "fault", stage):
        raise InjectedFault(f"{FAULT_ENV}={stage}: injected failure (happens once)")


def maybe_hang(stage: str) -> None:
    """Block `stage` when $SLADE_HANG_ONCE names it (and fail if nobody kills it)."""
    if _first_time(HANG_ENV, "hang", stage):
        time.sleep(HANG_SECONDS)
        raise InjectedFault(f"{HANG_ENV}={stage}: hung {HANG_SECONDS} s and nobody killed it")
