"""Fashion200k: labels/*_detect_all.txt lines `path <tab> score <tab> caption`.

The class is the product (the folder holding the image, e.g. .../51727804/51727804_0.jpeg);
its name is the caption of its first image.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pandas as pd

from slade_core.data.errors import DataError, MissingFileError
from slade_core.data.manifest import Fashion200kManifest
from slade_core.data.parsers.common import make_frame


def parse_fashion200k(manifest: Fashion200kManifest, root: Path) -> pd.DataFrame:
    files = sorted((root / "labels").glob("*_detect_all.txt"))
    if not files:
        raise MissingFileError(
            f"dataset {manifest.name!r}: no labels/*_detect_all.txt under {root}; "
            "the labels archive is missing or unpacked elsewhere"
        )
    seen: dict[str, tuple[str, int, str, str]] = {}
    captions: dict[int, str] = {}
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            product = PurePosixPath(fields[0]).parent.name
            if len(fields) < 3 or not product.isdigit():
                raise DataError(
                    f"dataset {manifest.name!r}: {path.name} line {number} is not "
                    f"'<.../product_id/image> <tab> score <tab> caption': {line!r}"
                )
            item = int(product)
            captions.setdefault(item, fields[2].strip())
            seen.setdefault(fields[0], (fields[0], item, captions[item], ""))
    return make_frame(seen.values())
