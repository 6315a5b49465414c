"""DeepFashion In-shop: Eval/list_eval_partition.txt gives each image's item and split.

File format: a count line, a header line, then `image_name item_id evaluation_status` with
status train / query / gallery. The class is the item (`id_00000002` -> 2).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from slade_core.data.errors import DataError
from slade_core.data.manifest import InShopManifest
from slade_core.data.parsers.common import make_frame, require


def parse_inshop(manifest: InShopManifest, root: Path) -> pd.DataFrame:
    path = require(root / manifest.partition, manifest.name)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DataError(f"dataset {manifest.name!r}: {path.name} lacks its count and header lines")
    rows = []
    for number, line in enumerate(lines[2:], 3):
        fields = line.split()
        if len(fields) != 3 or fields[2] not in ("train", "query", "gallery"):
            raise DataError(
                f"dataset {manifest.name!r}: {path.name} line {number} is not "
                f"'image item_id train|query|gallery': {line!r}"
            )
        image, item, status = fields
        rows.append((image, int(item.rsplit("_", 1)[-1]), item, status))
    if len(rows) != int(lines[0]):
        raise DataError(
            f"dataset {manifest.name!r}: {path.name} announces {lines[0].strip()} images but "
            f"lists {len(rows)}; the file is truncated"
        )
    return make_frame(rows)
