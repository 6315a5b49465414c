"""`slade` entry point: slade_core.cli with its model loaded from MLflow.

The model is any MLflow model logged by the publish stage: the champion
(`models:/slade-embedder@champion`, the default), a version (`models:/slade-embedder/3`), a
logged model (`models:/m-...`) or a run's (`runs:/<publish run id>/student`). Its gallery
index travels with it (extra_files/). The store is $MLFLOW_TRACKING_URI (`source
scripts/env.sh` for the local services), else the SQLite store under ./.slade/mlflow.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from slade_core import cli


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(argv, load_mlflow_model)


def load_mlflow_model(model_uri: str):
    """(embedder, gallery index folder) of an MLflow model URI, fetched from the store."""
    # the model's files are fetched once per search: a download bar per file is only noise
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow.artifacts
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    from tasks.locations import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_registry_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=_model_files(model_uri)))
    except MlflowException as err:
        raise SystemExit(
            f"slade search: cannot load {model_uri!r} from {tracking_uri()}: {err.message}\n"
            "Run the pipeline first (make demo), or pass --model models:/<name>/<version> "
            "or runs:/<publish run id>/student; set MLFLOW_TRACKING_URI to the right store."
        ) from None
    return mlflow.pytorch.load_model(str(local)), local / "extra_files"


def _model_files(uri: str) -> str:
    """runs:/<run id>/<name> -> models:/<logged model id>: MLflow 3 keeps a logged model's
    files with the model, not under the run's artifacts."""
    if not uri.startswith("runs:/"):
        return uri
    from mlflow.tracking import MlflowClient

    run_id, _, name = uri.removeprefix("runs:/").partition("/")
    client = MlflowClient()
    found = client.search_logged_models(
        [client.get_run(run_id).info.experiment_id],
        filter_string=f"name = '{name}' AND source_run_id = '{run_id}'",
    )
    if not found:
        raise SystemExit(f"slade search: run {run_id} logged no model named {name!r}")
    return f"models:/{found[0].model_id}"


if __name__ == "__main__":
    sys.exit(main())
