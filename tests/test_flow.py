"""The `slade` flow end to end on a tiny generated dataset under a Prefect test server.

One module-scoped scenario runs the real stages once: the student stage fails once (test
fault hook), the flow run is retried the way `prefect flow-run retry` does it, a second
flow run with identical inputs follows, then one with another `cluster.k`, one with
two self-training rounds and one whose champion must beat its control (evaluate.control is
on by default, so every run also trains the control). The tests then assert on what it
left: stage artifacts and their schemas, MLflow parent/child runs, Cached task states.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from slade_core.data.synthetic import generate_synthetic_birds

# a Prefect test server and six real flow runs in the module fixture; a hang guard, not a timing
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Runs dir, MLflow store and downloads for this module's flow runs."""
    root = tmp_path_factory.mktemp("flow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLADE_RUNS_DIR", str(root / "runs"))
        mp.setenv("SLADE_DOWNLOADS_DIR", str(root / "downloads"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "slade-test")
        yield root


def _task_runs(flow_run_id) -> dict[str, list]:
    """Task runs of one flow run by stage name, oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    by_name: dict[str, list] = {}
    for run in sorted(runs, key=lambda r: r.created):
        by_name.setdefault(run.name, []).append(run)
    return by_name


def _retry(flow_run_id):
    """What `prefect flow-run retry ID --entrypoint ...` does for a run without deployment."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    from flows.pipeline import slade

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Scheduled(message="retry"), force=True)
        flow_run = client.read_flow_run(flow_run_id)
    return run_flow(slade, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")


def _mtimes(runs_dir: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in runs_dir.glob("*/*/stage.json")}


@pytest.fixture(scope="module")
def scenario(prefect_server, stores, tiny_preset):
    """Fail the student once, retry the flow run, then run again with the same inputs."""
    from flows.pipeline import slade

    preset, overrides = tiny_preset
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLADE_FAULT_ONCE", "train_student")
        failed = slade(preset=preset, overrides=overrides, return_state=True)
    flow_run_id = failed.state_details.flow_run_id
    before_retry = _mtimes(stores / "runs")
    retried = _retry(flow_run_id)
    after_retry = _mtimes(stores / "runs")
    again = slade(preset=preset, overrides=overrides, return_state=True)
    other_k = copy.deepcopy(overrides)
    other_k["cluster"]["k"] = 5
    k_changed = slade(preset=preset, overrides=other_k, return_state=True)
    two_rounds = slade(preset=preset, overrides={**overrides, "rounds": 2}, return_state=True)
    # a student that cannot move off the teacher (nor can its control): student = control
    frozen = copy.deepcopy(overrides)
    frozen["student.optim"] |= {"lr": 1e-12, "trunk_lr": 1e-12}
    frozen["publish"] = {"registered_model": "control-rule", "champion_beats_control": True}
    control_rule = slade(preset=preset, overrides=frozen, return_state=True)
    return {
        "failed": failed,
        "retried": retried,
        "again": again,
        "k_changed": k_changed,
        "two_rounds": two_rounds,
        "control_rule": control_rule,
        "flow_run_id": flow_run_id,
        "before_retry": before_retry,
        "after_retry": after_retry,
        "runs": stores / "runs",
    }


STAGES = ["prepare_data", "train_teacher", "extract_embeddings", "cluster"]
ALL_STAGES = [*STAGES, "train_student", "train_control", "evaluate", "publish"]


def test_first_attempt_fails_at_the_student_stage(scenario):
    assert scenario["failed"].is_failed()
    assert "injected failure" in scenario["failed"].message
    assert {Path(p).parts[-3] for p in scenario["before_retry"]} == set(STAGES)


def test_retry_reruns_only_the_failed_stage_and_after(scenario):
    assert scenario["retried"].is_completed(), scenario["retried"].message
    runs = _task_runs(scenario["flow_run_id"])
    for stage in STAGES:
        assert runs[stage][-1].state.name == "Cached", stage
    for stage in ("train_student", "train_control", "evaluate", "publish"):
        assert runs[stage][-1].state.name == "Completed", stage
    # earlier stage outputs untouched by the retry
    for path, mtime in scenario["before_retry"].items():
        assert scenario["after_retry"][path] == mtime


def test_identical_inputs_reuse_every_stage(scenario):
    assert scenario["again"].is_completed()
    runs = _task_runs(scenario["again"].state_details.flow_run_id)
    assert {stage: runs[stage][-1].state.name for stage in ALL_STAGES} == dict.fromkeys(
        ALL_STAGES, "Cached"
    )
    assert scenario["again"].result()["metrics"] == scenario["retried"].result()["metrics"]


def _states(state) -> dict[str, str]:
    """Final Prefect state name of each task run (by label) of a flow run."""
    runs = _task_runs(state.state_details.flow_run_id)
    return {label: attempts[-1].state.name for label, attempts in runs.items()}


def test_changing_cluster_k_reruns_exactly_cluster_and_the_stages_after_it(scenario):
    assert scenario["k_changed"].is_completed(), scenario["k_changed"].message
    assert _states(scenario["k_changed"]) == {
        "prepare_data": "Cached",
        "train_teacher": "Cached",
        "extract_embeddings": "Cached",
        "cluster": "Completed",
        "train_student": "Completed",
        "train_control": "Completed",  # its steps per epoch come from the pseudo labels
        "evaluate": "Completed",
        "publish": "Completed",
        "register_model": "Completed",  # never cached: it compares against the champion
    }


def test_two_rounds_make_the_first_student_the_second_teacher(scenario):
    state = scenario["two_rounds"]
    assert state.is_completed(), state.message
    # round 1 is the single-round run's work (same keys); round 2 and evaluate are new
    assert _states(state) == {
        "prepare_data": "Cached",
        "train_teacher": "Cached",
        "extract_embeddings-round1": "Cached",
        "cluster-round1": "Cached",
        "train_student-round1": "Cached",
        "train_control-round1": "Cached",
        "extract_embeddings-round2": "Completed",
        "cluster-round2": "Completed",
        "train_student-round2": "Completed",
        "train_control-round2": "Completed",  # round 2's steps, from round 1's control
        "evaluate": "Completed",
        "publish": "Completed",
        "register_model": "Completed",
    }
    metrics = json.loads((Path(state.result()["evaluate_dir"]) / "metrics.json").read_text())
    report = (Path(state.result()["evaluate_dir"]) / "report.md").read_text()
    assert _report_rows(report) == [
        "pretrained_trunk", "teacher", "control", "student_round1", "student"
    ]  # fmt: skip
    assert set(metrics["models"]) == set(_report_rows(report))
    client, exp = _mlflow()
    children = client.search_runs(
        [exp], filter_string=f"tags.`mlflow.parentRunId` = '{state.result()['mlflow_run_id']}'"
    )
    by_label = {c.data.tags["slade.label"]: c for c in children}
    round1 = by_label["train_student-round1"].data.tags["slade.source_run_id"]
    assert by_label["extract_embeddings-round2"].data.params["upstream.teacher"] == round1
    control1 = by_label["train_control-round1"].data.tags["slade.source_run_id"]
    assert by_label["train_control-round2"].data.params["upstream.teacher"] == control1


def _report_rows(report: str) -> list[str]:
    """The models of report.md's metrics table, in its order."""
    table = report.split("| model |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return [line.split("|")[1].strip() for line in table]


def _stage_dir(scenario, stage: str) -> Path:
    (path,) = [Path(p).parent for p in scenario["after_retry"] if Path(p).parts[-3] == stage]
    return path


def test_stage_artifacts_have_their_schemas(scenario):
    index = pd.read_parquet(_stage_dir(scenario, "prepare_data") / "index.parquet")
    assert list(index.columns)[:6] == ["image_id", "path", "label", "class_name", "split", "source"]
    assert {"train", "test", "unlabeled"} <= set(index["split"])
    assert (index.loc[index["split"] == "unlabeled", "label"] == -1).all()
    assert json.loads((_stage_dir(scenario, "prepare_data") / "filter_report.json").read_text())

    ckpt = torch.load(_stage_dir(scenario, "train_teacher") / "teacher.pt", weights_only=True)
    assert ckpt["format"] == "slade-checkpoint-v1" and ckpt["spec"]["embedding_dim"] == 16

    emb = pq.read_table(_stage_dir(scenario, "extract_embeddings") / "embeddings.parquet")
    assert emb.column_names == ["image_id", "split", "label", "embedding"]
    assert emb.schema.metadata[b"slade.dim"] == b"16"
    assert set(emb.column("split").to_pylist()) == {"unlabeled"}

    labels = pq.read_table(_stage_dir(scenario, "cluster") / "pseudo_labels.parquet")
    assert labels.column_names == ["image_id", "cluster", "distance"]
    assert labels.schema.metadata[b"slade.k"] == b"4"

    student = torch.load(_stage_dir(scenario, "train_student") / "student.pt", weights_only=True)
    assert student["format"] == "slade-checkpoint-v1"

    metrics = json.loads((_stage_dir(scenario, "evaluate") / "metrics.json").read_text())
    assert "map_at_r" in metrics["models"]["student"]
    gain = metrics["models"]["student"]["map_at_r"] - metrics["models"]["control"]["map_at_r"]
    assert metrics["student_minus_control"]["map_at_r"] == pytest.approx(gain)
    report = (_stage_dir(scenario, "evaluate") / "report.md").read_text()
    assert _report_rows(report) == ["pretrained_trunk", "teacher", "control", "student"]
    helped = "helped" if gain > 0 else "did not help"
    assert f"Unlabeled images {helped} on this run's test protocol (test-vs-test)" in report

    control = torch.load(_stage_dir(scenario, "train_control") / "control.pt", weights_only=True)
    assert control["meta"]["stage"] == "control"


def test_pseudo_labels_equal_clustering_every_embedding_in_one_process(scenario, tmp_path):
    """The sharded cluster stage (all rows in the sample) gives today's pseudo labels."""
    from slade_core.clustering import make_pseudo_labels
    from slade_core.config import ClusterConfig

    staged = pq.read_table(_stage_dir(scenario, "cluster") / "pseudo_labels.parquet")
    cfg = ClusterConfig.model_validate_json(staged.schema.metadata[b"slade.config"])
    embeddings = _stage_dir(scenario, "extract_embeddings") / "embeddings.parquet"
    today = pq.read_table(make_pseudo_labels(embeddings, tmp_path / "one.parquet", cfg).path)
    assert staged.column("image_id").to_pylist() == today.column("image_id").to_pylist()
    assert staged.column("cluster").to_pylist() == today.column("cluster").to_pylist()


def _mlflow():
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    return client, client.get_experiment_by_name("slade-test").experiment_id


def test_mlflow_parent_run_with_one_finished_child_per_stage(scenario):
    client, exp = _mlflow()
    flow_run_id = str(scenario["flow_run_id"])
    (parent,) = client.search_runs(
        [exp],
        filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}' "
        "and tags.`slade.kind` = 'pipeline'",
    )
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["slade.preset"] == "tiny"
    assert parent.data.tags["mlflow.source.git.commit"]
    assert "student/map_at_r" in parent.data.metrics
    assert parent.data.metrics["student_minus_control/map_at_r"] == pytest.approx(
        parent.data.metrics["student/map_at_r"] - parent.data.metrics["control/map_at_r"]
    )
    children = client.search_runs(
        [exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    finished = {c.data.tags["slade.stage"]: c for c in children if c.info.status == "FINISHED"}
    assert sorted(finished) == sorted(ALL_STAGES)
    assert len(finished) == len([c for c in children if c.info.status == "FINISHED"])
    # the failed student attempt is kept, marked FAILED
    student_runs = [c for c in children if c.data.tags["slade.stage"] == "train_student"]
    assert sorted(c.info.status for c in student_runs) == ["FAILED", "FINISHED"]
    expected = {
        "prepare_data": {"index.parquet", "filter_report.json"},
        "train_teacher": {"teacher.pt", "history.json"},
        "extract_embeddings": {"embeddings.parquet"},
        "cluster": {"pseudo_labels.parquet"},
        "train_student": {"student.pt", "history.json"},
        "train_control": {"control.pt", "history.json"},
        "evaluate": {"metrics.json", "report.md"},
        "publish": {"gallery_student", "gallery_teacher"},
    }
    for stage, names in expected.items():
        run = finished[stage]
        logged = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert names <= logged, (stage, logged)
        assert "code_version" in run.data.params
    teacher = finished["train_teacher"].info.run_id
    assert [m.step for m in client.get_metric_history(teacher, "loss")] == [1, 2]
    assert finished["train_teacher"].data.params["teacher.optim.epochs"] == "2"


def test_reused_stages_appear_as_cached_children_of_the_new_run(scenario):
    client, exp = _mlflow()
    parent_id = scenario["again"].result()["mlflow_run_id"]
    children = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert sorted(c.data.tags["slade.stage"] for c in children) == sorted(ALL_STAGES)
    assert all(c.data.tags["slade.cached"] == "true" for c in children)
    assert all(c.data.tags["slade.source_run_id"] for c in children)
    # a cached training stage keeps the original per-epoch curve, steps included
    (teacher,) = [c for c in children if c.data.tags["slade.stage"] == "train_teacher"]
    source = teacher.data.tags["slade.source_run_id"]
    curve = [(m.step, m.value) for m in client.get_metric_history(teacher.info.run_id, "loss")]
    assert curve == [(m.step, m.value) for m in client.get_metric_history(source, "loss")]
    assert [step for step, _ in curve] == [1, 2]


def test_prefect_artifacts_show_metrics_and_progress(scenario):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        (table,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["slade-metrics"])),
            limit=1,
        )
        everything = client.read_artifacts()
    assert "map_at_r" in str(table.data)
    assert any(a.type == "progress" and a.data == 100.0 for a in everything)
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    student = next(r for r in rows if r["model"] == "student")
    runs = ("retried", "again", "k_changed", "two_rounds", "control_rule")  # the latest
    percents = {f"{100 * scenario[r].result()['metrics']['student/map_at_r']:.2f}" for r in runs}
    assert student["map_at_r"] in percents  # people read percent


def test_slade_core_logs_reach_the_flow_run_logs(scenario):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[scenario["flow_run_id"]]))
        )
    assert any(
        log.name.startswith("slade_core") and "prepared index" in log.message for log in logs
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"teacher.optim.epochs": 0}, "teacher.optim.epochs"),
        ({"student": {"use_basis": False}}, "student"),
        ({"data.labeled.dataset": "no-such-dataset"}, "data.labeled.dataset"),
        ({"publish.champion_beats_control": True, "evaluate.control": False}, "publish"),
    ],
)
def test_bad_parameters_fail_before_any_stage(prefect_server, stores, overrides, field):
    from flows.pipeline import slade

    state = slade(preset="quickstart", overrides=overrides, return_state=True)
    assert state.is_failed()
    assert f"  {field}" in state.message
    assert _task_runs(state.state_details.flow_run_id) == {}


def test_unknown_training_pool_fails_before_any_stage(prefect_server, stores):
    from flows.pipeline import slade

    state = slade(preset="quickstart", training_pool="tpu-pool", return_state=True)
    assert state.is_failed() and "training_pool='tpu-pool'" in state.message
    assert _task_runs(state.state_details.flow_run_id) == {}


def _stage_deployment(pool: str) -> None:
    """Work pool `pool` (no worker) and the deployment slade-stage/<pool>, as `make deploy`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
        client.create_deployment(
            flow_id=client.create_flow_from_name("slade-stage"),
            name=pool,
            work_pool_name=pool,
            entrypoint="flows/pipeline.py:slade_stage",
        )


def test_pool_is_ready_only_with_a_recent_worker_heartbeat_and_not_paused(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from flows.pools import pool_ready

    _stage_deployment("heartbeat-pool")
    with get_client(sync_client=True) as client:
        assert not pool_ready(client, "heartbeat-pool")
        client.send_worker_heartbeat("heartbeat-pool", "w1", heartbeat_interval_seconds=30)
        assert pool_ready(client, "heartbeat-pool")
        client.update_work_pool("heartbeat-pool", WorkPoolUpdate(is_paused=True))
        assert not pool_ready(client, "heartbeat-pool")


def test_training_pool_without_a_worker_fails_in_bounded_time_saying_what_to_start(
    prefect_server, stores, tiny_preset
):
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from flows.pipeline import slade

    _stage_deployment("empty-pool")
    preset, overrides = tiny_preset
    started = time.monotonic()
    state = slade(
        preset=preset,
        overrides=overrides,
        training_pool="empty-pool",
        pool_timeout=3,
        return_state=True,
    )
    assert time.monotonic() - started < 120  # generous: the default would be 60 s
    assert state.is_failed()
    assert "work pool 'empty-pool'" in state.message
    assert "`prefect worker start --pool empty-pool`" in state.message
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        (child,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
    assert child.name == "train_teacher" and child.state.is_cancelled()  # not left Scheduled
    client, exp = _mlflow()
    runs = client.search_runs([exp], filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'")
    (parent,) = [r for r in runs if r.data.tags.get("slade.kind") == "pipeline"]
    assert parent.info.status == "FAILED"
    assert "RUNNING" not in {r.info.status for r in runs}


def _registry():
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    versions = client.search_model_versions("name = 'slade-embedder'")
    return client, {int(v.version): v for v in versions}


def test_student_is_registered_champion_then_an_identical_rerun_is_challenger(scenario):
    client, versions = _registry()
    first, second = scenario["retried"].result(), scenario["again"].result()
    assert first["registered"] == {"name": "slade-embedder", "version": "1", "alias": "champion"}
    assert second["registered"]["alias"] == "challenger"
    # versions 1 and 2 are these two runs; the scenario's k and rounds runs register 3 and 4
    assert sorted(versions) == [1, 2, 3, 4]
    champion = client.get_model_version_by_alias("slade-embedder", "champion")
    scores = {v: float(mv.tags["slade.test_map_at_r"]) for v, mv in versions.items()}
    assert int(champion.version) != 2  # a tie never moves the champion
    assert scores[int(champion.version)] == max(scores.values())
    tags = versions[1].tags
    assert tags["slade.pipeline_run"] == first["mlflow_run_id"]
    assert tags["slade.preset"] == "tiny" and tags["slade.code_version"]
    assert float(tags["slade.test_map_at_r"]) == first["metrics"]["student/map_at_r"]
    # equal scores do not move the champion
    assert versions[2].tags["slade.champion_map_at_r"] == tags["slade.test_map_at_r"]


def test_a_student_no_better_than_its_control_never_takes_the_champion(scenario):
    from mlflow.tracking import MlflowClient

    state = scenario["control_rule"]
    assert state.is_completed(), state.message
    result = state.result()
    # student and control both stayed the teacher: the unlabeled images did not help
    assert result["metrics"]["student_minus_control/map_at_r"] == 0.0
    # no champion of this name yet, so the control rule alone kept the alias from it
    assert result["registered"] == {"name": "control-rule", "version": "1", "alias": "challenger"}
    version = MlflowClient().get_model_version("control-rule", "1")
    assert float(version.tags["slade.student_minus_control_map_at_r"]) == 0.0


def test_logged_model_embeds_raw_images_like_the_pipeline(scenario):
    import mlflow.artifacts
    import mlflow.models
    import mlflow.pytorch
    import numpy as np

    from slade_core.embeddings import read_embeddings
    from slade_core.search import embed_images, image_array

    client, versions = _registry()
    run = client.get_run(versions[1].run_id)
    assert run.data.tags["slade.stage"] == "publish"
    model = client.get_logged_model(scenario["retried"].result()["model"].split("/")[-1])
    assert model.source_run_id == versions[1].run_id and model.name == "student"
    assert {m.key.split("/")[0] for m in model.metrics} == {"student"}
    test_map = {m.key: m for m in model.metrics}["student/test_map_at_r"]
    assert test_map.value == float(versions[1].tags["slade.test_map_at_r"])
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    assert (test_map.dataset_name, test_map.dataset_digest) == (dataset.name, dataset.digest)
    # version 1 is the retried run's student (later scenario runs may have taken the champion)
    local = mlflow.artifacts.download_artifacts("models:/slade-embedder/1")
    logged = mlflow.models.Model.load(local)
    assert logged.signature.inputs.inputs[0].shape == (-1, -1, -1, 3)
    assert logged.signature.outputs.inputs[0].shape == (-1, 16)
    example = logged.load_input_example(local)
    assert example.shape == (1, 32, 32, 3) and example.dtype == np.uint8  # the run's image size
    requirements = (Path(local) / "requirements.txt").read_text()
    assert "torch==" in requirements and "faiss-cpu" in requirements
    assert (Path(local) / "code" / "slade_core" / "search.py").is_file()
    embedder = mlflow.pytorch.load_model("models:/slade-embedder/1")
    index = pd.read_parquet(_stage_dir(scenario, "prepare_data") / "index.parquet")
    test = index[index["split"] == "test"].head(4)
    got = embed_images(embedder, test["path"].tolist())
    assert got.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    evaluate_dir = Path(scenario["retried"].result()["evaluate_dir"])
    evaluated = read_embeddings(evaluate_dir / "embeddings_student.parquet")
    position = {image_id: i for i, image_id in enumerate(evaluated.image_ids)}
    expected = evaluated.embeddings[[position[i] for i in test["image_id"]]]
    # tensor resize (the model) vs PIL resize (the stages): the same vectors up to resampling
    assert (np.sum(got * expected, axis=1) > 0.98).all()
    # the pyfunc flavour takes the signature's uint8 batch
    pyfunc = mlflow.pyfunc.load_model("models:/slade-embedder/1")
    out = pyfunc.predict(image_array(test["path"].iloc[0]))
    assert np.asarray(out).shape == (1, 16)


def test_pipeline_run_shows_its_dataset_and_models(scenario):
    client, _ = _mlflow()
    result = scenario["retried"].result()
    parent = client.get_run(result["mlflow_run_id"])
    lineage = json.loads((_stage_dir(scenario, "prepare_data") / "lineage.json").read_text())
    (dataset,) = [d.dataset for d in parent.inputs.dataset_inputs]
    assert (dataset.name, dataset.digest) == ("tiny-index", lineage["digest"])
    assert {m.model_id for m in parent.outputs.model_outputs} >= {result["model"].split("/")[-1]}


def _new_image_of(row: pd.Series, out_dir: Path) -> Path:
    """A newly generated image of `row`'s class: its synthetic set rendered again with one
    more image per class. Species depend only on the seed and the class counts, and each
    image on (seed, class, image number), so images 0..n-1 come out as before and image n
    is one the pipeline never saw (test classes get no unlabeled images)."""
    root = Path(row["path"]).parents[2]  # <set>/images/<class name>/<n>.jpg
    params = json.loads((root / "generator.json").read_text())["params"]
    kwargs = {k: v for k, v in params.items() if k not in ("generator", "version")}
    n = kwargs["images_per_class"]
    generate_synthetic_birds(out_dir, **{**kwargs, "images_per_class": n + 1})
    rel = Path(row["path"]).relative_to(root)
    assert (out_dir / rel).read_bytes() == (root / rel).read_bytes()  # the same species
    return out_dir / "images" / row["class_name"] / f"{n}.jpg"


def test_slade_search_finds_the_class_of_a_held_out_image(scenario, tmp_path, capsys):
    from PIL import Image

    from tasks.cli import main

    index = pd.read_parquet(_stage_dir(scenario, "prepare_data") / "index.parquet")
    query = index[index["split"] == "test"].iloc[0]  # the gallery is the test split
    path = _new_image_of(query, tmp_path / "regenerated")
    assert path.read_bytes() not in {Path(p).read_bytes() for p in index["path"]}
    grid = tmp_path / "grid.png"
    assert main(["search", str(path), "--k", "3", "--grid", str(grid)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    assert [float(r[1]) for r in rows] == sorted(float(r[1]) for r in rows)
    assert int(query["label"]) in {int(r[2]) for r in rows}
    assert Image.open(grid).size[0] > 4 * 112


def test_slade_search_takes_any_runs_model(scenario, capsys):
    from tasks.cli import main

    _, versions = _registry()
    image = pd.read_parquet(_stage_dir(scenario, "prepare_data") / "index.parquet").path[0]
    uri = f"runs:/{versions[1].run_id}/teacher"  # the publish run's teacher model
    assert main(["search", image, "--k", "1", "--model", uri]) == 0
    assert f"(model {uri})" in capsys.readouterr().out


def test_slade_search_names_a_missing_model(scenario, tmp_path):
    from tasks.cli import main

    image = pd.read_parquet(_stage_dir(scenario, "prepare_data") / "index.parquet").path[0]
    with pytest.raises(SystemExit, match="cannot load 'models:/nope@champion'"):
        main(["search", image, "--model", "models:/nope@champion"])
