"""Shared test setup: Prefect isolated in a temporary home, one test server per session.

Prefect reads its settings from the environment, so they are set before prefect is first
imported. Tests that need Prefect take the session-scoped `prefect_server` fixture (a
`prefect_test_harness` server, ~12 s to start, started once).
"""

from __future__ import annotations

import os
import tempfile

_PREFECT_HOME = tempfile.mkdtemp(prefix="slade-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """A Prefect API for in-process flow runs (temporary database, torn down at the end)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
