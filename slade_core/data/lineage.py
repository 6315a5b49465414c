"""Fingerprints of the image files a preset reads: part of prepare_data's cache key.

Downloaded datasets are pinned by their manifests (checksums) and the generated quickstart
set by its parameters, so the config already covers them. Local `folder` and `csv` datasets
can change under an unchanged config: their listing (paths, sizes, modification times, and
the CSV itself) is digested here, so adding, removing or replacing an image re-runs
prepare_data and every stage after it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from slade_core.data.acquire import acquire
from slade_core.data.errors import DataError
from slade_core.data.manifest import CsvManifest, FolderManifest, resolve_path
from slade_core.data.parsers import parse_dataset
from slade_core.data.preset import DatasetRef
from slade_core.io import file_digest, file_stats_digest, stable_hash


def source_digest(refs: Iterable[DatasetRef], downloads_dir: Path) -> str:
    """Digest of the local (folder / csv) datasets' image files; stable when nothing changed.

    A dataset that cannot be listed (missing folder, bad CSV) contributes its error text, so
    the stage still runs and fails there with the message that says what to fix.
    """
    parts = []
    for ref in refs:
        manifest = ref.manifest()
        if not isinstance(manifest, FolderManifest | CsvManifest):
            continue
        try:
            root = acquire(manifest, downloads_dir)
            rels = parse_dataset(manifest, root)["rel"]
        except DataError as err:
            parts.append({"dataset": manifest.name, "error": str(err)})
            continue
        part = {
            "dataset": manifest.name,
            "files": file_stats_digest(str(p if Path(p).is_absolute() else root / p) for p in rels),
        }
        if isinstance(manifest, CsvManifest):
            csv = resolve_path(manifest.path)
            part["csv"] = file_digest(csv / "index.csv" if csv.is_dir() else csv)
        parts.append(part)
    return stable_hash(parts, length=32)
