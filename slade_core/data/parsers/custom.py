"""Your own data: a folder of class sub-folders, or a CSV (path, label[, class_name][, split]).

The generated quickstart set is indexed through the CSV reader too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from slade_core.data.errors import DataError
from slade_core.data.manifest import (
    SPLITS,
    CsvManifest,
    FolderManifest,
    SyntheticManifest,
    resolve_path,
)
from slade_core.data.parsers.common import make_frame, require


def parse_folder(manifest: FolderManifest, root: Path) -> pd.DataFrame:
    extensions = {e.lower() for e in manifest.extensions}
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"dataset {manifest.name!r}: {root} has no class sub-folders; expected "
            "<path>/<class name>/<image files>"
        )
    rows = [
        (f.relative_to(root).as_posix(), label, folder.name, "")
        for label, folder in enumerate(classes)
        for f in folder.rglob("*")
        if f.is_file() and f.suffix.lower() in extensions
    ]
    return make_frame(rows)


def parse_csv(manifest: CsvManifest, root: Path) -> pd.DataFrame:
    path = resolve_path(manifest.path)
    return read_index_csv(path / "index.csv" if path.is_dir() else path, root, manifest.name)


def parse_synthetic(manifest: SyntheticManifest, root: Path) -> pd.DataFrame:
    return read_index_csv(root / "index.csv", root, manifest.name)


def read_index_csv(path: Path, images_root: Path, dataset: str) -> pd.DataFrame:
    """Read path,label[,class_name][,split]; image paths relative to `images_root`."""
    table = pd.read_csv(require(path, dataset), dtype=str, keep_default_na=False)
    if "path" not in table.columns:
        raise DataError(
            f"dataset {dataset!r}: {path} has columns {list(table.columns)}; it needs 'path' "
            "(and 'label' for labeled data, optionally 'class_name' and 'split')"
        )
    n = len(table)
    labels = table["label"] if "label" in table.columns else pd.Series(["-1"] * n)
    bad = [v for v in labels if not v.lstrip("-").isdigit()]
    if bad:
        raise DataError(
            f"dataset {dataset!r}: {path.name} has non-integer labels such as {bad[0]!r}"
        )
    splits = table["split"].str.strip() if "split" in table.columns else pd.Series([""] * n)
    unknown = sorted(set(splits) - set(SPLITS) - {""})
    if unknown:
        raise DataError(
            f"dataset {dataset!r}: {path.name} has split values {unknown}; use {list(SPLITS)}"
        )
    names = table["class_name"] if "class_name" in table.columns else pd.Series([""] * n)
    rels = [_relative(p, images_root) for p in table["path"]]
    return make_frame(zip(rels, labels.astype(int), names, splits, strict=True))


def _relative(value: str, images_root: Path) -> str:
    path = Path(value)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.relative_to(images_root).as_posix()
    except ValueError:
        return path.as_posix()
