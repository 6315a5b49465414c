"""Test-only fault injection: SLADE_FAULT_ONCE=<stage> fails that stage once."""

from __future__ import annotations

import os

from tasks.locations import runs_root

FAULT_ENV = "SLADE_FAULT_ONCE"


class InjectedFault(RuntimeError):
    """Raised by the test-only fault hook (SLADE_FAULT_ONCE=<stage>)."""


def maybe_inject_fault(stage: str) -> None:
    """Fail `stage` when $SLADE_FAULT_ONCE names it, once per runs directory."""
    if os.environ.get(FAULT_ENV) != stage:
        return
    marker = runs_root() / f".fault-{stage}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    raise InjectedFault(f"{FAULT_ENV}={stage}: injected failure (happens once)")
