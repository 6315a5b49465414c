"""prepare_data end to end: image checks, leakage filter, label remap, the quickstart set."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from PIL import Image
from test_data_parsers import write_image

from slade_core.data.errors import DataError
from slade_core.data.image_check import check_images
from slade_core.data.prepare import prepare_data
from slade_core.data.preset import parse_data_preset


@pytest.fixture()
def bad_images(tmp_path):
    root = tmp_path / "bad"
    good = write_image(root / "good.jpg")
    data = good.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    (root / "empty.jpg").write_bytes(b"")
    Image.new("LAB", (4, 4)).save(root / "lab.tif")
    write_image(root / "cmyk.jpg", mode="CMYK")
    write_image(root / "gray.png", mode="L")
    write_image(root / "palette.png", mode="P")
    return root


def test_image_check_reasons(bad_images):
    names = [
        "good.jpg",
        "truncated.jpg",
        "corrupt.jpg",
        "empty.jpg",
        "lab.tif",
        "cmyk.jpg",
        "gray.png",
        "palette.png",
        "missing.jpg",
    ]
    statuses = dict(
        zip(names, check_images([str(bad_images / n) for n in names], workers=1), strict=True)
    )
    assert statuses["good.jpg"].problem is None
    assert "truncated" in statuses["truncated.jpg"].problem.lower()
    assert statuses["corrupt.jpg"].problem.startswith("unreadable")
    assert statuses["empty.jpg"].problem == "empty file (0 bytes)"
    assert statuses["lab.tif"].problem == "unsupported mode LAB"
    assert statuses["missing.jpg"].problem == "file not found"
    assert [statuses[n].mode for n in ("cmyk.jpg", "gray.png", "palette.png")] == ["CMYK", "L", "P"]
    assert all(statuses[n].problem is None for n in ("cmyk.jpg", "gray.png", "palette.png"))


def test_image_check_parallel_equals_serial(bad_images):
    paths = [str(p) for p in sorted(bad_images.iterdir())] * 80
    assert check_images(paths, workers=2) == check_images(paths, workers=1)


def _labeled_folder(root, bad_images):
    for cls in ("Brown_Creeper", "Cactus_Wren", "Rock_Wren", "Western_Meadowlark"):
        for i in range(3):
            write_image(root / cls / f"{i}.jpg", color=(len(cls) * 9, i * 40, 90))
    for name in ("truncated.jpg", "empty.jpg", "corrupt.jpg"):
        (root / "Cactus_Wren" / name).write_bytes((bad_images / name).read_bytes())
    for name in ("cmyk.jpg", "palette.png"):
        (root / "Rock_Wren" / name).write_bytes((bad_images / name).read_bytes())
    return root


def test_prepare_filters_checks_and_remaps(tmp_path, bad_images):
    labeled = _labeled_folder(tmp_path / "mine", bad_images)
    other = tmp_path / "other"
    rows = ["path,label,class_name"]
    for label, name in enumerate(["BROWN CREPPER", "EASTERN MEADOWLARK", "OSTRICH"]):
        for i in range(2):
            write_image(other / f"{label}_{i}.png")
            rows.append(f"{label}_{i}.png,{label},{name}")
    (other / "index.csv").write_text("\n".join(rows) + "\n")
    preset = parse_data_preset(
        {
            "labeled": {
                "dataset": {"name": "mine", "type": "folder", "path": str(labeled)},
                "split": {"rule": "classes", "train": [0, 1], "test": [2, 3]},
            },
            "unlabeled": [{"dataset": {"name": "other", "type": "csv", "path": str(other)}}],
        }
    )
    result = prepare_data(preset, tmp_path / "out", tmp_path / "dl")
    index = pd.read_parquet(result.index_path)
    assert list(index.columns) == ["image_id", "path", "label", "class_name", "split", "source"]
    assert index["image_id"].is_unique
    train = index[index["split"] == "train"]
    assert set(train["class_name"]) == {"Brown_Creeper", "Cactus_Wren"}
    assert len(train) == 6  # the three bad Cactus_Wren files are excluded
    assert sorted(index.loc[index["split"] != "unlabeled", "label"].unique()) == [0, 1, 2, 3]
    unlabeled = index[index["split"] == "unlabeled"]
    assert set(unlabeled["class_name"]) == {"EASTERN MEADOWLARK", "OSTRICH"}
    assert (unlabeled["label"] == -1).all() and (unlabeled["source"] == "other").all()
    report = json.loads(result.report_path.read_text())
    bad = {e["image_id"]: e["reason"] for e in report["image_check"]["bad"]}
    assert set(bad) == {
        f"mine/Cactus_Wren/{n}" for n in ("truncated.jpg", "empty.jpg", "corrupt.jpg")
    }
    assert report["image_check"]["modes"]["CMYK"] == 1 and report["image_check"]["modes"]["P"] == 1
    assert report["filter"][0]["removed"][0]["class_name"] == "BROWN CREPPER"
    assert result.counts["bad_images"] == 3 and result.counts["filter_removed_images"] == 2
    assert result.counts["images_unlabeled"] == 4 and result.counts["classes_test"] == 2
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_labeled_dataset_needs_a_split_rule(tmp_path):
    write_image(tmp_path / "imgs" / "a" / "0.jpg")
    preset = parse_data_preset(
        {"labeled": {"dataset": {"name": "x", "type": "folder", "path": str(tmp_path / "imgs")}}}
    )
    with pytest.raises(DataError, match="no split rule"):
        prepare_data(preset, tmp_path / "out", tmp_path / "dl")


def test_quickstart_synthetic_set(tmp_path):
    params = {
        "seed": 1,
        "n_classes": 4,
        "images_per_class": 2,
        "image_size": 32,
        "unlabeled_per_class": 1,
        "unlabeled_extra_classes": 1,
    }
    preset = parse_data_preset(
        {
            "labeled": {
                "dataset": {
                    "name": "quick",
                    "type": "synthetic",
                    "params": params,
                    "split": {"rule": "source"},
                }
            }
        }
    )
    result = prepare_data(preset, tmp_path / "out", tmp_path / "dl")
    index = pd.read_parquet(result.index_path)
    assert index.groupby("split").size().to_dict() == {"test": 4, "train": 4, "unlabeled": 3}
    assert sorted(index.loc[index["split"] != "unlabeled", "label"].unique()) == [0, 1, 2, 3]
    assert (index.loc[index["split"] == "unlabeled", "label"] == -1).all()
    assert result.counts["bad_images"] == 0


def _scarce_preset(root, per_class, seed, against="test"):
    return parse_data_preset(
        {
            "labeled": {
                "dataset": {"name": "birds", "type": "folder", "path": str(root)},
                "split": {
                    "rule": "classes",
                    "train": [0, 1],
                    "test": [2, 2],
                    "labeled_per_class": per_class,
                    "seed": seed,
                },
            },
            "filter": {"against": against},
        }
    )


@pytest.fixture()
def five_per_class(tmp_path):
    root = tmp_path / "birds"
    for name in ("Brown_Creeper", "Cactus_Wren", "Ostrich"):
        for i in range(5):
            write_image(root / name / f"{i}.png")
    return root


def test_scarce_labels_hide_all_but_n_per_training_class(tmp_path, five_per_class):
    result = prepare_data(_scarce_preset(five_per_class, 2, 0), tmp_path / "o", tmp_path / "d")
    index = pd.read_parquet(result.index_path)
    train = index[index["split"] == "train"]
    assert train.groupby("class_name").size().to_dict() == {"Brown_Creeper": 2, "Cactus_Wren": 2}
    hidden = index[index["split"] == "unlabeled"]
    assert len(hidden) == 6 and (hidden["source"] == "birds").all()
    assert (hidden["label"] == -1).all()  # the method never sees their labels
    assert set(hidden["class_name"]) == {"Brown_Creeper", "Cactus_Wren"}  # diagnostics do
    assert (index["split"] == "test").sum() == 5  # test classes keep every image
    assert result.counts["labels_hidden_images"] == 6 and result.counts["images_unlabeled"] == 6
    report = json.loads(result.report_path.read_text())["labels_hidden"]
    assert report == {
        "labeled_per_class": 2,
        "seed": 0,
        "train_classes": 2,
        "train_images_before": 10,
        "kept_labeled": 4,
        "moved_to_unlabeled": 6,
    }


def test_scarce_labels_are_seeded(tmp_path, five_per_class):
    def kept(seed, name):
        result = prepare_data(
            _scarce_preset(five_per_class, 2, seed), tmp_path / name, tmp_path / "d"
        )
        index = pd.read_parquet(result.index_path)
        return sorted(index.loc[index["split"] == "train", "image_id"])

    assert kept(0, "a") == kept(0, "b")
    assert any(kept(s, f"s{s}") != kept(0, "a") for s in (1, 2, 3))


def test_unlabeled_class_range_hides_every_image_of_those_classes(tmp_path, five_per_class):
    preset = parse_data_preset(
        {
            "labeled": {
                "dataset": {"name": "birds", "type": "folder", "path": str(five_per_class)},
                "split": {"rule": "classes", "train": [0, 0], "test": [2, 2], "unlabeled": [1, 1]},
            },
        }
    )
    result = prepare_data(preset, tmp_path / "o", tmp_path / "d")
    index = pd.read_parquet(result.index_path)
    hidden = index[index["split"] == "unlabeled"]
    assert set(hidden["class_name"]) == {"Cactus_Wren"} and len(hidden) == 5
    assert (hidden["label"] == -1).all()
    assert index.groupby("split").size().to_dict() == {"test": 5, "train": 5, "unlabeled": 5}
    assert sorted(index.loc[index["split"] != "unlabeled", "label"].unique()) == [0, 1]


def test_without_scarce_labels_nothing_moves(tmp_path, five_per_class):
    result = prepare_data(_scarce_preset(five_per_class, None, 0), tmp_path / "o", tmp_path / "d")
    assert result.counts["labels_hidden_images"] == 0
    assert result.counts["images_train"] == 10 and result.counts["images_unlabeled"] == 0
