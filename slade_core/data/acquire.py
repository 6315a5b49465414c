"""Make a dataset's files available locally and return the directory its parser reads.

Downloaded datasets are assembled under `<downloads_dir>/datasets/<name>/`: every source is
fetched (or, when gated, looked for) and verified, archives are unpacked safely, other files
copied. The directory is renamed into place only when complete and carries a marker naming
the sources it was built from, so a second run reuses it and a changed manifest rebuilds it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from slade_core.data.archive import safe_extract
from slade_core.data.download import fetch_source
from slade_core.data.errors import DataError, MissingFileError
from slade_core.data.manifest import (
    CsvManifest,
    DatasetManifest,
    FolderManifest,
    SyntheticManifest,
    resolve_path,
)
from slade_core.io import atomic_dir, stable_hash

MARKER = ".slade-sources.json"


def acquire(manifest: DatasetManifest, downloads_dir: Path) -> Path:
    """Return the dataset's layout root, fetching and unpacking what is missing."""
    if isinstance(manifest, FolderManifest):
        return _existing_dir(resolve_path(manifest.path), manifest.name)
    if isinstance(manifest, CsvManifest):
        csv_path = resolve_path(manifest.path)
        if not csv_path.exists():
            raise MissingFileError(
                f"dataset {manifest.name!r}: {csv_path} does not exist; fix `path` in its "
                "manifest (relative paths start at the repository root)"
            )
        if manifest.images_root is not None:
            return _existing_dir(resolve_path(manifest.images_root), manifest.name)
        return csv_path if csv_path.is_dir() else csv_path.parent
    if isinstance(manifest, SyntheticManifest):
        from slade_core.data.synthetic import generate_synthetic_birds

        key = stable_hash(manifest.params, 12)
        return generate_synthetic_birds(
            downloads_dir / "synthetic" / f"{manifest.name}-{key}", **manifest.params
        )
    return _assemble(manifest, downloads_dir) / manifest.layout_root


def _existing_dir(path: Path, name: str) -> Path:
    if not path.is_dir():
        raise MissingFileError(
            f"dataset {name!r}: folder {path} does not exist; fix `path` in its manifest "
            "(relative paths start at the repository root; ${VAR:-default} is expanded)"
        )
    return path


def _assemble(manifest: DatasetManifest, downloads_dir: Path) -> Path:
    dataset_dir = downloads_dir / "datasets" / manifest.name
    wanted = [s.model_dump(mode="json") for s in manifest.sources]
    marker = dataset_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return dataset_dir

    files, missing = [], []
    for source in manifest.sources:
        try:
            files.append((source, fetch_source(source, downloads_dir)))
        except MissingFileError as err:
            missing.append(str(err))
    if missing:
        raise MissingFileError(
            f"dataset {manifest.name!r} needs files that cannot be downloaded by a script:\n"
            + "\n".join(missing)
        )
    with atomic_dir(dataset_dir) as tmp:
        for source, path in files:
            into = tmp / source.into
            if source.is_archive:
                safe_extract(path, into)
            else:
                into.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, into / source.filename)
        if not (tmp / manifest.layout_root).is_dir():
            raise DataError(
                f"dataset {manifest.name!r}: after unpacking, {manifest.layout_root!r} is "
                f"missing (found {sorted(p.name for p in tmp.iterdir())}); check layout_root "
                "in the manifest or the archive's contents"
            )
        (tmp / MARKER).write_text(json.dumps(wanted))
    return dataset_dir
