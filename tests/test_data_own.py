"""Your own data as teams have it: class names as labels, a split by fraction, and clear
errors from the data stage for a misnamed column, missing files, small classes and an empty
unlabeled set."""

from __future__ import annotations

import pandas as pd
import pytest
from test_data_parsers import write_image

from slade_core.data import image_check
from slade_core.data.errors import DataError, ManifestError
from slade_core.data.manifest import ClassSplit, parse_manifest
from slade_core.data.needs import TrainingNeeds, check_training_needs
from slade_core.data.prepare import prepare_data
from slade_core.data.preset import parse_data_preset
from slade_core.data.rules import apply_split
from slade_core.experiment import load_experiment
from tasks.prepare_data import training_needs

BIRDS = ("wren", "sparrow", "finch", "robin")


def write_csv(root, rows, header="path,label"):
    """rows of (relative image path, label text); every image is written."""
    lines = [header]
    for i, (rel, label) in enumerate(rows):
        write_image(root / rel, color=(i * 7 % 255, 60, 90))
        lines.append(f"{rel},{label}")
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return root / "index.csv"


def named_rows(per_class=3, names=BIRDS):
    return [(f"img/{name}_{i}.jpg", name) for name in names for i in range(per_class)]


def csv_preset(csv, split=None, **extra):
    labeled = {"dataset": {"name": "mine", "type": "csv", "path": str(csv)}}
    labeled["split"] = split or {"rule": "classes", "test_fraction": 0.5, "seed": 0}
    return parse_data_preset({"labeled": labeled, **extra})


def test_class_names_as_labels_end_to_end(tmp_path):
    """`sparrow`, `wren` in the label column: ids by sorted name, the name as class_name."""
    csv = write_csv(tmp_path / "mine", named_rows())
    prepared = prepare_data(csv_preset(csv), tmp_path / "out", tmp_path / "downloads")
    index = pd.read_parquet(prepared.index_path)
    assert len(index) == 12 and set(index["class_name"]) == set(BIRDS)
    # one label per name, one name per label; ids follow sorted names within each split
    pairs = index.groupby("class_name")["label"].unique()
    assert all(len(v) == 1 for v in pairs) and pairs.map(lambda v: v[0]).is_unique
    order = index.drop_duplicates("class_name").sort_values("label")["class_name"].tolist()
    train = [n for n in order if n in set(index.loc[index["split"] == "train", "class_name"])]
    assert train == sorted(train)
    assert prepared.counts["classes_train"] == prepared.counts["classes_test"] == 2
    # the same names under the id-range split: sorted names are ids 0..3
    ranged = prepare_data(
        csv_preset(csv, {"rule": "classes", "train": [0, 1], "test": [2, 3]}),
        tmp_path / "out2",
        tmp_path / "downloads",
    )
    index = pd.read_parquet(ranged.index_path)
    train_names = set(index.loc[index["split"] == "train", "class_name"])
    assert train_names == {"finch", "robin"}  # the first two sorted names


def test_an_empty_label_is_unlabeled_among_names(tmp_path):
    rows = named_rows(per_class=2) + [("img/unknown_0.jpg", "")]
    csv = write_csv(tmp_path / "mine", rows)
    manifest = parse_manifest({"name": "mine", "type": "csv", "path": str(csv)})
    from slade_core.data.parsers import parse_dataset

    frame = parse_dataset(manifest, csv.parent, labeled=True)
    assert frame.loc[frame["rel"] == "img/unknown_0.jpg", "label"].item() == -1
    assert dict(zip(frame["class_name"], frame["label"], strict=True)) == {
        "finch": 0,
        "robin": 1,
        "sparrow": 2,
        "wren": 3,
        "": -1,
    }


def _frame(n_classes=20, per_class=3, seed=0):
    rows = [
        (f"{c}/{i}.jpg", c, f"class{c}", "") for c in range(n_classes) for i in range(per_class)
    ]
    frame = pd.DataFrame(rows, columns=["rel", "label", "class_name", "split"])
    return frame.sample(frac=1, random_state=seed).reset_index(drop=True)


def _test_classes(frame, **rule):
    split, _ = apply_split(frame, ClassSplit(rule="classes", **rule), "mine")
    return split, set(split.loc[split["split"] == "test", "label"])


def test_fraction_split_is_seeded_class_disjoint_and_row_order_free():
    split, test = _test_classes(_frame(), test_fraction=0.3, seed=0)
    train = set(split.loc[split["split"] == "train", "label"])
    assert len(test) == 6 and len(train) == 14 and not train & test
    assert len(split) == 60  # every image kept
    assert _test_classes(_frame(seed=1), test_fraction=0.3, seed=0)[1] == test  # row order
    assert _test_classes(_frame(), test_fraction=0.3, seed=0)[1] == test  # same seed
    others = {frozenset(_test_classes(_frame(), test_fraction=0.3, seed=s)[1]) for s in (1, 2)}
    assert frozenset(test) not in others  # the seed draws other classes


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"test_fraction": 0}, "split.test_fraction: Input should be greater than 0"),
        ({"test_fraction": 1.0}, "split.test_fraction: Input should be less than 1"),
        ({"test_fraction": "half"}, "split.test_fraction"),
        ({"test_fraction": 0.5, "train": [0, 4]}, "either id ranges"),
        ({}, "either id ranges"),
        ({"train": [0, 4]}, "need both train and test"),
    ],
)
def test_bad_split_rules_are_named(split, message):
    raw = {"name": "mine", "type": "csv", "path": "x.csv", "split": {"rule": "classes", **split}}
    with pytest.raises(ManifestError, match=message):
        parse_manifest(raw)


def test_a_fraction_that_leaves_a_side_without_classes_is_a_clear_error():
    with pytest.raises(DataError, match=r"test_fraction 0.01 of 20 classes gives 0 test classes"):
        apply_split(_frame(), ClassSplit(rule="classes", test_fraction=0.01), "mine")


def test_misnamed_label_column_fails_in_the_csv_reader(tmp_path):
    csv = write_csv(tmp_path / "mine", named_rows(), header="path,lbl")
    with pytest.raises(DataError) as err:
        prepare_data(csv_preset(csv), tmp_path / "out", tmp_path / "downloads")
    message = str(err.value)
    assert "has columns ['path', 'lbl'] but needs ['path', 'label']" in message
    assert "is 'lbl' the 'label' column?" in message
    assert "split" not in message.split("(optionally")[0]  # not the split rule's error
    # as unlabeled data the same file is fine: unlabeled images need only a path
    labeled = write_csv(tmp_path / "labeled", named_rows())
    other = {"dataset": {"name": "other", "type": "csv", "path": str(csv)}}
    prepared = prepare_data(
        csv_preset(labeled, unlabeled=[other]), tmp_path / "out", tmp_path / "downloads"
    )
    assert prepared.counts["images_unlabeled"] == 12


def test_empty_training_split_fails_with_counts_and_paths_then_a_fix_is_cheap(
    tmp_path, monkeypatch
):
    """Every train file missing: the data stage fails naming them; after the files are
    placed, only those are decoded again (the image check results are cached)."""
    csv = write_csv(tmp_path / "mine", named_rows())
    root = csv.parent
    split = {"rule": "classes", "train": [0, 1], "test": [2, 3]}  # finch, robin train
    missing = sorted(root.glob("img/finch_*.jpg")) + sorted(root.glob("img/robin_*.jpg"))
    for path in missing:
        path.rename(path.with_suffix(".bak"))
    with pytest.raises(DataError) as err:
        prepare_data(csv_preset(csv, split), tmp_path / "out", tmp_path / "downloads")
    message = str(err.value)
    assert "split 'train' is empty: none of its 6 images is readable" in message
    assert f"{missing[0]} (file not found)" in message
    assert not (tmp_path / "out" / "index.parquet").exists()

    decoded = []
    real = image_check._check_many
    monkeypatch.setattr(image_check, "_check_many", lambda p: decoded.extend(p) or real(p))
    for path in missing:
        path.with_suffix(".bak").rename(path)
    prepared = prepare_data(csv_preset(csv, split), tmp_path / "out", tmp_path / "downloads")
    assert prepared.counts["images_train"] == 6
    assert sorted(decoded) == [str(p) for p in missing]  # the test images came from the cache


def test_unreadable_training_files_fail_the_same_way(tmp_path):
    csv = write_csv(tmp_path / "mine", named_rows())
    for path in (csv.parent / "img").glob("[fr]*_*.jpg"):  # finch, robin: the train classes
        path.write_bytes(b"not a jpeg")
    split = {"rule": "classes", "train": [0, 1], "test": [2, 3]}
    with pytest.raises(DataError, match=r"split 'train' is empty.*\(unreadable"):
        prepare_data(csv_preset(csv, split), tmp_path / "out", tmp_path / "downloads")


def test_declared_unlabeled_set_that_ends_empty_fails(tmp_path):
    """Every unlabeled species is a labeled one: the leakage filter removes them all."""
    labeled = write_csv(tmp_path / "labeled", named_rows())
    same = write_csv(tmp_path / "same", [(f"u/{n}.jpg", n) for n in BIRDS], "path,class_name")
    other = {"dataset": {"name": "same", "type": "csv", "path": str(same)}}
    with pytest.raises(DataError, match=r"the unlabeled set is empty.*'same': 4"):
        prepare_data(csv_preset(labeled, unlabeled=[other]), tmp_path / "o", tmp_path / "d")


def _index(sizes, unlabeled=3):
    rows = [
        {"label": label, "class_name": f"class{label}", "split": "train"}
        for label, size in enumerate(sizes)
        for _ in range(size)
    ]
    rows += [{"label": -1, "class_name": "", "split": "unlabeled"}] * unlabeled
    return pd.DataFrame(rows)


def test_training_needs_name_small_classes_batches_and_unlabeled():
    needs = TrainingNeeds(images_per_class=4, classes=2, unlabeled=True)
    check_training_needs(_index([4, 5, 6]), needs)  # enough of everything
    with pytest.raises(DataError) as err:
        check_training_needs(_index([4, 2, 3, 9]), needs)
    assert str(err.value).startswith(
        "2 of 4 training classes have fewer than 4 images, the samplers' m_per_class: "
        "'class1' (2), 'class2' (3); "
    )
    assert "subset: {min_images_per_class: 4}" in str(err.value)
    with pytest.raises(DataError, match="training split has 1 classes; a labeled batch needs 2"):
        check_training_needs(_index([5]), needs)
    with pytest.raises(DataError, match="unlabeled set is empty but the student"):
        check_training_needs(_index([5, 5], unlabeled=0), needs)


def test_pipeline_needs_come_from_the_teacher_and_student_samplers():
    config = load_experiment(
        "quickstart",
        {
            "teacher": {"batch_size": 32, "m_per_class": 4},
            "student": {"labeled_batch_size": 48, "m_per_class": 6},
        },
    )
    assert training_needs(config) == TrainingNeeds(images_per_class=6, classes=8, unlabeled=True)


def test_the_flow_tests_tiny_preset_meets_its_own_needs(tmp_path, tiny_preset):
    preset, overrides = tiny_preset
    config = load_experiment(preset, overrides)
    prepared = prepare_data(config.data, tmp_path / "o", tmp_path / "d")
    check_training_needs(pd.read_parquet(prepared.index_path), training_needs(config))
    too_many = load_experiment(
        preset, {**overrides, "teacher": {"batch_size": 16, "m_per_class": 8}}
    )
    with pytest.raises(DataError, match="fewer than 8 images"):
        check_training_needs(pd.read_parquet(prepared.index_path), training_needs(too_many))
