"""CompCars web-nature data: image/<make>/<model>/<year>/*.jpg, misc/make_model_name.mat.

The class is the car model (model id from the path); its name is "<make> <model>".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from slade_core.data.errors import DataError, MissingFileError
from slade_core.data.manifest import CompCarsManifest
from slade_core.data.parsers.common import load_mat, make_frame


def parse_compcars(manifest: CompCarsManifest, root: Path) -> pd.DataFrame:
    mat = load_mat(root / "misc" / "make_model_name.mat", manifest.name)
    makes = [str(n).strip() for n in np.atleast_1d(mat["make_names"])]
    models = [str(n).strip() for n in np.atleast_1d(mat["model_names"])]
    image_dir = root / "image"
    if not image_dir.is_dir():
        raise MissingFileError(f"dataset {manifest.name!r}: image folder {image_dir} is missing")
    rows = []
    for path in image_dir.glob("*/*/*/*.jpg"):
        make_id, model_id = int(path.parts[-4]), int(path.parts[-3])
        if not (1 <= make_id <= len(makes) and 1 <= model_id <= len(models)):
            raise DataError(
                f"dataset {manifest.name!r}: {path} names make {make_id} / model {model_id}, "
                "which make_model_name.mat does not list"
            )
        rows.append(
            (
                path.relative_to(root).as_posix(),
                model_id,
                f"{makes[make_id - 1]} {models[model_id - 1]}",
                "",
            )
        )
    return make_frame(rows)
