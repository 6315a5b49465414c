"""Stage cache keys cover exactly the config a stage reads.

For every stage task of the flow: the config sections its body touches (recorded while
the body runs against stubs) must be in its key, every field of those sections must
change the key, and fields of other sections must not (so e.g. `cluster.k` never re-runs
the teacher). A stage with a config view (train_control) is keyed on what its view keeps.
"""

from __future__ import annotations

import types
from pathlib import Path
from unittest import mock

import pytest
from pydantic import BaseModel

from flows.pipeline import STAGES
from slade_core.experiment import load_experiment
from tasks.stage import stage_key

UPSTREAM = {
    name: {"stage": name, "key": f"key-{name}", "run_id": f"run-{name}", "checkpoint": "m.pt"}
    for name in ("data", "teacher", "embeddings", "pseudo_labels", "student", "evaluate")
}


@pytest.fixture(scope="module")
def config(tiny_preset):
    preset, overrides = tiny_preset
    return load_experiment(preset, overrides)


class Recording:
    """A config that remembers which top-level sections were read."""

    def __init__(self, config):
        self._config, self.read = config, set()

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._config, name)


def sections_read(stage: str, config, tmp_path: Path, monkeypatch) -> set[str]:
    """Run the stage body with everything it calls outside its own module stubbed (the
    library, MLflow, other tasks modules' I/O); its own helpers run and record their reads."""
    task = STAGES[stage]
    module = __import__(task.fn.stage_body.__module__, fromlist=["_"])
    for name, value in vars(module).items():
        foreign = getattr(value, "__module__", module.__name__) != module.__name__
        if isinstance(value, types.ModuleType) or (callable(value) and foreign):
            stub = mock.MagicMock(name=name)
            # results unpack as pairs (`net, meta = load_model(...)`)
            stub.return_value.__iter__.side_effect = lambda: iter([mock.MagicMock()] * 2)
            monkeypatch.setattr(module, name, stub)
    ctx = mock.MagicMock(work_dir=tmp_path, outputs={})

    def stage_file(result, name):  # an upstream file: present, contents stubbed by json
        path = tmp_path / name
        path.touch()
        return path

    ctx.input.side_effect = stage_file
    recording = Recording(config)
    task.fn.stage_body(ctx, recording, UPSTREAM)
    return recording.read


def _leaves(model: BaseModel, prefix: tuple[str, ...] = ()):
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, (*prefix, name))
        else:
            yield (*prefix, name)


def _other(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "-changed"
    if isinstance(value, dict):
        return {**value, "changed": 1}
    if isinstance(value, Path):
        return value / "changed"
    if isinstance(value, list | tuple):
        return type(value)([*value, value[0]]) if value else (1,)
    if value is None:
        return 1
    raise TypeError(f"no perturbation for {value!r}")


def perturbed(model: BaseModel, path: tuple[str, ...]) -> BaseModel:
    """`model` with the field at `path` changed (no validation: any change must count)."""
    head, *rest = path
    value = getattr(model, head)
    new = perturbed(value, tuple(rest)) if rest else _other(value)
    return model.model_copy(update={head: new})


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_section_a_stage_reads_is_in_its_key(stage, config, tmp_path, monkeypatch):
    read = sections_read(stage, config, tmp_path, monkeypatch)
    assert read, f"{stage}: the recording saw no config access"
    declared = set(STAGES[stage].fn.stage_fields)
    assert read <= declared, f"{stage} reads {sorted(read - declared)} outside its key"
    # an over-declared section would re-run the stage for changes it never reads
    assert declared <= read, f"{stage} keys on {sorted(declared - read)} but never reads it"


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")  # perturbed union values
@pytest.mark.parametrize("stage", list(STAGES))
def test_each_field_changes_the_key_of_exactly_the_stages_that_read_it(stage, config):
    fields = set(STAGES[stage].fn.stage_fields)
    view = STAGES[stage].fn.stage_view or (lambda c: c)
    base = stage_key(stage, view(config), fields, UPSTREAM)
    for path in _leaves(config):
        changed = perturbed(config, path)
        key = stage_key(stage, view(changed), fields, UPSTREAM)
        if path[0] in fields and view(changed) != view(config):
            assert key != base, f"{stage}: {'.'.join(path)} does not change its key"
        else:
            assert key == base, f"{stage}: {'.'.join(path)} changes its key"
    for name in UPSTREAM:  # and so does every upstream result's key
        upstream = {**UPSTREAM, name: {**UPSTREAM[name], "key": "other"}}
        assert stage_key(stage, view(config), fields, upstream) != base
