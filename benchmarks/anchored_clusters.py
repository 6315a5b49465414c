"""Offline: would anchoring k-means at the labeled classes make the pseudo labels more precise?

Reads one seed's teacher from a finished `birds.py` run (its unlabeled embeddings and the
index) and trains nothing. Prints the pair precision and recall (same-cluster pairs of the
unlabeled set against the hidden species) of
- plain spherical k-means (the library's `spherical_kmeans`, k clusters), and
- seeded k-means: the C labeled class means held fixed as centroids plus k - C free ones,
  with and without a margin (an image goes to its best anchor only when that beats its best
  free centroid by the margin).

    .venv/bin/python benchmarks/anchored_clusters.py .slade/bench-birds/full 0 400 \
        --data benchmarks/presets/birds_scarce.yaml --cache-dir .slade/bench-cache
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from birds import hidden_species  # noqa: E402
from pseudo_label_pairs import pair_scores  # noqa: E402

from slade_core.clustering import spherical_kmeans  # noqa: E402
from slade_core.config import RuntimeConfig  # noqa: E402
from slade_core.data.preset import load_data_preset  # noqa: E402
from slade_core.embeddings import extract_embeddings, read_embeddings  # noqa: E402


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def seeded_kmeans(x: np.ndarray, anchors: np.ndarray, free: int, seed: int, iterations: int = 25):
    """Similarities [N, C + free] to the fixed anchors and the trained free centroids."""
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(len(x), free, replace=False)].copy()
    for _ in range(iterations):
        best = (x @ np.concatenate([anchors, centroids]).T).argmax(1) - len(anchors)
        for j in range(free):
            members = x[best == j]
            if len(members):
                centroids[j] = unit(members.mean(0))
    return x @ np.concatenate([anchors, centroids]).T


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a birds.py protocol directory, e.g. <work>/full")
    p.add_argument("seed", type=int)
    p.add_argument("k", type=int)
    p.add_argument("--data", default="birds_offline", help="the preset the run used")
    p.add_argument("--cache-dir", type=Path, help="the run's --cache-dir (trunk features)")
    args = p.parse_args()

    index_path = args.run / "data" / "index.parquet"
    teacher = args.run / f"seed{args.seed}" / "teacher"
    species_of = hidden_species(index_path, load_data_preset(args.data).filter)
    unlabeled = read_embeddings(teacher / "unlabeled.parquet")
    train_path = teacher / "train-embeddings.parquet"
    if not train_path.exists():
        runtime = RuntimeConfig(device="cpu", num_workers=0, feature_cache_dir=args.cache_dir)
        extract_embeddings(teacher / "teacher.pt", index_path, train_path, ["train"], runtime)
    train = read_embeddings(train_path)

    x = unit(unlabeled.embeddings)
    species = np.array([species_of[i] for i in unlabeled.image_ids])
    index = pd.read_parquet(index_path)
    class_of = index.set_index("image_id")["class_name"]
    truth = np.array([class_of[i] for i in unlabeled.image_ids])
    train_rows = index[index.split == "train"]
    print(f"unlabeled {len(x)}, of a labeled class {np.isin(truth, train_rows.class_name).sum()}")

    plain = spherical_kmeans(x, args.k, iterations=25, seed=args.seed).assignments
    precision, recall = pair_scores(plain, species)
    print(f"plain k-means: pair precision {precision:.3f} recall {recall:.3f}")

    classes = np.unique(train.labels)
    anchors = np.stack([unit(unit(train.embeddings[train.labels == c]).mean(0)) for c in classes])
    names = train_rows.drop_duplicates("label").set_index("label").loc[classes, "class_name"]
    names = names.to_numpy()
    sims = seeded_kmeans(x, anchors.astype(np.float32), args.k - len(classes), args.seed)
    n = len(classes)
    for margin in (None, 0.02, 0.05, 0.1):
        if margin is None:
            assign = sims.argmax(1)
        else:
            wins = sims[:, :n].max(1) - sims[:, n:].max(1) >= margin
            assign = np.where(wins, sims[:, :n].argmax(1), n + sims[:, n:].argmax(1))
        anchored = assign < n
        right = anchored & (names[np.minimum(assign, n - 1)] == truth)
        precision, recall = pair_scores(assign, species)
        print(
            f"anchored, margin {margin}: pair precision {precision:.3f} recall {recall:.3f}; "
            f"{anchored.sum()} on an anchor, {right.sum() / max(1, anchored.sum()):.2f} of them "
            f"their own class"
        )


if __name__ == "__main__":
    main()
