"""load_experiment: presets + overrides -> validated PipelineConfig, errors name the field."""

from __future__ import annotations

import pytest
import yaml

from slade_core.config import PipelineConfig
from slade_core.experiment import (
    PRESETS_DIR,
    ExperimentError,
    available_presets,
    expand_dotted,
    load_experiment,
)


@pytest.fixture
def preset_file(tmp_path):
    quickstart = yaml.safe_load((PRESETS_DIR / "quickstart.yaml").read_text())
    path = tmp_path / "mine.yaml"
    preset = {"description": "test", "data": quickstart["data"], "teacher": {"batch_size": 16}}
    path.write_text(yaml.safe_dump(preset))
    return path


REPO = PRESETS_DIR.parents[1]
SHIPPED = sorted(PRESETS_DIR.glob("*.yaml")) + sorted((REPO / "benchmarks/presets").glob("*.yaml"))


def _settings(tree, prefix=""):
    """(dotted key, value) of every leaf of a preset's mapping."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _settings(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_presets_are_shipped_for_the_pipeline_and_the_benchmarks():
    assert {p.parent.name for p in SHIPPED} == {"presets"}
    assert {p.parent.parent.name for p in SHIPPED} == {"data_manifests", "benchmarks"}
    assert [p.stem for p in SHIPPED if p.parent == PRESETS_DIR] == available_presets()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_every_shipped_preset_loads_and_holds_what_it_sets(path):
    config = load_experiment(path)
    assert isinstance(config, PipelineConfig) and config.preset == path.stem
    raw = yaml.safe_load(path.read_text())
    raw.pop("description", None)
    dumped = config.model_dump(mode="json")
    for key, value in _settings({k: v for k, v in raw.items() if k != "data"}):
        held = dumped
        for part in key.split("."):
            held = held[part]
        assert held == (list(value) if isinstance(value, tuple) else value), key


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"cluster.method": "mutual_neighbors"}, "cluster: .*method='mutual_neighbors' is not one of"),
     ({"cluster.anchors": "labeled_classes"}, "cluster: .*anchors was removed"),
     ({"student.basis.ce_labels": "joint"}, "student.basis: .*ce_labels was removed"),
     ({"student.mining.thresholds": "boundary"}, "student.mining: .*'crossed'"),
     ({"student.unlabeled_loss": {"name": "contrastive"}}, "both halves use student.loss"),
     ({"model.head": "mlp"}, "model: .*head was removed")],
)  # fmt: skip
def test_an_override_naming_a_removed_option_says_what_replaced_it(overrides, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment("quickstart", overrides)


def test_quickstart_is_shipped():
    assert "quickstart" in available_presets()


def test_preset_path_and_overrides_nested_and_dotted(preset_file):
    config = load_experiment(
        preset_file,
        {"teacher.optim.epochs": 3, "student": {"optim": {"lr": 0.5}}, "cluster.k": 7},
    )
    assert config.preset == "mine"
    assert config.teacher.batch_size == 16  # from the preset
    assert config.teacher.optim.epochs == 3
    assert config.teacher.optim.lr == 1e-3  # untouched sibling keeps its default
    assert config.student.optim.lr == 0.5
    assert config.cluster.k == 7


def test_expand_dotted_merges_with_nested_values():
    assert expand_dotted({"a.b": 1, "a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"teacher.optim.epochs": 0}, "teacher.optim.epochs"),
        ({"teacher.optim.epochz": 3}, "teacher.optim.epochz"),
        ({"cluster": {"k": "many"}}, "cluster.k"),
        ({"rounds": 0}, "rounds"),
    ],
)
def test_bad_override_names_the_field(preset_file, overrides, field):
    with pytest.raises(ExperimentError) as info:
        load_experiment(preset_file, overrides)
    assert f"  {field}:" in str(info.value)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ExperimentError, match="quickstart"):
        load_experiment("no-such-preset")


def test_preset_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ExperimentError, match="mapping"):
        load_experiment(path)
