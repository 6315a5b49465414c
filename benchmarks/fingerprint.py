"""A seeded fingerprint of the method: one sha256 per trunk mode and per variant.

A refactor that must not change results (removing an option, merging two copies of a
concept) keeps every line of this output. It trains on a tiny synthetic bird set on the CPU
(test_byobnet, 32 px): teacher, Ward pseudo labels (the single-file and the sharded writer),
student; for trunk modes 0, 1, 2 and -1. With the frozen trunk it also runs the paper's
switches (k-means, the other regularisers and thresholds, use_basis / use_mining off, a
second self-training round). Each hash covers the teacher's and student's weights and
histories and the pseudo labels' columns (not the files: their metadata holds the config).

    .venv/bin/python benchmarks/fingerprint.py [--work DIR]

Compare the output of two trees, e.g. a baseline `git worktree` run with
PYTHONPATH=<worktree>: equal lines mean equal results. About a minute on two cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from slade_core.clustering import make_pseudo_labels, make_sharded_pseudo_labels
from slade_core.config import (
    ClusterConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    StudentConfig,
    TeacherConfig,
)
from slade_core.data.synthetic import generate_synthetic_birds
from slade_core.embeddings import extract_embedding_shard, extract_embeddings
from slade_core.models import load_model
from slade_core.shards import part_name, plan_shards, select_rows
from slade_core.training import train_student, train_teacher

TRUNK_MODES = (0, 1, 2, -1)
VARIANTS: dict[str, dict[str, Any]] = {  # frozen trunk only: student / cluster updates
    "kmeans": {"cluster": {"method": "kmeans"}},
    "global_ce": {"student": {"basis": {"regularizer": "global_ce"}}},
    "local_ce": {"student": {"basis": {"regularizer": "local_ce"}}},
    "adaptive": {"student": {"mining": {"thresholds": "adaptive"}}},
    "no_mining": {"student": {"use_mining": False}},
    "no_basis": {"student": {"use_basis": False, "use_mining": False}},
    "round2": {"rounds": 2},
}


def synthetic_index(root: Path) -> Path:
    """index.parquet of a tiny synthetic bird set: 6 train, 2 test and 2 extra species."""
    data = generate_synthetic_birds(
        root / "birds", n_classes=8, images_per_class=8, image_size=32,
        unlabeled_per_class=6, labeled_fraction_classes=0.75, unlabeled_extra_classes=2,
    )  # fmt: skip
    frame = pd.read_csv(data / "index.csv")
    frame["image_id"] = "synthetic/" + frame["path"]
    frame["path"] = [str(data / p) for p in frame["path"]]
    frame.loc[frame["split"] == "unlabeled", "label"] = -1
    frame["source"] = "synthetic"
    index = root / "index.parquet"
    frame.astype({"label": "int64"}).to_parquet(index, index=False)
    return index


def weights_digest(h: Any, checkpoint: Path) -> None:
    model, _ = load_model(checkpoint)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())


def history_digest(h: Any, history: Sequence[dict[str, float]]) -> None:
    h.update(json.dumps(list(history), sort_keys=True).encode())


def labels_digest(h: Any, path: Path) -> None:
    frame = pd.read_parquet(path, columns=["image_id", "cluster", "distance"])
    frame = frame.sort_values("image_id", kind="stable")
    h.update("\n".join(frame["image_id"]).encode())
    h.update(frame["cluster"].to_numpy(np.int64).tobytes())
    h.update(frame["distance"].to_numpy(np.float32).tobytes())


def run(
    index: Path, out: Path, blocks: int, cluster: dict[str, Any], student: dict[str, Any],
    rounds: int,
) -> str:  # fmt: skip
    """Teacher -> pseudo labels -> student (`rounds` times); the sha256 of all of it."""
    h = hashlib.sha256()
    spec = ModelConfig(
        backbone="test_byobnet", weights="none", embedding_dim=16, image_size=32,
        trainable_blocks=blocks,
    )  # fmt: skip
    runtime = RuntimeConfig(
        device="cpu", feature_cache_dir=out / "cache", seed=0, cached_views=2, batch_size=32,
        num_workers=0,
    )  # fmt: skip
    optim = {"epochs": 2, "iterations_per_epoch": 3, "lr": 1e-2}
    teacher_cfg = TeacherConfig(batch_size=8, m_per_class=2, optim=OptimConfig(**optim))
    student_cfg = StudentConfig.model_validate(
        {
            "labeled_batch_size": 8,
            "unlabeled_batch_size": 8,
            "m_per_class": 2,
            "optim": optim,
            "basis": {"size": 8, "warmup_iterations": 2},
        }  # fmt: skip
        | student
        | {"basis": {"size": 8, "warmup_iterations": 2, **student.get("basis", {})}}
    )
    cluster_cfg = ClusterConfig.model_validate({"k": 6, "iterations": 5} | cluster)
    teacher = train_teacher(index, spec, teacher_cfg, runtime, out / "teacher")
    weights_digest(h, teacher.checkpoint_path)
    history_digest(h, teacher.history)
    checkpoint = teacher.checkpoint_path
    for r in range(rounds):
        step = out / f"round{r + 1}"
        embeddings = extract_embeddings(
            checkpoint, index, step / "embeddings.parquet", ["unlabeled"], runtime
        )
        labels = make_pseudo_labels(embeddings.path, step / "pseudo_labels.parquet", cluster_cfg)
        labels_digest(h, labels.path)
        shards = step / "embeddings.dataset"
        for shard in plan_shards(select_rows(index, ["unlabeled"]), 20):
            path = shards / part_name(shard.number)
            extract_embedding_shard(checkpoint, index, path, ["unlabeled"], shard, runtime)
        sharded = make_sharded_pseudo_labels(shards, step / "pseudo_labels.dataset", cluster_cfg)
        labels_digest(h, sharded.path)
        result = train_student(
            index, labels.path, checkpoint, spec, student_cfg, runtime, step / "student"
        )
        weights_digest(h, result.checkpoint_path)
        history_digest(h, result.history)
        checkpoint = result.checkpoint_path
    return h.hexdigest()


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the same float reductions on any machine's thread count
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        index = synthetic_index(work)
        runs = {f"trunk {b}": (b, {}, {}, 1) for b in TRUNK_MODES}
        for name, update in VARIANTS.items():
            runs[f"trunk 0 {name}"] = (
                0, update.get("cluster", {}), update.get("student", {}), update.get("rounds", 1)
            )  # fmt: skip
        digests = {}
        for name, (blocks, cluster, student, rounds) in runs.items():
            digests[name] = run(
                index, work / name.replace(" ", "-"), blocks, cluster, student, rounds
            )
            print(f"{name}: {digests[name]}", flush=True)
    return digests


if __name__ == "__main__":
    main()
