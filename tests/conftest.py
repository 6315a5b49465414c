"""Shared test setup: Prefect isolated in a temporary home, one test server per session.

Prefect reads its settings from the environment, so they are set before prefect is first
imported. Tests that need Prefect take the session-scoped `prefect_server` fixture (a
`prefect_test_harness` server, ~12 s to start, started once). `tiny_preset` is a preset
file plus overrides that shrink every stage to seconds on CPU.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_PREFECT_HOME = tempfile.mkdtemp(prefix="slade-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = "slade_core"  # as scripts/env.sh sets them
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402
import yaml  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """A Prefect API for in-process flow runs (temporary database, torn down at the end)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


TINY_DATA = {
    "labeled": {
        "dataset": {
            "name": "tiny-birds",
            "type": "synthetic",
            "params": {
                "seed": 0,
                "n_classes": 8,
                "images_per_class": 6,
                "image_size": 32,
                "unlabeled_per_class": 3,
                "unlabeled_extra_classes": 2,
            },
            "split": {"rule": "source"},
        }
    }
}


def tiny_overrides(cache_dir: Path) -> dict:
    """Seconds per stage on CPU: 32 px images, 1 epoch of 2 iterations, k=4."""
    return {
        "model": {"image_size": 32, "embedding_dim": 16},
        "runtime": {
            "device": "cpu",
            "batch_size": 64,
            "cached_views": 1,
            "feature_cache_dir": str(cache_dir),
        },
        "teacher": {"batch_size": 8, "m_per_class": 2},
        "teacher.optim": {"epochs": 2, "iterations_per_epoch": 2},
        "cluster": {"k": 4, "iterations": 5},
        "student": {
            "labeled_batch_size": 8,
            "unlabeled_batch_size": 8,
            "m_per_class": 2,
            "basis": {"size": 8, "warmup_iterations": 0},
        },
        "student.optim": {"epochs": 2, "iterations_per_epoch": 2},
        "evaluate.examples": 2,
    }


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory) -> tuple[str, dict]:
    """A preset file with the tiny synthetic data, and overrides shrinking every stage."""
    root = tmp_path_factory.mktemp("tiny-preset")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump({"description": "test", "data": TINY_DATA}))
    return str(path), tiny_overrides(root / "feature-cache")
