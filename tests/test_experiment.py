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


@pytest.mark.parametrize("name", available_presets())
def test_every_shipped_preset_loads(name):
    config = load_experiment(name)
    assert isinstance(config, PipelineConfig)
    assert config.preset == name


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
