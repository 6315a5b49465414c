"""A stage's inputs: files of earlier stages, read from the artifacts of their MLflow runs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow.tracking import MlflowClient

from tasks.locations import runs_root, tracking_uri
from tasks.tracking import mlflow_client


def local_artifact_dir(client: MlflowClient, run_id: str) -> Path | None:
    """The run's artifact directory when the artifact store is this filesystem."""
    uri = client.get_run(run_id).info.artifact_uri
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    return None


def stage_input(result: Mapping[str, Any], name: str) -> Path:
    """A file of an earlier stage, read from the artifacts of that stage's MLflow run.

    Local artifact stores are read in place; remote ones (an MLflow server proxying
    artifacts, e.g. for a GPU worker on another machine) are downloaded once into
    `${SLADE_RUNS_DIR}/_inputs/<run id>/`.
    """
    import mlflow.artifacts

    client = mlflow_client()
    run_id = result["run_id"]
    local = local_artifact_dir(client, run_id)
    if local is not None:
        path = local / name
    else:
        cache = runs_root() / "_inputs" / run_id
        path = cache / name
        if not path.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                got = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=name, dst_path=tmp, tracking_uri=tracking_uri()
                )
                os.replace(got, path)
    if not path.exists():
        raise FileNotFoundError(
            f"stage {result['stage']!r} (MLflow run {run_id}) has no artifact {name!r}; "
            f"its artifacts may have been deleted: rerun with a fresh SLADE_RUNS_DIR"
        )
    return path
