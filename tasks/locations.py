"""Where data, results and tracking live: downloads, the runs root, the MLflow tracking URI."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def runs_root() -> Path:
    """Root of all stage directories: $SLADE_RUNS_DIR or ./.slade/runs."""
    return Path(os.environ.get("SLADE_RUNS_DIR", ".slade/runs")).resolve()


def downloads_dir() -> Path:
    """Where archives are found or downloaded: $SLADE_DOWNLOADS_DIR or ./.slade/downloads."""
    return Path(os.environ.get("SLADE_DOWNLOADS_DIR", ".slade/downloads")).resolve()


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite store under ./.slade/mlflow."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = Path(".slade/mlflow/mlflow.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"
