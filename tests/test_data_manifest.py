"""Manifests and data presets: validation errors name the bad field; shipped files load."""

from __future__ import annotations

import pytest

from slade_core.data.errors import ManifestError
from slade_core.data.manifest import DATASETS_DIR, load_manifest, parse_manifest, resolve_path
from slade_core.data.preset import PRESETS_DIR, load_data_preset, parse_data_preset


def test_typo_in_field_is_named_with_a_suggestion():
    with pytest.raises(ManifestError) as err:
        parse_manifest({"name": "mine", "type": "csv", "pth": "x.csv"})
    assert "pth: unknown field; did you mean 'path'?" in str(err.value)


def _folder(**fields):
    """A folder manifest with `fields` added."""
    return {"name": "m", "type": "folder", "path": ".", **fields}


def test_typo_in_nested_split_and_type():
    with pytest.raises(ManifestError, match=r"split\.tset: unknown field; did you mean 'test'"):
        parse_manifest(_folder(split={"rule": "classes", "train": [0, 4], "tset": [5, 9]}))
    with pytest.raises(ManifestError, match=r"type: .*'cvs'"):
        parse_manifest({"name": "m", "type": "cvs", "path": "x"})


def test_split_ranges_must_not_overlap_and_sources_need_a_way_in():
    with pytest.raises(ManifestError, match="overlap"):
        parse_manifest(_folder(split={"rule": "classes", "train": [0, 5], "test": [5, 9]}))
    with pytest.raises(ManifestError, match=r"train \(0, 5\) and unlabeled \(4, 4\) overlap"):
        parse_manifest(
            _folder(split={"rule": "classes", "train": [0, 5], "test": [6, 9], "unlabeled": [4, 4]})
        )
    with pytest.raises(ManifestError, match="needs a url or gated"):
        parse_manifest({"name": "m", "type": "cub200", "sources": [{"filename": "a.tgz"}]})
    with pytest.raises(ManifestError, match="relative path"):
        parse_manifest(
            {
                "name": "m",
                "type": "cub200",
                "sources": [{"filename": "a.tgz", "url": "http://x", "into": "../up"}],
            }
        )


def test_preset_typo_is_named():
    with pytest.raises(ManifestError, match=r"filter\.treshold: unknown field; did you mean"):
        parse_data_preset({"labeled": "cub100", "filter": {"treshold": 0.5}})
    with pytest.raises(ManifestError, match=r"unlabeled\[0\]\.split"):
        parse_data_preset(
            {
                "labeled": "cub100",
                "unlabeled": [{"dataset": "birds525", "split": {"rule": "source"}}],
            }
        )


@pytest.mark.parametrize("path", sorted(DATASETS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_dataset_manifests_load(path):
    assert load_manifest(path.stem).name == path.stem


@pytest.mark.parametrize("path", sorted(PRESETS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_presets_load_with_their_datasets(path):
    preset = load_data_preset(path.stem)
    preset.labeled.manifest()
    for ref in preset.unlabeled:
        ref.manifest()


def test_paired_presets_exist():
    pairs = {
        name: (p.labeled.dataset, [r.dataset for r in p.unlabeled])
        for name in ("cub_nabirds", "cars_compcars", "inshop_fashion200k", "birds_offline")
        for p in [load_data_preset(name)]
    }
    assert pairs["cub_nabirds"] == ("cub200", ["nabirds"])
    assert pairs["cars_compcars"] == ("cars196", ["compcars"])
    assert pairs["inshop_fashion200k"] == ("inshop", ["fashion200k"])
    assert pairs["birds_offline"] == ("cub100", ["birds525"])
    assert load_manifest("quickstart").type == "synthetic"


def test_paths_expand_env_vars_and_resolve_against_repo(monkeypatch, tmp_path):
    monkeypatch.setenv("SLADE_DATA_ROOT", str(tmp_path))
    assert resolve_path("${SLADE_DATA_ROOT:-../shared/data}/cub100") == tmp_path / "cub100"
    monkeypatch.delenv("SLADE_DATA_ROOT")
    assert resolve_path("${SLADE_DATA_ROOT:-elsewhere}/x").parts[-2:] == ("elsewhere", "x")
    with pytest.raises(ManifestError, match="not set"):
        resolve_path("${SLADE_SURELY_UNSET_VAR}/x")


def test_unknown_dataset_name_lists_choices():
    with pytest.raises(ManifestError, match="unknown dataset 'cub2000'.*cub200"):
        load_manifest("cub2000")
