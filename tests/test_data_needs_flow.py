"""The pipeline's data step fails before any training when a training class is smaller than
the samplers' m_per_class, on a fresh index and on a cached one (which is kept)."""

from __future__ import annotations

import pytest
from test_flow import _task_runs

pytestmark = pytest.mark.slow  # a Prefect test server and real flow runs


@pytest.fixture()
def stores(tmp_path, monkeypatch):
    monkeypatch.setenv("SLADE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SLADE_DOWNLOADS_DIR", str(tmp_path / "downloads"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "slade-test")
    return tmp_path


def _run(preset, overrides, m):
    from flows.pipeline import slade

    teacher = {**overrides["teacher"], "batch_size": 2 * m, "m_per_class": m}
    state = slade(preset=preset, overrides={**overrides, "teacher": teacher}, return_state=True)
    runs = _task_runs(state.state_details.flow_run_id)
    return state, {name: attempts[-1].state.name for name, attempts in runs.items()}


def test_small_classes_fail_the_run_before_training_and_keep_the_index(
    prefect_server, stores, tiny_preset
):
    preset, overrides = tiny_preset  # 6 images in every training class
    state, tasks = _run(preset, overrides, 8)
    assert state.is_failed()
    assert "training classes have fewer than 8 images, the samplers' m_per_class" in state.message
    assert tasks == {"prepare_data": "Completed"}  # no training stage started
    state, tasks = _run(preset, overrides, 7)  # the index is reused, and checked again
    assert state.is_failed() and "fewer than 7 images" in state.message
    assert tasks == {"prepare_data": "Cached"}
