"""Clustering at scale: synthetic 512-d embeddings through the sharded unlabeled side.

    .venv/bin/python benchmarks/scale.py                       # 250k, 1M, 4M rows
    .venv/bin/python benchmarks/scale.py --rows 20000 80000 --rows-per-shard 10000  # smoke
    .venv/bin/python benchmarks/scale.py --images          # + extraction on 1 and 2 Dask workers

Per clustering method (`--methods`, both by default) and row count, in a fresh process (so
its peak RSS is its own): synthetic unit embeddings around `--k` directions are generated
shard by shard straight to a partitioned `embeddings.parquet/` dataset (no images), then
`make_sharded_pseudo_labels` fits the method's centres on a seeded sample and assigns every
part with them: k-means trains FAISS k-means on `--sample` rows; Ward merges
min(`--sample`, cluster.ward_max_points = 8,192) rows, which keep their group, and the
other rows go to the nearest group centre. It writes `pseudo_labels.parquet/`, read back
with pyarrow. `seconds` times all of it, `cluster_seconds` the clustering alone (fit,
assignment, write); `peak_rss_mb` is the process's maximum resident set. Prints one JSON
object with, per method, {"fit_rows", "rows", "seconds", "cluster_seconds", "peak_rss_mb",
"seconds_per_row_ratio" (largest / smallest row count)}.

`--images` adds the extraction side on real images: the shared birds' unlabeled rows
(`../shared/data`, the birds_offline preset's index) are embedded through the product path,
`tasks.shards.extract_sharded` with `shards.dask_address` set, so every shard is a Prefect
task run on prefect-dask's DaskTaskRunner (a temporary Prefect API), once on a
`distributed.LocalCluster` of 1 worker process and once of 2, with the machine's cores split
between the workers' torch threads. The model is the preset's network with the whole trunk
run from decoded images (trainable_blocks = -1, as a GPU extraction would). It adds
{"images": {"rows", "img_per_s": {"1": .., "2": ..}, "ratio": 2 workers / 1}}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slade_core.clustering import fit_sample_size, make_sharded_pseudo_labels
from slade_core.config import ClusterConfig
from slade_core.directions import unit_rows
from slade_core.embeddings import embeddings_schema
from slade_core.io import atomic_path
from slade_core.shards import part_name, read_dataset

DIM = 512
REPO = Path(__file__).resolve().parents[1]


def write_synthetic(dataset: Path, rows: int, rows_per_shard: int, k: int, seed: int) -> None:
    """Unit rows near k seeded directions, one part per shard, never all in memory."""
    centres = np.random.default_rng(seed).standard_normal((k, DIM)).astype(np.float32)
    schema = embeddings_schema(DIM, "synthetic")
    for number, start in enumerate(range(0, rows, rows_per_shard)):
        n = min(rows_per_shard, rows - start)
        rng = np.random.default_rng([seed, number])
        x = unit_rows(centres[rng.integers(0, k, n)] + rng.standard_normal((n, DIM), np.float32))
        table = pa.Table.from_arrays(
            [
                pa.array([f"u{i:09d}" for i in range(start, start + n)], pa.string()),
                pa.array(["unlabeled"] * n, pa.string()),
                pa.array(np.full(n, -1, np.int64), pa.int64()),
                pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM),
            ],
            schema=schema,
        )
        with atomic_path(dataset / part_name(number)) as tmp:
            pq.write_table(table, tmp)
        del x, table


def cluster_config(method: str, args: argparse.Namespace) -> ClusterConfig:
    return ClusterConfig(
        method=method, k=args.k, iterations=args.iterations, train_sample_size=args.sample
    )


def measure(method: str, rows: int, args: argparse.Namespace) -> dict[str, float]:
    """One method and row count end to end in this process."""
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        root = Path(work)
        started = time.perf_counter()
        write_synthetic(root / "embeddings.parquet", rows, args.rows_per_shard, args.k, args.seed)
        clustering = time.perf_counter()
        result = make_sharded_pseudo_labels(
            root / "embeddings.parquet",
            root / "pseudo_labels.parquet",
            cluster_config(method, args),
        )
        clustered = time.perf_counter()
        labels = read_dataset(result.path, columns=["image_id", "cluster"])
        assert labels.num_rows == rows, (labels.num_rows, rows)
        seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "cluster_seconds": round(clustered - clustering, 2),
        "peak_rss_mb": round(peak_mb, 1),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[250_000, 1_000_000, 4_000_000])
    parser.add_argument("--rows-per-shard", type=int, default=50_000)
    parser.add_argument(
        "--methods", nargs="+", choices=("kmeans", "ward"), default=["kmeans", "ward"]
    )
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--sample", type=int, default=25_600, help="rows the centres are fitted on")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (disk)")
    parser.add_argument("--images", action="store_true", help="+ extraction, 1 vs 2 workers")
    parser.add_argument("--image-rows-per-shard", type=int, default=256)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def in_fresh_process(method: str, rows: int, argv: list[str]) -> dict[str, float]:
    """`measure` of one method and row count in a child process (its peak RSS is its own)."""
    child = [*_without(argv, ("--rows", "--methods")), "--methods", method, "--rows", str(rows)]
    out = subprocess.run(
        [sys.executable, __file__, *child, "--one"], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.one:  # a child: one method and row count
        print(json.dumps(measure(args.methods[0], args.rows[0], args)))
        return {}
    images = measure_extraction(args) if args.images else None
    report: dict = {"rows_per_shard": args.rows_per_shard, "k": args.k, "methods": {}}
    for method in args.methods:
        figures = []
        for rows in args.rows:
            figures.append(in_fresh_process(method, rows, argv))
            print(json.dumps({"method": method, **figures[-1]}), file=sys.stderr)
        per_row = [f["seconds"] / f["rows"] for f in figures]
        cap = fit_sample_size(cluster_config(method, args))
        report["methods"][method] = {
            "fit_rows": [min(cap or rows, rows) for rows in args.rows],
            **{key: [f[key] for f in figures] for key in figures[0]},
            "seconds_per_row_ratio": round(per_row[-1] / per_row[0], 3),
        }
    if images is not None:
        report["images"] = images
    print(json.dumps(report))
    return report


def measure_extraction(args: argparse.Namespace) -> dict:
    """Unlabeled bird images per second through the Dask shard path, 1 and 2 workers."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from slade_core.checkpoints import save_checkpoint
    from slade_core.data.prepare import prepare_data
    from slade_core.data.preset import load_data_preset
    from slade_core.experiment import load_experiment
    from slade_core.models import create_model

    os.environ["SLADE_DATA_ROOT"] = str(args.data_root)  # read by the cub100/birds525 manifests
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        root = Path(work)
        prepared = prepare_data(load_data_preset("birds_offline"), root / "data", root / "dl")
        spec = load_experiment("birds_offline").model.model_copy(update={"trainable_blocks": -1})
        checkpoint = save_checkpoint(create_model(spec), root / "model.pt", {})
        figures = {}
        with prefect_test_harness(server_startup_timeout=120):
            os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()  # for the worker processes
            for workers in (1, 2):
                rows, seconds = _extract_on_dask(
                    workers, checkpoint, prepared.index_path, root, args
                )
                figures[str(workers)] = round(rows / seconds, 1)
                line = {"workers": workers, "img_per_s": figures[str(workers)], "seconds": seconds}
                print(json.dumps(line), file=sys.stderr)
    return {"rows": rows, "img_per_s": figures, "ratio": round(figures["2"] / figures["1"], 3)}


def _extract_on_dask(
    workers: int, checkpoint: Path, index: Path, root: Path, args: argparse.Namespace
) -> tuple[int, float]:
    """(rows, seconds) of `extract_sharded` on a fresh LocalCluster of `workers` processes,
    into a cold shard store, the cores split between the workers' torch threads."""
    import dask
    import distributed

    from slade_core.config import RuntimeConfig, ShardConfig
    from tasks.shards import extract_sharded

    os.environ["SLADE_RUNS_DIR"] = str(root / f"runs-{workers}")  # before the workers start
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    runtime = RuntimeConfig(device="cpu", num_workers=0, batch_size=64)
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.run(_set_torch_threads, threads)
        cfg = ShardConfig(
            rows_per_shard=args.image_rows_per_shard, dask_address=cluster.scheduler_address
        )
        started = time.perf_counter()
        done = extract_sharded(
            checkpoint, index, ["unlabeled"], root / f"emb-{workers}", cfg, runtime
        )
        return done["count"], round(time.perf_counter() - started, 1)


def _set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """argv minus these options and their values (each child gets one of each)."""
    out, skipping = [], False
    for arg in argv:
        if arg in options:
            skipping = True
        elif skipping and not arg.startswith("--"):
            continue
        else:
            skipping = False
            out.append(arg)
    return out


if __name__ == "__main__":
    main()
