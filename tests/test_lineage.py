"""Dataset lineage: a changed image folder re-runs prepare_data (and everything after it),
an untouched one stays Cached; the trunk-feature cache notices rewritten images; a champion
measured on other images is re-scored before it is compared."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY_DATA, tiny_overrides
from PIL import Image
from test_flow import ALL_STAGES, _task_runs

from slade_core.data.lineage import source_digest
from slade_core.data.preset import parse_data_preset
from slade_core.io import file_stats_digest


def _folder_of_images(root: Path, n: int = 4) -> Path:
    """<root>/shop/img<i>.png: n small distinct images (one "class" folder)."""
    for i in range(n):
        _image(root / "shop" / f"img{i}.png", i)
    return root


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (40 * seed % 256, 90, 200 - 30 * seed % 200)).save(path)


def _folder_data(folder: Path) -> dict:
    return {
        **TINY_DATA,
        "unlabeled": [{"dataset": {"name": "shop", "type": "folder", "path": str(folder)}}],
    }


def test_source_digest_follows_the_files_of_a_folder_dataset(tmp_path):
    preset = parse_data_preset(_folder_data(_folder_of_images(tmp_path / "photos")))
    data = [preset.labeled, *preset.unlabeled]
    first = source_digest(data, tmp_path / "downloads")
    assert source_digest(data, tmp_path / "downloads") == first
    _image(tmp_path / "photos" / "shop" / "new.png", 9)
    added = source_digest(data, tmp_path / "downloads")
    assert added != first
    target = tmp_path / "photos" / "shop" / "img0.png"
    stat = target.stat()
    _image(target, 7)  # same path, new content and size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert source_digest(data, tmp_path / "downloads") not in (first, added)
    shutil.rmtree(tmp_path / "photos")  # a vanished folder still digests (the stage reports it)
    assert source_digest(data, tmp_path / "downloads") not in (first, added)


def test_source_digest_follows_a_csv_dataset_and_its_listed_images(tmp_path):
    for i in range(3):
        _image(tmp_path / "imgs" / f"{i}.png", i)
    csv = tmp_path / "index.csv"
    csv.write_text("path,label\nimgs/0.png,0\nimgs/1.png,1\n")
    ref = parse_data_preset(
        {"labeled": {"dataset": {"name": "mine", "type": "csv", "path": str(csv)}}}
    ).labeled
    first = source_digest([ref], tmp_path)
    csv.write_text("path,label\nimgs/0.png,0\nimgs/1.png,0\n")  # relabelled
    relabelled = source_digest([ref], tmp_path)
    assert relabelled != first
    _image(tmp_path / "imgs" / "2.png", 5)  # not listed: no change
    assert source_digest([ref], tmp_path) == relabelled
    target = tmp_path / "imgs" / "1.png"
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    assert source_digest([ref], tmp_path) not in (first, relabelled)


def test_file_stats_digest_sees_a_rewrite_under_the_same_path(tmp_path):
    path = tmp_path / "a.png"
    _image(path, 1)
    before = file_stats_digest([path])
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert file_stats_digest([path]) != before


def test_trunk_features_are_recomputed_when_an_image_changes(tmp_path):
    import numpy as np

    from slade_core.config import ModelConfig, RuntimeConfig
    from slade_core.features import prefix_feature_file
    from slade_core.models import create_model

    model = create_model(ModelConfig(weights="none", image_size=32, embedding_dim=8))
    runtime = RuntimeConfig(device="cpu", feature_cache_dir=tmp_path / "cache")
    for i in range(2):
        _image(tmp_path / f"{i}.png", i)
    frame = pd.DataFrame({"image_id": ["a", "b"], "path": [str(tmp_path / "0.png"), "x"]})
    frame.loc[1, "path"] = str(tmp_path / "1.png")
    first = prefix_feature_file(model, frame, None, runtime)
    assert prefix_feature_file(model, frame, None, runtime) == first
    _image(tmp_path / "1.png", 5)
    os.utime(tmp_path / "1.png", ns=(0, (tmp_path / "0.png").stat().st_mtime_ns + 10**9))
    second = prefix_feature_file(model, frame, None, runtime)
    assert second != first
    assert not np.array_equal(np.load(first)[1], np.load(second)[1])


@pytest.fixture(scope="module")
def folder_runs(prefect_server, tmp_path_factory):
    """Three flow runs on a preset with a folder of unlabeled images: first, untouched,
    then after adding one image."""
    from flows.pipeline import slade

    root = tmp_path_factory.mktemp("lineage")
    folder = _folder_of_images(root / "photos")
    preset = root / "folder.yaml"
    preset.write_text(yaml.safe_dump({"description": "test", "data": _folder_data(folder)}))
    overrides = tiny_overrides(root / "feature-cache")
    # slade search retrieves from the folder too (publish.gallery)
    overrides["publish.gallery"] = _folder_data(folder)["unlabeled"][0]
    states = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLADE_RUNS_DIR", str(root / "runs"))
        mp.setenv("SLADE_DOWNLOADS_DIR", str(root / "downloads"))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)  # the default experiment `slade`
        for step in ("first", "untouched", "added"):
            if step == "added":
                _image(folder / "shop" / "added.png", 11)
            states.append(slade(preset=str(preset), overrides=overrides, return_state=True))
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        versions = {  # get_model_version: search_model_versions omits the aliases
            int(v.version): client.get_model_version(v.name, v.version)
            for v in client.search_model_versions("name = 'slade-embedder'")
        }
        runs = [client.get_run(s.result()["mlflow_run_id"]) for s in states]
        counts = [_stage_metrics(client, r, "prepare_data") for r in runs]
        galleries = [_stage_metrics(client, r, "publish") for r in runs]
        models = client.search_logged_models([runs[0].info.experiment_id])
    return states, versions, runs, counts, models, galleries


def _stage_metrics(client, parent, stage: str) -> dict[str, float]:
    (child,) = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
        f"and tags.`slade.stage` = '{stage}'",
    )
    return child.data.metrics


def _stage_states(state) -> dict[str, str]:
    runs = _task_runs(state.state_details.flow_run_id)
    return {stage: runs[stage][-1].state.name for stage in ALL_STAGES}


@pytest.mark.slow  # starts Prefect and runs the flow
def test_untouched_folder_reuses_every_stage(folder_runs):
    states, *_ = folder_runs
    assert all(s.is_completed() for s in states), [s.message for s in states]
    assert _stage_states(states[1]) == dict.fromkeys(ALL_STAGES, "Cached")


@pytest.mark.slow  # starts Prefect and runs the flow
def test_an_added_image_reruns_prepare_data_and_changes_the_counts(folder_runs):
    states, _, runs, counts, *_ = folder_runs
    assert _stage_states(states[2])["prepare_data"] == "Completed"
    assert _stage_states(states[2])["train_teacher"] == "Completed"
    digests = [r.inputs.dataset_inputs[0].dataset.digest for r in runs]
    assert digests[0] == digests[1] != digests[2]
    assert counts[2]["images_unlabeled"] == counts[0]["images_unlabeled"] + 1


@pytest.mark.slow  # starts Prefect and runs the flow
def test_a_champion_measured_on_other_images_is_rescored(folder_runs):
    _, versions, *_ = folder_runs
    assert sorted(versions) == [1, 2, 3]
    assert versions[2].tags["slade.champion_map_at_r"] == versions[1].tags["slade.test_map_at_r"]
    third = versions[3].tags
    assert third["slade.data_digest"] != versions[1].tags["slade.data_digest"]
    new, old = float(third["slade.compared_map_at_r"]), float(third["slade.champion_map_at_r"])
    assert ("champion" in versions[3].aliases) == (new > old)


@pytest.mark.slow  # starts Prefect and runs the flow
def test_logged_models_live_in_the_pipeline_experiment(folder_runs):
    _, versions, runs, _, models, _ = folder_runs
    # two publish runs (the untouched run reused the first): teacher + student each
    assert sorted(m.name for m in models) == ["student", "student", "teacher", "teacher"]
    assert {v.source.removeprefix("models:/") for v in versions.values()} <= {
        m.model_id for m in models
    }


@pytest.mark.slow  # starts Prefect and runs the flow
def test_a_folder_gallery_follows_its_images(folder_runs):
    *_, galleries = folder_runs
    sizes = [g["student/gallery_size"] for g in galleries]
    assert sizes == [4, 4, 5]  # the shop folder: 4 images, then one added
