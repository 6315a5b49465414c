"""Shard work (embedding, pseudo-label assignment): in the stage's process, or on Dask.

Every shard is written once into a content-addressed shard store `${SLADE_RUNS_DIR}/_shards/`
named by what its embeddings depend on (model digest, the shard's rows, its image files), and
the stage links the files into its `embeddings.parquet/` dataset. So a retried stage redoes
only the shards that had not finished, and a new stage key with the same model and images
redoes none.

By default (shards.dask_address unset) the shards run in the stage's own task run, so a
local run records the same task runs as before sharding. With a Dask scheduler address each
shard is its own task run of a `slade-shards` flow run on prefect-dask's DaskTaskRunner,
retried on its own (a lost worker's shard runs again elsewhere); embedding shards are
cached by the same digests and claim `shards.worker_resources`, assignment shards (the
centroids broadcast as a file) claim none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.runtime import task_run

from slade_core.clustering import PartLabels, PartMapper, assign_part
from slade_core.config import ClusterConfig, RuntimeConfig, ShardConfig
from slade_core.embeddings import extract_embedding_shard, model_digest
from slade_core.io import stable_hash, write_json
from slade_core.shards import Shard, plan_shards, select_rows
from tasks.faults import maybe_hang
from tasks.locations import runs_root

STORE = "_shards"


def _shard_file(store: str, digest: str, shard: Shard) -> Path:
    return Path(store) / f"{digest}-{shard.rows_digest}-{shard.files_digest}.parquet"


def _shard_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    shard_file = _shard_file(parameters["store"], parameters["digest"], parameters["shard"])
    return f"embed_shard-{shard_file.stem}-{stable_hash(parameters['store'], length=8)}"


@task(
    name="embed_shard",
    task_run_name="shard-{shard.number}",
    cache_key_fn=_shard_cache_key,
    persist_result=True,
)
def embed_shard(
    checkpoint: str,
    index: str,
    splits: Sequence[str],
    shard: Shard,
    runtime: RuntimeConfig,
    digest: str,
    store: str,
) -> dict[str, Any]:
    """Embed one shard into the store (skipped when its file is there already)."""
    path = _shard_file(store, digest, shard)
    if not path.exists():
        maybe_hang("embed_shard")
        extract_embedding_shard(checkpoint, index, path, splits, shard, runtime)
    return {
        "number": shard.number,
        "rows": len(shard),
        "path": str(path),
        "task_run_id": str(task_run.id),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


@task(name="assign_shard", task_run_name="assign-{number}", cache_policy=NO_CACHE)
def assign_shard(
    number: int,
    part: str,
    centroids: str,
    out_file: str,
    cfg: ClusterConfig,
    split: str,
    kept: tuple[list[int], list[int]] = ([], []),
) -> PartLabels:
    """Pseudo labels of embeddings part `number` (`slade_core.clustering.assign_part`)."""
    return assign_part(part, centroids, out_file, cfg, split, kept)


SHARD_TASKS = {shard_task.name: shard_task for shard_task in (embed_shard, assign_shard)}


@flow(name="slade-shards", flow_run_name="{task_name}")
def run_shards(
    task_name: str,
    calls: list[dict[str, Any]],
    retries: int,
    resources: dict[str, float],
) -> list[Any]:
    """Submit one run of the shard task per call to the flow's task runner; wait for all."""
    shard_task = SHARD_TASKS[task_name].with_options(retries=retries)
    with _annotated(resources):
        futures = [shard_task.submit(**call) for call in calls]
    return [future.result() for future in futures]


def map_shards(
    shard_task, calls: list[dict[str, Any]], cfg: ShardConfig, resources: dict[str, float]
) -> list[Any]:
    """`shard_task` once per call: in this process (no Dask address), else as task runs on
    the Dask cluster, each claiming `resources` and retried alone."""
    if cfg.dask_address is None:
        return [shard_task.fn(**call) for call in calls]
    from prefect_dask import DaskTaskRunner  # the `dask` extra

    on_dask = run_shards.with_options(task_runner=DaskTaskRunner(address=cfg.dask_address))
    return on_dask(shard_task.name, calls, cfg.retries, resources)


def assign_on(cfg: ShardConfig) -> PartMapper:
    """The clustering stage's part mapper: assignment calls as `assign_shard` runs (no
    resources claimed: assignment is FAISS on the CPU, wherever a worker has room)."""

    def map_parts(calls: list[dict[str, Any]]) -> list[PartLabels]:
        numbered = [{"number": number, **call} for number, call in enumerate(calls)]
        return map_shards(assign_shard, numbered, cfg, resources={})

    return map_parts


def extract_sharded(
    checkpoint: Path,
    index: Path,
    splits: Sequence[str],
    dataset: Path,
    cfg: ShardConfig,
    runtime: RuntimeConfig,
) -> dict[str, float]:
    """Embed the `splits` rows shard by shard into the dataset directory `dataset`.

    Writes `shards.json` next to it (shard, rows, task run, worker); returns summary metrics.
    """
    shards = plan_shards(select_rows(index, splits), cfg.rows_per_shard)
    common = {
        "checkpoint": str(checkpoint),
        "index": str(index),
        "splits": list(splits),
        "runtime": runtime,
        "digest": model_digest(checkpoint),
        "store": str(runs_root() / STORE),
    }
    calls = [{**common, "shard": shard} for shard in shards]
    results = map_shards(embed_shard, calls, cfg, cfg.worker_resources)
    dataset.mkdir(parents=True, exist_ok=True)
    for shard, result in zip(shards, results, strict=True):
        _link(Path(result["path"]), dataset / shard.part_name)
    write_json(dataset.parent / "shards.json", results)
    schema = pq.read_schema(dataset / shards[0].part_name)
    return {
        "count": sum(r["rows"] for r in results),
        "dim": int(schema.metadata[b"slade.dim"]),
        "shards": len(shards),
    }


def _link(source: Path, target: Path) -> None:
    """Put `source` at `target` atomically: a hard link, or a copy across filesystems."""
    if not source.exists():
        raise FileNotFoundError(
            f"shard file {source} is gone but its task run is cached; "
            f"delete the {STORE} store's Prefect cache or use a fresh SLADE_RUNS_DIR"
        )
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


@contextlib.contextmanager
def _annotated(resources: dict[str, float]):
    """Dask resource annotations (e.g. {"GPU": 1}) on the submitted shards, if any."""
    if not resources:
        yield
        return
    import dask  # the `dask` extra

    with dask.annotate(resources=resources):
        yield
