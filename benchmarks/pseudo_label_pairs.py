"""Offline: how right are the pseudo labels of each `cluster.method`, as pairs?

Reads one seed's teacher from a finished `birds.py` run (its unlabeled embeddings and the
index) and trains nothing. For spherical k-means and Ward at several k (the library's
`cluster_rows`, so exactly what the student would get) it prints the share of same-label
pairs that are same-species pairs (precision) and the share of same-species pairs that got
one label (recall).

    .venv/bin/python benchmarks/pseudo_label_pairs.py .slade/bench-birds/full 0 \
        [--data benchmarks/presets/birds_scarce.yaml] [--validation]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from birds import hidden_species  # noqa: E402

from slade_core.clustering import cluster_rows  # noqa: E402
from slade_core.config import ClusterConfig  # noqa: E402
from slade_core.data.preset import load_data_preset  # noqa: E402
from slade_core.embeddings import read_embeddings  # noqa: E402

SETTINGS = [
    *({"method": "kmeans", "k": k, "seed": 0} for k in (200, 400, 800, 1200)),
    *({"method": "ward", "k": k} for k in (200, 400, 800, 1200)),
]


def pairs(counts: np.ndarray) -> int:
    """Unordered pairs within groups of these sizes."""
    counts = counts.astype(np.int64)
    return int((counts * (counts - 1) // 2).sum())


def pair_scores(labels: np.ndarray, species: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of same-label pairs against same-species pairs."""
    _, sp = np.unique(species, return_inverse=True)
    joint = np.unique(labels * (sp.max() + 1) + sp, return_counts=True)[1]
    hits = pairs(joint)
    return hits / max(1, pairs(np.bincount(labels))), hits / max(1, pairs(np.bincount(sp)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a birds.py protocol directory, e.g. <work>/full")
    p.add_argument("seed", type=int)
    p.add_argument("--data", default="birds_offline", help="the preset the run used")
    p.add_argument("--validation", action="store_true", help="the run used --validation")
    args = p.parse_args()

    index_path = args.run / ("validation" if args.validation else "data") / "index.parquet"
    species_of = hidden_species(index_path, load_data_preset(args.data).filter)
    embeddings = args.run / f"seed{args.seed}" / "teacher" / "unlabeled.parquet"
    unlabeled = read_embeddings(embeddings, splits=["unlabeled"])
    species = np.array([species_of[i] for i in unlabeled.image_ids])
    print(f"{len(species)} unlabeled images of {len(np.unique(species))} hidden species")
    print("| pseudo labels | pair precision | pair recall |")
    print("|---|---:|---:|")
    for setting in SETTINGS:
        cfg = ClusterConfig(**setting)
        labels, _ = cluster_rows(unlabeled.embeddings, cfg)
        precision, recall = pair_scores(labels, species)
        name = {"kmeans": f"k-means k={cfg.k}", "ward": f"Ward k={cfg.k}"}[cfg.method]
        print(f"| {name} | {precision:.3f} | {recall:.3f} |")


if __name__ == "__main__":
    main()
