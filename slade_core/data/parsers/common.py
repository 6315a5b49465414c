"""Helpers shared by the layout parsers: metadata files and the parsed-frame shape.

Every parser returns a frame with columns `rel` (POSIX path relative to the layout root),
`label` (the layout's own class id, -1 when unknown), `class_name` and `split` ("" when the
layout gives none), sorted by `rel` so the index is the same on every run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from slade_core.data.errors import DataError, MissingFileError

COLUMNS = ("rel", "label", "class_name", "split")


def require(path: Path, dataset: str) -> Path:
    """Fail with a clear message when a metadata file of the layout is absent."""
    if not path.is_file():
        raise MissingFileError(
            f"dataset {dataset!r}: metadata file {path} is missing; the download is incomplete "
            "or the layout differs from the manifest (delete the dataset folder to re-extract)"
        )
    return path


def read_fields(path: Path, dataset: str, n: int, maxsplit: int | None = None) -> list[list[str]]:
    """Read a whitespace-separated metadata file; every non-empty line must have `n` fields."""
    rows = []
    for number, line in enumerate(require(path, dataset).read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=maxsplit if maxsplit is not None else -1)
        if len(fields) != n:
            raise DataError(
                f"dataset {dataset!r}: {path.name} line {number} has {len(fields)} fields, "
                f"expected {n}: {line!r}"
            )
        rows.append(fields)
    return rows


def make_frame(rows: Iterable[tuple[str, int, str, str]]) -> pd.DataFrame:
    """Rows of (rel, label, class_name, split) -> the parsed frame, sorted by rel."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    frame = frame.astype({"rel": str, "label": "int64", "class_name": str, "split": str})
    return frame.sort_values("rel", kind="stable").reset_index(drop=True)


def load_mat(path: Path, dataset: str) -> dict:
    """Read a MATLAB v5 file (Cars-196, CompCars metadata); needs scipy."""
    require(path, dataset)
    try:
        from scipy.io import loadmat
    except ImportError as err:  # scipy comes with the ML stack; say what to do if not
        raise DataError(f"reading {path.name} needs scipy: pip install scipy") from err
    return loadmat(path, squeeze_me=True, struct_as_record=True)
