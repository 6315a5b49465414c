"""Dataset lineage in MLflow: the prepared index as a dataset input of a run.

The dataset's digest is `slade_core.io.file_stats_digest` over the index's image paths (in
index order): it changes when an image is added, removed or rewritten, so two runs that
show the same digest trained on the same files.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mlflow.data
import pandas as pd
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from slade_core.io import file_stats_digest, write_json

LINEAGE_FILE = "lineage.json"


def write_lineage(index_path: Path, name: str) -> dict[str, str]:
    """Digest the index's images and write lineage.json next to it."""
    index = pd.read_parquet(index_path, columns=["path"])
    lineage = {"name": name, "digest": file_stats_digest(index["path"].astype(str))[:32]}
    write_json(Path(index_path).parent / LINEAGE_FILE, lineage)
    return lineage


def log_index_input(
    client: MlflowClient, run_id: str, index_path: Path, lineage_path: Path, context: str
) -> None:
    """Log index.parquet, named and digested as in lineage.json, as a dataset input of a run."""
    lineage = json.loads(Path(lineage_path).read_text())
    frame = pd.read_parquet(index_path)
    with warnings.catch_warnings():
        # mlflow 3.17 registers the local file source twice and hints at integer columns;
        # both are notes about its own inference, not about the index.
        warnings.filterwarnings("ignore", "The specified dataset source", UserWarning)
        warnings.filterwarnings("ignore", "Hint: Inferred schema", UserWarning)
        dataset = mlflow.data.from_pandas(
            frame, source=Path(index_path).as_uri(), name=lineage["name"], digest=lineage["digest"]
        )._to_mlflow_entity()  # the schema is inferred here
    tags = [InputTag("mlflow.data.context", context)]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=tags)])
