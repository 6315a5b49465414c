"""The control (slade_core.training.control): the student's steps, labeled batches and
schedule on labeled data only; one implementation for the pipeline stage and birds.py."""

from __future__ import annotations

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
