"""A stage directory `<runs>/<stage>/<key>/`: computed once, under a lock, then renamed.

The work happens in `<key>.partial/` while `<key>.lock` is held (an OS file lock, released
by the kernel when its holder dies, also on SIGKILL; it works on NFS). So

- two runs with the same key never write into one partial directory: the second waits
  for the lock and then finds the first's finished directory (it does not recompute);
- a stage killed mid-way leaves its partial directory, and the next attempt continues
  in it (a training stage resumes from its epoch checkpoint there);
- a reader sees `<key>/` only when it is complete (one atomic rename).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout


def partial_dir(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def lock_file(final: Path) -> Path:
    return final.with_name(final.name + ".lock")


def compute_once(
    final: Path,
    compute: Callable[[Path], None],
    on_wait: Callable[[], None] | None = None,
) -> bool:
    """Make the directory `final` exist, filled by `compute(work_dir)`.

    Returns True when this call computed it, False when it existed already or another
    process finished it while this one waited for the lock (`on_wait` is called once
    before waiting). A `compute` that raises leaves its partial directory for the next
    attempt.
    """
    if final.is_dir():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file(final))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait()
        lock.acquire()
    try:
        if final.is_dir():  # finished by the process we waited for
            return False
        work = partial_dir(final)
        work.mkdir(exist_ok=True)
        compute(work)
        os.replace(work, final)
        return True
    finally:
        lock.release()
