"""The generated quickstart set: repeatable, class-disjoint splits, no leak into unlabeled."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slade_core.data.synthetic import generate_synthetic_birds

SMALL = dict(
    n_classes=8,
    images_per_class=3,
    image_size=48,
    unlabeled_per_class=2,
    labeled_fraction_classes=0.5,
    unlabeled_extra_classes=4,
)


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def _image_hashes(root: Path) -> dict[str, str]:
    return {
        row["path"]: hashlib.sha256((root / row["path"]).read_bytes()).hexdigest()
        for row in _rows(root)
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_birds(tmp_path_factory.mktemp("syn") / "birds", seed=3, **SMALL)


def test_same_seed_gives_identical_files_and_other_seed_differs(small_set: Path, tmp_path: Path):
    again = generate_synthetic_birds(tmp_path / "again", seed=3, **SMALL)
    assert (again / "index.csv").read_bytes() == (small_set / "index.csv").read_bytes()
    assert _image_hashes(again) == _image_hashes(small_set)

    other = generate_synthetic_birds(tmp_path / "other", seed=4, **SMALL)
    assert (other / "index.csv").read_bytes() != (small_set / "index.csv").read_bytes()
    assert set(_image_hashes(other).values()).isdisjoint(_image_hashes(small_set).values())


def test_layout_counts_and_class_disjoint_splits(small_set: Path):
    rows = _rows(small_set)
    assert list(rows[0]) == ["path", "label", "class_name", "split"]
    by_split: dict[str, set[int]] = {}
    for row in rows:
        by_split.setdefault(row["split"], set()).add(int(row["label"]))
        path = Path(row["path"])
        assert not path.is_absolute() and path.parts[:2] == ("images", row["class_name"])
    assert set(by_split) == {"train", "test", "unlabeled"}

    count = {s: sum(r["split"] == s for r in rows) for s in by_split}
    assert count == {"train": 4 * 3, "test": 4 * 3, "unlabeled": (4 + 4) * 2}
    assert len(by_split["train"]) == 4 and len(by_split["test"]) == 4
    assert by_split["train"].isdisjoint(by_split["test"])
    assert by_split["unlabeled"].isdisjoint(by_split["test"]), "test classes leaked"
    assert by_split["train"] < by_split["unlabeled"], "unlabeled should contain train classes"
    assert len(by_split["unlabeled"] - by_split["train"]) == 4, "and extra unseen classes"

    assert len({r["path"] for r in rows}) == len(rows)
    names = {}
    for row in rows:
        assert names.setdefault(row["label"], row["class_name"]) == row["class_name"]
        with Image.open(small_set / row["path"]) as image:
            assert image.mode == "RGB" and image.size == (48, 48)

    meta = json.loads((small_set / "generator.json").read_text())
    assert meta["params"]["seed"] == 3 and meta["counts"] == count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classes_are_fine_grained_and_train_classes_show_every_attribute(tmp_path: Path, seed: int):
    root = generate_synthetic_birds(
        tmp_path / "classes",
        seed=seed,
        n_classes=46,
        images_per_class=2,
        image_size=32,
        unlabeled_per_class=0,
    )
    classes = json.loads((root / "generator.json").read_text())["classes"]
    assert len(classes) == 46 + 24
    attrs = [tuple(c["attributes"].values()) for c in classes]
    assert len(set(attrs)) == len(attrs), "two classes share all attributes"
    for a in attrs:
        nearest = min(sum(x != y for x, y in zip(a, b, strict=True)) for b in attrs if b != a)
        assert nearest <= 2, f"{a} differs from every other class in more than two attributes"
    train = [c["attributes"] for c in classes if c["role"] == "train"]
    every = [{c["attributes"][k] for c in classes} for k in classes[0]["attributes"]]
    for key, values in zip(classes[0]["attributes"], every, strict=True):
        assert {t[key] for t in train} == values, f"train classes miss a value of {key}"


def test_unlabeled_part_is_rendered_with_a_domain_shift(small_set: Path, tmp_path: Path):
    def mean_brightness(root: Path, split: str) -> float:
        rows = [r for r in _rows(root) if r["split"] == split]
        means = []
        for row in rows:
            with Image.open(root / row["path"]) as image:
                means.append(np.asarray(image.convert("L"), np.float64).mean())
        return float(np.mean(means))

    # the shifted palettes are darker; with domain_shift=0 the look matches the labeled part
    shifted = mean_brightness(small_set, "unlabeled")
    assert shifted < mean_brightness(small_set, "train") - 15
    same = generate_synthetic_birds(tmp_path / "noshift", seed=3, domain_shift=0.0, **SMALL)
    assert abs(mean_brightness(same, "unlabeled") - mean_brightness(same, "train")) < 15


def test_complete_set_is_reused_and_changed_parameters_regenerate(tmp_path: Path):
    out = tmp_path / "birds"
    generate_synthetic_birds(out, seed=1, **SMALL)
    index = out / "index.csv"
    stamp = index.stat().st_mtime_ns
    (out / "marker").write_text("kept while reused")

    assert generate_synthetic_birds(out, seed=1, **SMALL) == out
    assert index.stat().st_mtime_ns == stamp and (out / "marker").exists()

    generate_synthetic_birds(out, seed=1, **{**SMALL, "images_per_class": 4})
    assert not (out / "marker").exists()
    assert sum(r["split"] == "train" for r in _rows(out)) == 4 * 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dir left behind"


def test_refuses_to_overwrite_a_foreign_directory_and_bad_parameters(tmp_path: Path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "photo.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="not a generated synthetic set"):
        generate_synthetic_birds(foreign, **SMALL)
    assert (foreign / "photo.jpg").read_bytes() == b"not ours"

    with pytest.raises(ValueError, match="test classes"):
        generate_synthetic_birds(tmp_path / "x", **{**SMALL, "labeled_fraction_classes": 1.0})
    with pytest.raises(ValueError, match="images_per_class"):
        generate_synthetic_birds(tmp_path / "x", **{**SMALL, "images_per_class": 1})
    assert not (tmp_path / "x").exists()
