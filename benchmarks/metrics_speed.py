"""Time slade_core.metrics.retrieval_metrics against PML's AccuracyCalculator on the same data.

Why: the metrics must equal AccuracyCalculator(k="max_bin_count") and be no slower at
evaluation scale (default 60,000 x 512, 1,000 classes, some lone queries).

    .venv/bin/python benchmarks/metrics_speed.py --n 60000 --dim 512 --classes 1000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from slade_core.directions import unit_rows
from slade_core.metrics import retrieval_metrics

PML_NAMES = {
    "map_at_r": "mean_average_precision_at_r",
    "r_precision": "r_precision",
    "precision_at_1": "precision_at_1",
}


def make_data(n: int, dim: int, classes: int, lone: int, noise: float, seed: int):
    """Clustered unit vectors (class centre + noise) so the metrics are far from 0 and 1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    labels[rng.choice(n, lone, replace=False)] = classes + np.arange(lone)  # one-off labels
    centres = rng.standard_normal((classes + lone, dim)).astype(np.float32)
    x = centres[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return unit_rows(x), labels


def timed(fn, *args):
    """(result, wall seconds, process CPU seconds): CPU time is robust to a busy machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--lone", type=int, default=100, help="queries with a unique label")
    parser.add_argument("--noise", type=float, default=3.0, help="noise scale around centres")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; best time kept")
    parser.add_argument(
        "--references", type=int, default=0, help="split off this many rows as references"
    )
    args = parser.parse_args()

    x, labels = make_data(args.n, args.dim, args.classes, args.lone, args.noise, args.seed)
    if args.references:
        query, q_labels = x[args.references :], labels[args.references :]
        ref, r_labels = x[: args.references], labels[: args.references]
    else:
        query, q_labels, ref, r_labels = x, labels, None, None
    print(
        f"queries {len(query)} x {args.dim}, references "
        f"{'self' if ref is None else len(ref)}, classes {args.classes}, lone labels {args.lone}, "
        f"torch threads {torch.get_num_threads()}"
    )

    calc = AccuracyCalculator(
        include=tuple(PML_NAMES.values()), k="max_bin_count", device=torch.device("cpu")
    )
    runs = {"slade_core.metrics": [], "PML AccuracyCalc.": []}
    for _ in range(args.repeat):  # interleaved, so background load hits both alike
        ours, wall, cpu = timed(retrieval_metrics, query, q_labels, ref, r_labels)
        runs["slade_core.metrics"].append((wall, cpu))
        pml, wall, cpu = timed(calc.get_accuracy, query, q_labels, ref, r_labels)
        runs["PML AccuracyCalc."].append((wall, cpu))
    best = {name: (min(w for w, _ in r), min(c for _, c in r)) for name, r in runs.items()}
    for name, (wall, cpu) in best.items():
        print(f"{name:20s} wall {wall:8.2f} s   process cpu {cpu:8.2f} s   (best of {args.repeat})")
    (ours_wall, ours_cpu), (pml_wall, pml_cpu) = best.values()
    print(
        f"ratio PML / ours     wall {pml_wall / ours_wall:6.2f}x   cpu {pml_cpu / ours_cpu:6.2f}x"
    )
    for name, pml_name in PML_NAMES.items():
        print(
            f"{name:15s} ours {ours[name]:.9f}  pml {pml[pml_name]:.9f}  "
            f"|diff| {abs(ours[name] - pml[pml_name]):.3e}"
        )
    print("recall: " + "  ".join(f"{k} {v:.6f}" for k, v in ours.items() if k.startswith("recall")))


if __name__ == "__main__":
    main()
