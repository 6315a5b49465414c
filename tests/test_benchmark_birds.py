"""The bird benchmark's pure parts: config assembly, tuning split, summaries, table, JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from benchmark_scripts import BENCHMARKS, load_benchmark
from PIL import Image

from slade_core.config import ModelConfig, OptimConfig, RuntimeConfig, TeacherConfig
from slade_core.models import create_model, load_model


@pytest.fixture(scope="module")
def birds():
    return load_benchmark("birds")


def test_summary_uses_sample_std_and_single_run_has_zero_std(birds):
    runs = [
        {"map_at_r": 0.2, "r_precision": 0.3, "precision_at_1": 0.5},
        {"map_at_r": 0.4, "r_precision": 0.3, "precision_at_1": 0.7},
    ]
    row = birds.summarize("teacher", runs, 12.0)
    assert row["map_at_r"] == pytest.approx(0.3)
    assert row["map_at_r_std"] == pytest.approx(math.sqrt(0.02))  # n-1 in the denominator
    assert row["r_precision_std"] == 0.0
    assert row["seconds"] == 12.0 and row["runs"] == 2
    assert birds.summarize("trunk", runs[:1], 1.0)["map_at_r_std"] == 0.0


def test_table_and_payload_schema(birds, tmp_path):
    rows = [
        birds.summarize(birds.TEACHER_ROW, [{m: 0.25 for m in birds.METRICS}] * 3, 30.0),
        birds.summarize(birds.STUDENTS[-1][0], [{m: 0.30 for m in birds.METRICS}] * 3, 60.0),
    ]
    table = birds.format_table(rows)
    assert table.splitlines()[0].startswith("| row | MAP@R")
    assert "| teacher | 25.00 ± 0.00 | 25.00 ± 0.00 | 25.00 ± 0.00 | 30 |" in table

    payload = birds.results_payload("machine x", rows, {"seeds": [0, 1, 2]})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(payload))
    loaded = json.loads(path.read_text())
    assert loaded["machine"] == "machine x"
    for row in loaded["rows"]:
        for key in ("name", "map_at_r", "r_precision", "precision_at_1", "map_at_r_std", "seconds"):
            assert key in row

    lines = birds.verdicts(rows)
    full = birds.STUDENTS[-1][0]
    assert lines[0].startswith(f"{full} - teacher: +5.00 MAP@R") and lines[0].endswith("yes")
    assert lines[1] == "  paired by seed: +5.00 ± 0.00 over 3 seeds; > 2 std? yes"
    assert lines[2] == "full student - teacher >= +1.50 MAP@R? True (+5.00)"
    assert not any("ablation" in line for line in lines)  # needs every ablation row
    middle = [
        birds.summarize(name, [{m: 0.26 + 0.01 * i for m in birds.METRICS}] * 3, 1.0)
        for i, (name, _, _) in enumerate(birds.STUDENTS[:-1])
    ]
    assert birds.verdicts([rows[0], *middle, rows[1]])[-1].endswith("True")

    control = birds.summarize(birds.CONTROL_ROW, [{m: 0.31 for m in birds.METRICS}] * 3, 60.0)
    trunk = birds.summarize(birds.TRUNK_ROW, [{m: 0.27 for m in birds.METRICS}], 1.0)
    lines = birds.verdicts([trunk, *rows, control])
    assert lines[0].startswith(f"{full} - {birds.CONTROL_ROW}: -1.00 MAP@R")
    assert lines[0].endswith("no")
    assert f"{birds.CONTROL_ROW} - teacher: +6.00 MAP@R" in lines[2]
    assert "every trained row above the pretrained trunk? False ['teacher']" in lines


def test_paired_verdict_sees_a_consistent_gap_that_the_seed_spread_hides(birds):
    """Seeds move both rows together (shared teacher): +0.4 each seed is a real gap even
    though the rows' own spreads overlap; one seed gives no paired line."""
    teacher = [0.50, 0.52, 0.51]
    rows = [
        birds.summarize(birds.TEACHER_ROW, [{m: v for m in birds.METRICS} for v in teacher], 1),
        birds.summarize(
            birds.STUDENTS[-1][0], [{m: v + 0.004 for m in birds.METRICS} for v in teacher], 1
        ),
    ]
    lines = birds.verdicts(rows)
    assert lines[0].endswith("no")  # 0.4 < 2 x 1.0 (unpaired)
    assert lines[1] == "  paired by seed: +0.40 ± 0.00 over 3 seeds; > 2 std? yes"
    noisy = [{m: v for m in birds.METRICS} for v in (0.51, 0.50, 0.55)]
    rows[1] = birds.summarize(birds.STUDENTS[-1][0], noisy, 1)
    assert birds.verdicts(rows)[1].endswith("> 2 std? no")
    single = [birds.summarize(row["name"], [{m: 0.5 for m in birds.METRICS}], 1) for row in rows]
    assert not any("paired" in line for line in birds.verdicts(single))


def test_overrides_parse_json_values_and_reject_missing_equals(birds):
    assert birds.parse_overrides(["student.lambda1=0.5", "model.batchnorm=train", "a.b=true"]) == {
        "student.lambda1": 0.5,
        "model.batchnorm": "train",
        "a.b": True,
    }
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        birds.parse_overrides(["student.lambda1"])


def test_data_flag_swaps_only_the_data_section(birds):
    """--data runs birds_offline's settings on another preset's data (the unseen-data check)."""
    reverse = str(BENCHMARKS / "presets" / "birds_reverse.yaml")
    base = birds.build_config(birds.parse_args(["--set", "cluster.k=123"]))
    swapped = birds.build_config(birds.parse_args(["--data", reverse, "--set", "cluster.k=123"]))
    assert swapped.data.labeled.manifest().name == "birds525"
    assert [ref.manifest().name for ref in swapped.data.unlabeled] == ["cub100"]
    assert swapped.model_dump(exclude={"data"}) == base.model_dump(exclude={"data"})
    assert swapped.cluster.k == 123 and swapped.preset == "birds_offline"


def _rows(source, label, split, names, count):
    return [
        {"image_id": f"{source}/{label}/{i}", "label": label, "class_name": names[label],
         "split": split, "source": source}
        for i in range(count)
    ]  # fmt: skip


NAMES = {label: f"Species_{chr(65 + label)}" for label in range(12)} | {99: "Species_Z", -1: "x"}


def test_holdout_index_hides_the_test_classes(birds, tmp_path):
    rows = [r for label in range(12) for r in _rows("a", label, "train", NAMES, 3)]
    rows += _rows("a", 99, "test", NAMES, 3)
    rows += _rows("u", -1, "unlabeled", {-1: "SPECIES Q"}, 3)
    pd.DataFrame(rows).to_parquet(tmp_path / "index.parquet")
    out = birds.holdout_index(tmp_path / "index.parquet", tmp_path / "v" / "index.parquet", 3)
    index = pd.read_parquet(out)
    assert sorted(index.loc[index["split"] == "test", "label"].unique()) == [9, 10, 11]
    assert 99 not in set(index["label"])
    assert (index["split"] == "unlabeled").sum() == 3
    with pytest.raises(SystemExit, match="--holdout"):
        birds.holdout_index(tmp_path / "index.parquet", tmp_path / "w.parquet", 5)


def test_holdout_index_with_scarce_labels_moves_hidden_images_of_held_classes(birds, tmp_path):
    """Scarce labels: the held-out classes' hidden images join their test set, and another
    set's images of a held-out species leave the unlabeled set (no leak into tuning)."""
    rows = [r for label in range(12) for r in _rows("a", label, "train", NAMES, 2)]
    hidden = [{**r, "label": -1, "split": "unlabeled", "image_id": r["image_id"] + "h"}
              for label in (0, 11) for r in _rows("a", label, "train", NAMES, 3)]  # fmt: skip
    other = [{**r, "image_id": f"u/{name}/{r['image_id']}"}
             for name in ("SPECIES L", "SPECIES A")
             for r in _rows("u", -1, "unlabeled", {-1: name}, 2)]  # fmt: skip
    pd.DataFrame(rows + hidden + other).to_parquet(tmp_path / "index.parquet")
    out = birds.holdout_index(tmp_path / "index.parquet", tmp_path / "v" / "index.parquet", 3)
    index = pd.read_parquet(out)
    test = index[index["split"] == "test"]
    assert test.groupby("label").size().to_dict() == {9: 2, 10: 2, 11: 5}
    unlabeled = index[index["split"] == "unlabeled"]
    assert set(unlabeled["class_name"]) == {"Species_A", "SPECIES A"}  # a kept class's
    assert len(unlabeled) == 5


def test_hidden_species_joins_names_of_one_species_across_sets(birds, tmp_path):
    rows = _rows("a", 0, "train", NAMES, 1) + _rows("a", 1, "test", NAMES, 1)
    rows += [{**r, "label": -1, "split": "unlabeled", "image_id": "a/h"}
             for r in _rows("a", 0, "train", NAMES, 1)]  # fmt: skip
    rows += [{**r, "image_id": f"u/{i}"} for i, name in enumerate(["SPECIES A", "OTHER BIRD"])
             for r in _rows("u", -1, "unlabeled", {-1: name}, 1)]  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "index.parquet")
    species = birds.hidden_species(tmp_path / "index.parquet", birds.FilterSettings())
    assert species["a/h"] == species["u/0"] != species["u/1"]


def test_missing_data_root_is_a_clear_error(birds, tmp_path):
    with pytest.raises(SystemExit, match="--data-root"):
        birds.check_data_root(tmp_path)


@pytest.fixture()
def tiny_index(tmp_path):
    """8 classes x 4 coloured 32 px images, all split=="train"."""
    rng = np.random.default_rng(0)
    rows = []
    for label in range(8):
        colour = rng.integers(0, 256, 3)
        for i in range(4):
            pixels = np.clip(colour + rng.normal(0, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
            path = tmp_path / f"{label}-{i}.png"
            Image.fromarray(pixels).save(path)
            rows.append(
                {"image_id": f"t/{path.name}", "path": str(path), "label": label, "split": "train"}
            )
    index = tmp_path / "index.parquet"
    pd.DataFrame(rows).to_parquet(index, index=False)
    return index


@pytest.mark.parametrize("trainable_blocks", [0, -1])
def test_pml_baseline_trains_the_head_or_whole_net(birds, tiny_index, tmp_path, trainable_blocks):
    spec = ModelConfig(
        backbone="test_byobnet",
        weights="none",
        embedding_dim=8,
        image_size=32,
        trainable_blocks=trainable_blocks,
    )
    teacher = TeacherConfig(optim=OptimConfig(epochs=2, iterations_per_epoch=3, lr=1e-2))
    runtime = RuntimeConfig(device="cpu", feature_cache_dir=tmp_path / "cache", batch_size=16)
    torch.manual_seed(0)
    start = create_model(spec).state_dict()
    path = birds.train_pml_baseline(tiny_index, spec, teacher, runtime, tmp_path / "pml.pt")
    trained, meta = load_model(path)
    assert meta["stage"] == "pml-baseline"
    changed = {
        k.split(".")[0] for k, v in trained.state_dict().items() if not torch.equal(v, start[k])
    }
    assert "head" in changed
    assert ("trunk" in changed) == (trainable_blocks == -1)
