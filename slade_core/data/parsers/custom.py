"""Your own data: a folder of class sub-folders, or a CSV (path, label[, class_name][, split]).

The generated quickstart set is indexed through the CSV reader too.
"""

from __future__ import annotations

import difflib
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


def parse_csv(manifest: CsvManifest, root: Path, labeled: bool = False) -> pd.DataFrame:
    path = resolve_path(manifest.path)
    csv = path / "index.csv" if path.is_dir() else path
    return read_index_csv(csv, root, manifest.name, labeled)


def parse_synthetic(manifest: SyntheticManifest, root: Path) -> pd.DataFrame:
    return read_index_csv(root / "index.csv", root, manifest.name)


def read_index_csv(
    path: Path, images_root: Path, dataset: str, labeled: bool = False
) -> pd.DataFrame:
    """Read path,label[,class_name][,split]; image paths relative to `images_root`.

    Labels are class ids when every one is an integer (-1: unlabeled), else class names:
    ids then follow sorted names (as folder names do) and the name is the class_name. A
    `labeled` dataset must have a label column.
    """
    table = pd.read_csv(require(path, dataset), dtype=str, keep_default_na=False)
    needed = ["path", "label"] if labeled else ["path"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        close = {
            c: difflib.get_close_matches(c, list(table.columns), n=1, cutoff=0.6) for c in missing
        }
        hints = "".join(f"; is {m[0]!r} the {c!r} column?" for c, m in close.items() if m)
        raise DataError(
            f"dataset {dataset!r}: {path} has columns {list(table.columns)} but needs "
            f"{needed} (optionally 'class_name' and 'split'){hints}"
        )
    n = len(table)
    labels = table["label"].str.strip() if "label" in table.columns else pd.Series(["-1"] * n)
    names = table["class_name"] if "class_name" in table.columns else pd.Series([""] * n)
    given = labels[labels != ""]
    if all(v.lstrip("-").isdigit() for v in given):
        ids = labels.replace("", "-1").astype(int)
    else:
        ids, names = _ids_by_name(labels, names)
    if labeled and not (ids >= 0).any():
        raise DataError(
            f"dataset {dataset!r}: {path.name} is the labeled dataset but no row has a label "
            "(an empty label or -1 marks an unlabeled image)"
        )
    splits = table["split"].str.strip() if "split" in table.columns else pd.Series([""] * n)
    unknown = sorted(set(splits) - set(SPLITS) - {""})
    if unknown:
        raise DataError(
            f"dataset {dataset!r}: {path.name} has split values {unknown}; use {list(SPLITS)}"
        )
    rels = [_relative(p, images_root) for p in table["path"]]
    return make_frame(zip(rels, ids, names, splits, strict=True))


def _ids_by_name(labels: pd.Series, names: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Class-name labels -> (ids by sorted name, class names); an empty label is unlabeled."""
    classes = sorted(set(labels) - {""})
    ids = labels.map({name: i for i, name in enumerate(classes)}).fillna(-1).astype(int)
    return ids, names.where(names != "", labels)


def _relative(value: str, images_root: Path) -> str:
    path = Path(value)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.relative_to(images_root).as_posix()
    except ValueError:
        return path.as_posix()
