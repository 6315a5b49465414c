"""Which code produced a result: the git commit (a tag) and the source hash (in cache keys)."""

from __future__ import annotations

import functools
import hashlib
import subprocess

import slade_core
from tasks.locations import REPO_ROOT


@functools.cache
def code_version() -> str:
    """Hash of the library source and dataset manifests: results depend on both."""
    digest = hashlib.sha256(slade_core.__version__.encode())
    roots = [REPO_ROOT / "slade_core", REPO_ROOT / "data_manifests" / "datasets"]
    for path in sorted(p for root in roots for p in root.rglob("*") if p.is_file()):
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(REPO_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_commit() -> str:
    """HEAD of the repository the code runs from (`unknown` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()
