"""Decode every indexed image once, so bad files are found before training, not during.

Each file is opened, verified and fully decoded (in parallel processes for large sets).
Missing, empty, unreadable or truncated files, zero-size images and modes the loader cannot
turn into RGB are reported with the reason; CMYK, grayscale and palette images are fine
(slade_core.images converts them at load time) and are only counted. Results are cached by
path, size and modification time, so a re-run after a failed one re-decodes only what changed.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile

from slade_core.io import atomic_path

# Modes slade_core.images.load_rgb converts to RGB.
SUPPORTED_MODES = frozenset(
    {
        "1",
        "L",
        "LA",
        "La",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBa",
        "RGBX",
        "CMYK",
        "YCbCr",
        "I",
        "I;16",
        "I;16B",
        "I;16L",
        "F",
    }
)
_PARALLEL_FROM = 512  # below this, process start-up costs more than it saves


@dataclass(frozen=True)
class ImageStatus:
    """Result of checking one file: its mode when readable, else the problem."""

    mode: str | None
    problem: str | None


def check_image(path: str) -> ImageStatus:
    """Open, verify and decode one image file."""
    try:
        if os.path.getsize(path) == 0:
            return ImageStatus(None, "empty file (0 bytes)")
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            if 0 in im.size:
                return ImageStatus(im.mode, f"zero-size image {im.size[0]}x{im.size[1]}")
            im.load()
            mode = im.mode
    except FileNotFoundError:
        return ImageStatus(None, "file not found")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return ImageStatus(None, f"unreadable: {err}")
    if mode not in SUPPORTED_MODES:
        return ImageStatus(mode, f"unsupported mode {mode}")
    return ImageStatus(mode, None)


def _check_many(paths: Sequence[str]) -> list[ImageStatus]:
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is a problem, not a warning
    try:
        return [check_image(p) for p in paths]
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def check_images(
    paths: Sequence[str], workers: int | None = None, cache: Path | None = None
) -> list[ImageStatus]:
    """Check all files, in order; `workers` processes (default: all CPUs) for large sets.

    `cache`: a file of earlier results keyed by path, size and modification time, so a
    re-run (e.g. after fixing a few files) decodes only new or changed files."""
    known = _read_cache(cache)
    stats = [_stat(p) for p in paths]
    todo = [i for i, st in enumerate(stats) if st is None or known.get(paths[i], (None,))[0] != st]
    fresh = dict(zip(todo, _check_all([paths[i] for i in todo], workers), strict=True))
    statuses = [fresh[i] if i in fresh else known[p][1] for i, p in enumerate(paths)]
    if cache is not None and fresh:
        known |= {paths[i]: (stats[i], fresh[i]) for i in fresh if stats[i] is not None}
        _write_cache(cache, known)
    return statuses


def _check_all(paths: Sequence[str], workers: int | None) -> list[ImageStatus]:
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(paths) < _PARALLEL_FROM:
        return _check_many(paths)
    size = max(64, len(paths) // (workers * 8))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    with ProcessPoolExecutor(workers) as pool:
        return [status for part in pool.map(_check_many, chunks) for status in part]


Stamp = tuple[int, int]  # (size in bytes, modification time in ns)


def _stat(path: str) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _read_cache(cache: Path | None) -> dict[str, tuple[Stamp, ImageStatus]]:
    if cache is None or not cache.is_file():
        return {}
    try:
        rows = json.loads(cache.read_text())
    except ValueError:  # a damaged cache only costs a re-check
        return {}
    return {
        r["path"]: ((r["size"], r["mtime_ns"]), ImageStatus(r["mode"], r["problem"])) for r in rows
    }


def _write_cache(cache: Path, known: dict[str, tuple[Stamp, ImageStatus]]) -> None:
    rows = [
        {"path": p, "size": st[0], "mtime_ns": st[1], "mode": s.mode, "problem": s.problem}
        for p, (st, s) in sorted(known.items())
    ]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        tmp.write_text(json.dumps(rows))


def mode_counts(statuses: Sequence[ImageStatus]) -> dict[str, int]:
    """How many readable images of each mode (those not RGB are converted at load time)."""
    return dict(sorted(Counter(s.mode for s in statuses if s.problem is None).items()))
