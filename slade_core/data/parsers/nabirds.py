"""NABirds: images.txt, image_class_labels.txt, classes.txt, hierarchy.txt.

Images are labeled with "visual categories" such as `Red-tailed Hawk (Adult)`; the
hierarchy groups them under their species (`Red-tailed Hawk`). A category whose parent is
that species is indexed as the species, which is the level at which overlap with CUB matters.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from slade_core.data.errors import DataError
from slade_core.data.manifest import NABirdsManifest
from slade_core.data.parsers.common import make_frame, read_fields

_QUALIFIER = re.compile(r"\s*\([^)]*\)\s*$")


def parse_nabirds(manifest: NABirdsManifest, root: Path) -> pd.DataFrame:
    name = manifest.name
    images = dict(read_fields(root / "images.txt", name, 2))
    labels = {k: int(v) for k, v in read_fields(root / "image_class_labels.txt", name, 2)}
    classes = {int(k): v for k, v in read_fields(root / "classes.txt", name, 2, 1)}
    parent = {int(c): int(p) for c, p in read_fields(root / "hierarchy.txt", name, 2)}
    species = {}
    for cid, cname in classes.items():
        up = parent.get(cid)
        base = _QUALIFIER.sub("", cname)
        species[cid] = up if base != cname and up in classes and classes[up] == base else cid
    rows = []
    for image_id, rel in images.items():
        if image_id not in labels or labels[image_id] not in classes:
            raise DataError(
                f"dataset {name!r}: image {image_id} has no class in image_class_labels.txt "
                "or classes.txt; the metadata is inconsistent"
            )
        cid = species[labels[image_id]]
        rows.append((f"images/{rel}", cid, classes[cid], ""))
    return make_frame(rows)
