"""Atomic file and directory writes, and stable content hashes.

Every stage output is written under a temporary name and renamed when complete, so a
reader (or a retried stage) sees either the whole result or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `path`; rename it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to `path`; rename it onto `path` on success.

    An existing `path` is replaced only once the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = _tmp_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash a JSON-serialisable object independently of key order."""
    payload = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks so memory stays flat.

    A directory (a partitioned Parquet dataset) digests its files' relative names and
    contents in name order, so it changes when a part is added, removed or rewritten.
    """
    path = Path(path)
    h = hashlib.new(algorithm)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if file != path:
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def file_stats_digest(paths: Iterable[str | os.PathLike]) -> str:
    """Digest of the files' paths, sizes and modification times (in the given order).

    A cheap content fingerprint for image sets: adding, removing or rewriting a file changes
    it without reading any bytes. A missing file contributes its path only, so a vanished
    image also changes the digest.
    """
    h = hashlib.sha256()
    for path in paths:
        h.update(os.fsencode(path) + b"\0")
        try:
            st = os.stat(path)
        except FileNotFoundError:
            h.update(b"missing\0")
            continue
        h.update(f"{st.st_size}:{st.st_mtime_ns}\0".encode())
    return h.hexdigest()
