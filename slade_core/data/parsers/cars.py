"""Cars-196 metric-learning files: car_ims/*.jpg + cars_annos.mat (class ids 1-196)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from slade_core.data.errors import DataError
from slade_core.data.manifest import Cars196Manifest
from slade_core.data.parsers.common import load_mat, make_frame


def parse_cars196(manifest: Cars196Manifest, root: Path) -> pd.DataFrame:
    mat = load_mat(root / manifest.annotations, manifest.name)
    try:
        annotations = np.atleast_1d(mat["annotations"])
        names = [str(n) for n in np.atleast_1d(mat["class_names"])]
        paths = [str(p) for p in annotations["relative_im_path"]]
        labels = [int(c) for c in annotations["class"]]
    except (KeyError, ValueError) as err:
        raise DataError(
            f"dataset {manifest.name!r}: {manifest.annotations} lacks {err} "
            "(expected annotations.relative_im_path/class and class_names)"
        ) from err
    return make_frame((p, c, names[c - 1], "") for p, c in zip(paths, labels, strict=True))
