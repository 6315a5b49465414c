"""One parser per official layout: (manifest, root) -> rel, label, class_name, split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from slade_core.data.manifest import CsvManifest, DatasetManifest
from slade_core.data.parsers.cars import parse_cars196
from slade_core.data.parsers.compcars import parse_compcars
from slade_core.data.parsers.cub import parse_cub200
from slade_core.data.parsers.custom import parse_csv, parse_folder, parse_synthetic
from slade_core.data.parsers.fashion200k import parse_fashion200k
from slade_core.data.parsers.inshop import parse_inshop
from slade_core.data.parsers.nabirds import parse_nabirds

PARSERS: dict[str, Callable[[Any, Path], pd.DataFrame]] = {
    "cub200": parse_cub200,
    "cars196": parse_cars196,
    "inshop": parse_inshop,
    "nabirds": parse_nabirds,
    "compcars": parse_compcars,
    "fashion200k": parse_fashion200k,
    "folder": parse_folder,
    "csv": parse_csv,
    "synthetic": parse_synthetic,
}


def parse_dataset(manifest: DatasetManifest, root: Path, labeled: bool = False) -> pd.DataFrame:
    """Read the dataset's layout at `root` into the parsed-frame shape (see parsers.common).

    `labeled`: the preset's labeled dataset. Only a CSV can lack labels, so only its reader
    needs to know (it then requires the label column)."""
    if isinstance(manifest, CsvManifest):
        return parse_csv(manifest, root, labeled)
    return PARSERS[manifest.type](manifest, root)
