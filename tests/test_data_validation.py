"""The validation protocol in the product: `data.validation_classes: N` evaluates on the last
N training classes, never reads the test classes and is recorded as protocol "validation"."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_data_parsers import write_image
from test_evaluate import checkpoints, fake_extract

from slade_core import evaluate as evaluate_module
from slade_core.config import EvalConfig, RuntimeConfig
from slade_core.data.errors import DataError, ManifestError
from slade_core.data.filtering import FilterSettings
from slade_core.data.prepare import index_protocol, prepare_data
from slade_core.data.preset import parse_data_preset
from slade_core.data.validation import hold_out_classes
from slade_core.evaluate import evaluate

CLASSES = [f"Species_{chr(65 + c)}" for c in range(12)]  # ids 0..11; 0-9 train, 10-11 test


def _dataset(root, per_class=3, unreadable_test=True):
    """A CSV dataset; the test classes' files are not images (a validation run must not
    read them)."""
    lines = ["path,label,class_name"]
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            rel = f"img/{label}_{i}.jpg"
            if label >= 10 and unreadable_test:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(b"a test image: never decoded in validation")
            else:
                write_image(root / rel, color=(label * 20, i * 50, 90))
            lines.append(f"{rel},{label},{name}")
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return {"name": "mine", "type": "csv", "path": str(root / "index.csv")}


def _preset(manifest, validation_classes, **split):
    rule = {"rule": "classes", "train": [0, 9], "test": [10, 11], **split}
    return parse_data_preset(
        {
            "labeled": {"dataset": manifest, "split": rule},
            "validation_classes": validation_classes,
        }
    )


def test_validation_classes_hold_out_the_last_training_classes(tmp_path):
    manifest = _dataset(tmp_path / "mine")
    prepared = prepare_data(_preset(manifest, 3), tmp_path / "out", tmp_path / "d")
    index = pd.read_parquet(prepared.index_path)
    test = index[index["split"] == "test"]
    assert sorted(test["class_name"].unique()) == CLASSES[7:10]
    assert sorted(test["label"].unique()) == [7, 8, 9]
    assert set(index.loc[index["split"] == "train", "label"]) == set(range(7))
    assert not index["class_name"].isin(CLASSES[10:]).any()  # the test rows are gone
    report = json.loads(prepared.report_path.read_text())
    assert report["image_check"]["bad_count"] == 0  # the test files were never opened
    assert report["validation"]["held_out"] == CLASSES[7:10]
    assert report["validation"]["test_images_dropped"] == 6
    assert prepared.counts["validation_classes"] == 3
    assert index_protocol(prepared.index_path) == "validation"


def test_zero_is_the_test_protocol(tmp_path):
    manifest = _dataset(tmp_path / "mine", unreadable_test=False)
    prepared = prepare_data(_preset(manifest, 0), tmp_path / "out", tmp_path / "d")
    index = pd.read_parquet(prepared.index_path)
    assert set(index.loc[index["split"] == "test", "class_name"]) == set(CLASSES[10:])
    assert index_protocol(prepared.index_path) is None
    assert prepared.counts["validation_classes"] == 0


def test_too_many_or_negative_validation_classes_are_named(tmp_path):
    manifest = _dataset(tmp_path / "mine")
    with pytest.raises(DataError, match=r"validation_classes 9: choose 2..8 of the 10 training"):
        prepare_data(_preset(manifest, 9), tmp_path / "out", tmp_path / "d")
    with pytest.raises(ManifestError, match="validation_classes: Input should be greater"):
        _preset(manifest, -1)


def test_scarce_labels_hidden_images_of_held_classes_are_evaluated(tmp_path):
    """labeled_per_class hides images as unlabeled: the held-out classes' hidden images join
    their evaluation split, the kept classes' stay unlabeled."""
    manifest = _dataset(tmp_path / "mine", per_class=4)
    preset = _preset(manifest, 2, labeled_per_class=2, seed=0)
    index = pd.read_parquet(prepare_data(preset, tmp_path / "out", tmp_path / "d").index_path)
    test = index[index["split"] == "test"]
    assert test.groupby("class_name").size().to_dict() == {CLASSES[8]: 4, CLASSES[9]: 4}
    assert test.groupby("class_name")["label"].nunique().eq(1).all()
    unlabeled = index[index["split"] == "unlabeled"]
    assert len(unlabeled) == 8 * 2 and (unlabeled["label"] == -1).all()
    assert not unlabeled["class_name"].isin(CLASSES[8:10]).any()


def _rows(source, label, split, name, count, prefix=""):
    return [
        {"image_id": f"{source}/{prefix}{label}/{i}", "path": "", "label": label,
         "class_name": name, "split": split, "source": source}
        for i in range(count)
    ]  # fmt: skip


def test_another_sets_images_of_a_held_out_species_leave_the_unlabeled_set():
    """The leakage rule: tuning must not see the held-out species among the unlabeled images
    (the leakage filter already removed the test classes' species)."""
    index = pd.DataFrame(
        [r for c in range(10) for r in _rows("a", c, "train", CLASSES[c], 3)]
        + _rows("a", 10, "test", CLASSES[10], 3)
        + _rows("u", 4, "unlabeled", "SPECIES J", 2)  # = Species_J, id 9: held out
        + _rows("u", 5, "unlabeled", "SPECIES B", 2)  # a kept training class
    )
    held, report = hold_out_classes(index, 2, FilterSettings())
    assert set(held.loc[held["split"] == "unlabeled", "class_name"]) == {"SPECIES B"}
    assert report["unlabeled_images_dropped"] == 2
    assert report["hidden_images_moved"] == 0


def test_evaluate_reports_the_validation_protocol(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_module, "extract_embeddings", fake_extract)
    manifest = _dataset(tmp_path / "mine")
    prepared = prepare_data(_preset(manifest, 3), tmp_path / "data", tmp_path / "d")
    result = evaluate(
        checkpoints(tmp_path),
        prepared.index_path,
        tmp_path / "eval",
        EvalConfig(examples=1),
        RuntimeConfig(),
    )
    assert result.metrics["protocol"] == "validation"
    assert result.metrics["n_queries"] == 9  # the three held-out classes' images
    assert "Protocol **validation**" in result.report_path.read_text()
