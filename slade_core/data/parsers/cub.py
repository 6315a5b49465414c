"""CUB-200-2011: images.txt, image_class_labels.txt, classes.txt (class ids 1-200)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from slade_core.data.errors import DataError
from slade_core.data.manifest import Cub200Manifest
from slade_core.data.parsers.common import make_frame, read_fields


def parse_cub200(manifest: Cub200Manifest, root: Path) -> pd.DataFrame:
    name = manifest.name
    images = dict(read_fields(root / "images.txt", name, 2))
    labels = {k: int(v) for k, v in read_fields(root / "image_class_labels.txt", name, 2)}
    # "001.Black_footed_Albatross" -> "Black_footed_Albatross"
    classes = {
        int(k): v.split(".", 1)[-1] for k, v in read_fields(root / "classes.txt", name, 2, 1)
    }
    missing = sorted(set(images) ^ set(labels))
    if missing:
        raise DataError(
            f"dataset {name!r}: images.txt and image_class_labels.txt disagree on image ids "
            f"{missing[:5]}; the metadata is inconsistent"
        )
    unknown = sorted(set(labels.values()) - set(classes))
    if unknown:
        raise DataError(f"dataset {name!r}: class ids {unknown[:5]} missing from classes.txt")
    return make_frame(
        (f"images/{rel}", labels[i], classes[labels[i]], "") for i, rel in images.items()
    )
