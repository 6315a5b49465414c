"""slade/sweep: the search space checked before any trial, and a sweep end to end.

The end-to-end scenario runs on a Prefect test server and an MLflow tracking server (HTTP):
a grid over a student-only field (`student.lambda2`, three values) on the quickstart preset
with its last training classes as the validation split, the first trial's student failing
once (test fault hook); then the same sweep again, which resumes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from shell_helpers import free_port, wait_for

from slade_core.sweep import VALIDATION_FIELD, SweepError, parse_sweep

SPACE = {"student.lambda2": [0.25, 0.5, 1.0]}
SPACE_TRIALS = ("trial-0", "trial-1", "trial-2")
VALIDATION_CLASSES = 4  # of quickstart's 24 training classes


@pytest.mark.parametrize(
    ("space", "extra", "named"),
    [
        ({"cluster.kk": [4, 8]}, {}, "cluster.kk: Extra inputs are not permitted"),
        ({"cluster.k": [1, 8]}, {}, "cluster.k: Input should be greater than or equal to 2"),
        ({"cluster.k": {"low": 8, "high": 4}}, {"sampler": "tpe", "trials": 2}, "cluster.k: low"),
        ({"student.lambda2": {"low": 0, "high": 1, "log": True}}, {"sampler": "tpe"}, "log"),
        ({"cluster.k": {"low": 4, "high": 8}}, {}, "space.cluster.k: sampler 'grid'"),
        ({"cluster.k": [4]}, {"sampler": "tpe"}, "needs a trial budget"),
        ({"cluster.k": []}, {}, "space.cluster.k: give at least one value"),
        ({"cluster.k": [4]}, {"metric": "map_at_r"}, "metric: 'map_at_r' is not <model>/<metric>"),
        (
            {"cluster.k": [4]},
            {"metric": "student_minus_control/map_at_r", "overrides": {"evaluate.control": False}},
            "needs the control stage",
        ),
    ],
)
def test_bad_search_space_is_refused_naming_the_field(space, extra, named):
    with pytest.raises(SweepError, match="invalid sweep") as error:
        parse_sweep(preset="quickstart", space=space, validation_classes=0, **extra)
    assert named in str(error.value)


def test_a_valid_space_gives_the_trial_its_values_and_the_budget():
    import optuna

    spec = parse_sweep(
        preset="quickstart",
        space={"student.lambda2": {"low": 0.01, "high": 1.0, "log": True}, "cluster.k": [24, 48]},
        sampler="tpe",
        trials=5,
        validation_classes=0,
    )
    assert spec.budget == 5
    picked = {"student.lambda2": 0.1, "cluster.k": 48}
    assert spec.suggest(optuna.trial.FixedTrial(picked)) == picked
    assert spec.overrides_for(picked, validation=True) == {
        "student": {"lambda2": 0.1},
        "cluster": {"k": 48},
    }
    grid = parse_sweep(preset="quickstart", space={"cluster.k": [24, 48, 96]}, validation_classes=0)
    assert grid.budget == 3
    assert grid.study_name == parse_sweep(**grid.model_dump() | {"trials": 2}).study_name


def _validation_supported() -> bool:
    from slade_core.experiment import load_experiment

    try:
        load_experiment("quickstart", {VALIDATION_FIELD: VALIDATION_CLASSES})
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free port (its own process group, stopped at the end)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def healthy() -> bool:
        assert server.poll() is None, (root / "server.log").read_text()[-3000:]
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for("the MLflow server", healthy, timeout=180)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def stores(tmp_path_factory, mlflow_server):
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLADE_RUNS_DIR", str(root / "runs"))
        mp.setenv("SLADE_DOWNLOADS_DIR", str(root / "downloads"))
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "slade-sweep-test")
        yield root


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_bad_search_space_fails_before_any_trial(prefect_server, stores):
    from flows.sweep import sweep

    state = sweep(preset="quickstart", space={"student.lamda2": [0.5, 1.0]}, return_state=True)
    assert state.is_failed()
    assert "space.student.lamda2" in state.message and "student.lamda2: Extra" in state.message
    assert _subflow_runs(state.state_details.flow_run_id) == {}
    assert not (stores / "runs" / "sweeps").exists()  # no study either


@pytest.fixture(scope="module")
def swept(prefect_server, stores, tiny_preset):
    """The sweep with its first trial's student failing once, then the same sweep again."""
    from flows.sweep import sweep

    if not _validation_supported():
        pytest.fail(f"the config has no {VALIDATION_FIELD} (the validation split)")
    _, overrides = tiny_preset
    params = {
        "preset": "quickstart",
        "overrides": overrides,
        "space": SPACE,
        "validation_classes": VALIDATION_CLASSES,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLADE_FAULT_ONCE", "train_student")
        first = sweep(**params, return_state=True)
    again = sweep(**params, return_state=True)
    return first, again


def _subflow_runs(flow_run_id) -> dict[str, object]:
    """The subflow runs of a flow run by name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
    return {run.name: run for run in runs}


def _task_states(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name: run.state.name for run in sorted(runs, key=lambda r: r.created)}


def _artifact(key: str, flow_run_id):
    """A flow run's artifact (a progress artifact is updated in place)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )
    return artifact


def _children(client, exp, parent_run_id: str):
    """The MLflow runs whose parent is `parent_run_id` (a sweep's trials)."""
    return client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def _mlflow():
    from tasks.tracking import experiment_id, mlflow_client

    client = mlflow_client()
    return client, experiment_id(client)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sweep_trains_the_teacher_once_and_goes_on_after_a_failed_trial(swept):
    first, _ = swept
    assert first.is_completed(), first.message
    trials = _subflow_runs(first.state_details.flow_run_id)
    assert set(trials) == {*SPACE_TRIALS, f"trial-{first.result()['best_trial']}-test"}
    assert trials["trial-0"].state.is_failed()
    assert "injected failure" in trials["trial-0"].state.message
    teacher = {name: _task_states(trials[name].id)["train_teacher"] for name in SPACE_TRIALS}
    assert teacher == {"trial-0": "Completed", "trial-1": "Cached", "trial-2": "Cached"}
    assert [row["status"] for row in first.result()["trials"]] == ["FAILED", "FINISHED", "FINISHED"]
    progress = _artifact("slade-sweep-progress", first.state_details.flow_run_id)
    assert progress.data == 100.0 and progress.description.startswith("3/3 trials; best ")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_trials_are_children_of_the_sweep_run_with_params_and_metrics(swept):
    first, _ = swept
    result = first.result()
    client, exp = _mlflow()
    sweep_run = client.get_run(result["mlflow_run_id"])
    assert sweep_run.data.tags["slade.kind"] == "sweep" and sweep_run.info.status == "FINISHED"
    children = _children(client, exp, sweep_run.info.run_id)
    by_trial = {int(c.data.tags["slade.sweep_trial"]): c for c in children}
    assert sorted(by_trial) == [0, 1, 2]
    assert by_trial[0].info.status == "FAILED"
    assert by_trial[0].info.run_name == "trial-0 (failed)"
    assert {float(run.data.params["student.lambda2"]) for run in children} == set(*SPACE.values())
    for number in (1, 2):
        run = by_trial[number]
        assert run.info.status == "FINISHED" and run.info.run_name == f"trial-{number}"
        assert run.data.params["data.validation_classes"] == str(VALIDATION_CLASSES)
        assert "student/map_at_r" in run.data.metrics
    assert {"best_value", "trial_value"} <= set(sweep_run.data.metrics)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_best_trial_runs_on_test_and_is_registered_with_its_sweep(swept):
    first, _ = swept
    result = first.result()
    client, exp = _mlflow()
    trials = _children(client, exp, result["mlflow_run_id"])
    scores = {
        int(t.data.tags["slade.sweep_trial"]): t.data.metrics["student/map_at_r"]
        for t in trials
        if t.info.status == "FINISHED"
    }
    assert result["best_trial"] == max(scores, key=scores.get)
    test_run = client.get_run(result["test_run_id"])
    assert test_run.info.status == "FINISHED"
    assert test_run.data.tags["slade.sweep_run"] == result["mlflow_run_id"]
    assert "mlflow.parentRunId" not in test_run.data.tags  # not compared with the trials
    assert test_run.data.params["data.validation_classes"] == "0"
    assert (
        float(test_run.data.params["student.lambda2"]) == result["best_params"]["student.lambda2"]
    )
    (version,) = client.search_model_versions(
        f"tags.`slade.pipeline_run` = '{test_run.info.run_id}'"
    )
    assert version.tags["slade.sweep_run"] == result["mlflow_run_id"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_running_the_sweep_again_resumes_it(swept):
    first, again = swept
    assert again.is_completed(), again.message
    assert again.result()["study"] == first.result()["study"]
    assert again.result()["mlflow_run_id"] == first.result()["mlflow_run_id"]
    assert again.result()["test_run_id"] == first.result()["test_run_id"]
    assert _subflow_runs(again.state_details.flow_run_id) == {}  # nothing left to run


@pytest.mark.slow
def test_the_report_prints_the_trials_table(swept):
    _, again = swept
    report = subprocess.run(
        [sys.executable, "scripts/sweep_report.py", str(again.state_details.flow_run_id)],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| trial | student.lambda2 | status | student/map_at_r |" in report
    assert f"best: trial {again.result()['best_trial']}; on the test split" in report
