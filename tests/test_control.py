"""The control (slade_core.training.control): the student's steps, labeled batches and
schedule on labeled data only; one implementation for the pipeline stage and birds.py."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from test_training import _assert_same, _model, _runtime, _state, dataset  # noqa: F401

from slade_core.config import OptimConfig, StudentConfig
from slade_core.training import control, student, train_control, train_student


def _student(**update) -> StudentConfig:
    base = StudentConfig(
        labeled_batch_size=8,
        unlabeled_batch_size=4,
        m_per_class=2,
        use_basis=False,
        use_mining=False,
        optim=OptimConfig(epochs=2, lr=1e-2, schedule="cosine"),
    )
    return base.model_copy(update=update)


@pytest.fixture(scope="module")
def teacher(dataset):  # noqa: F811
    from slade_core.checkpoints import save_checkpoint
    from slade_core.models import create_model

    torch.manual_seed(0)
    return save_checkpoint(create_model(_model()), dataset["cache"].parent / "t.pt", {})


def test_control_takes_the_students_steps_and_labeled_batches(
    dataset,  # noqa: F811
    teacher,
    tmp_path,
    monkeypatch,
):
    drawn, labeled_sampler = {}, student.labeled_sampler

    def recording(name):
        def sampler(labels, cfg, seed, iterations):
            made = labeled_sampler(labels, cfg, seed, iterations)
            drawn[name] = []
            for epoch in (1, 2):
                made.set_epoch(epoch)
                drawn[name] += list(made)
            return made

        return sampler

    monkeypatch.setattr(student, "labeled_sampler", recording("student"))
    args = (dataset["index"], dataset["pseudo"], teacher, _model())
    cfg = _student()  # no iterations_per_epoch: 20 pseudo-labeled rows / 4 = 5 steps
    done = train_student(*args, cfg, _runtime(dataset), tmp_path / "student")
    monkeypatch.setattr(control, "labeled_sampler", recording("control"))
    steps = []
    result = train_control(
        *args, cfg, _runtime(dataset), tmp_path / "control",
        on_epoch=lambda e, n, m: steps.append(m["lr"]),
    )  # fmt: skip
    assert len(drawn["control"]) == 2 * 5 and drawn["control"] == drawn["student"]
    assert [h["lr"] for h in result.history] == [h["lr"] for h in done.history] == steps
    assert set(result.history[0]) == {"epoch", "loss", "duplicate_fraction", "lr"}
    _, meta = _state(result.checkpoint_path)
    assert meta["stage"] == "control" and meta["pseudo_labeled_rows"] == 20


def test_control_never_reads_the_pseudo_labeled_images(dataset, teacher, tmp_path):  # noqa: F811
    """Unlabeled files gone: the student fails, the control trains the same weights."""
    index = pd.read_parquet(dataset["index"])
    unlabeled = index["split"] == "unlabeled"
    index.loc[unlabeled, "path"] = index.loc[unlabeled, "path"] + ".missing"
    moved = tmp_path / "index.parquet"
    index.to_parquet(moved, index=False)
    runtime = _runtime(dataset).model_copy(update={"feature_cache_dir": tmp_path / "cache"})
    cfg = _student(optim=OptimConfig(epochs=1, iterations_per_epoch=3))
    with pytest.raises(Exception, match="missing"):
        train_student(moved, dataset["pseudo"], teacher, _model(), cfg, runtime, tmp_path / "s")
    here = train_control(moved, dataset["pseudo"], teacher, _model(), cfg, runtime, tmp_path / "a")
    there = train_control(
        dataset["index"], dataset["pseudo"], teacher, _model(), cfg, _runtime(dataset),
        tmp_path / "b",
    )  # fmt: skip
    _assert_same(_state(here.checkpoint_path)[0], _state(there.checkpoint_path)[0])


def test_control_config_keeps_only_what_the_control_reads():
    base = control.control_config(_student())
    same = control.control_config(
        _student(lambda1=0.3, lambda2=2.0, use_basis=True, use_mining=True)
    )
    assert same == base and not base.use_basis and base.lambda1 == 0.0
    longer = control.control_config(_student(optim=OptimConfig(epochs=3)))
    assert longer != base and longer.optim.epochs == 3


@pytest.fixture()
def config(tiny_preset, dataset):  # noqa: F811
    from slade_core.experiment import load_experiment

    preset, overrides = tiny_preset
    return load_experiment(
        preset,
        {
            **overrides,
            "model": _model().model_dump(),
            "runtime": _runtime(dataset).model_dump(),
            "student.optim": {"epochs": 2, "iterations_per_epoch": None},
        },
    )


def test_the_control_stage_trains_the_weights_of_the_birds_control_row(
    config,
    dataset,  # noqa: F811
    tmp_path,
):
    """One implementation: the pipeline's train_control stage and birds.py's control row,
    on the same teacher, pseudo labels, seed and config, save the same weights."""
    from benchmark_scripts import load_benchmark

    from flows.pipeline import STAGES
    from tasks.stage import StageContext

    birds = load_benchmark("birds")
    index = pd.read_parquet(dataset["index"])  # birds.py reads the unlabeled species names
    unlabeled = index["split"] == "unlabeled"
    index.loc[unlabeled, "class_name"] = (
        "u" + index.loc[unlabeled, "image_id"].str.split("-").str[1]
    )
    index_path = tmp_path / "index.parquet"
    index.to_parquet(index_path, index=False)
    birds.run_seed(0, config, index_path, tmp_path / "birds", {"controls"})
    seed = tmp_path / "birds" / "seed0"
    stage = STAGES["train_control"].fn
    ctx = StageContext("train_control", "train_control", "key", tmp_path / "stage", "run", None)
    ctx.input = lambda result, name: Path(result["dir"]) / name  # the birds run's files
    ctx.epoch_logger = lambda description: None  # no Prefect or MLflow here
    ctx.work_dir.mkdir()
    upstream = {
        "data": {"dir": str(tmp_path)},
        "teacher": {"dir": str(seed / "teacher"), "checkpoint": "teacher.pt"},
        "pseudo_labels": {"dir": str(seed / "teacher")},
    }
    stage.stage_body(ctx, stage.stage_view(config), upstream)
    product, meta = _state(ctx.work_dir / ctx.outputs["checkpoint"])
    benchmark, _ = _state(seed / "control" / "control.pt")
    _assert_same(product, benchmark)
    assert meta["stage"] == "control" and meta["pseudo_labeled_rows"] == 20


def test_the_control_stage_is_keyed_on_what_the_control_reads(config):
    from test_stage_keys import UPSTREAM

    from flows.pipeline import STAGES
    from tasks.stage import stage_key

    stage = STAGES["train_control"].fn

    def key(**student) -> str:
        changed = config.model_copy(update={"student": config.student.model_copy(update=student)})
        return stage_key("train_control", stage.stage_view(changed), stage.stage_fields, UPSTREAM)

    base = key()
    assert key(lambda1=0.5) == key(lambda2=3.0) == key(use_mining=False) == base
    assert key(basis=config.student.basis.model_copy(update={"size": 4})) == base
    assert key(labeled_batch_size=16) != base
    assert key(optim=config.student.optim.model_copy(update={"epochs": 3})) != base


def test_the_report_says_whether_the_unlabeled_images_helped():
    from slade_core.evaluate import render_report, student_minus_control, unlabeled_verdict

    models = {
        "teacher": {"map_at_r": 0.30, "precision_at_1": 0.6},
        "control": {"map_at_r": 0.31, "precision_at_1": None},
        "student": {"map_at_r": 0.3142, "precision_at_1": 0.7},
    }
    gain = student_minus_control(models)
    assert gain == {"map_at_r": pytest.approx(0.0042)}  # undefined on one side: left out
    assert student_minus_control({"teacher": {}, "student": {}}) == {}
    metrics = {"protocol": "test-vs-test", "n_queries": 3, "n_references": 3, "models": models}
    report = render_report({**metrics, "student_minus_control": gain}, [], None)
    assert (
        "Unlabeled images helped on this run's test protocol (test-vs-test): "
        "student - control = +0.42 MAP@R (one run)." in report
    )
    assert "Unlabeled images" not in render_report(metrics, [], None)
    assert unlabeled_verdict(-0.001).startswith("Unlabeled images did not help")
    assert unlabeled_verdict(0.0).startswith("Unlabeled images did not help")
    assert "no verdict" in unlabeled_verdict(None)
    assert "on this run's validation classes" in unlabeled_verdict(0.01, "validation")


@pytest.mark.slow
def test_control_under_torchrun_trains_like_one_process(dataset, teacher, tmp_path):  # noqa: F811
    """launch_control: two ranks read the student section and train the same weights."""
    from slade_core.training import launch_control

    cfg = _student(optim=OptimConfig(epochs=1, lr=1e-2, iterations_per_epoch=3))
    args = (dataset["index"], dataset["pseudo"], teacher, _model(), cfg)
    one = train_control(*args, _runtime(dataset), tmp_path / "one")
    two = launch_control(
        *args, _runtime(dataset).model_copy(update={"processes": 2}), tmp_path / "two"
    )
    assert two.checkpoint_path == tmp_path / "two" / "control.pt"
    assert [h["epoch"] for h in two.history] == [1]
    for name, weights in _state(one.checkpoint_path)[0].items():
        torch.testing.assert_close(_state(two.checkpoint_path)[0][name], weights)
