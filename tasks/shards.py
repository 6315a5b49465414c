"""Embedding shards: one after another in the stage's process, or as task runs on Dask.

Every shard is written once into a content-addressed shard store `${SLADE_RUNS_DIR}/_shards/`
named by what its embeddings depend on (model digest, the shard's rows, its image files), and
the stage links the files into its `embeddings.parquet/` dataset. So a retried stage redoes
only the shards that had not finished, and a new stage key with the same model and images
redoes none.

By default (shards.dask_address unset) the shards run in the stage's own task run, so a
local run records the same task runs as before sharding. With a Dask scheduler address each
shard is its own task run of the `slade-shards` flow on prefect-dask's DaskTaskRunner,
cached by the same digests and retried on its own (a lost worker's shard runs again
elsewhere).
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
from prefect.context import TaskRunContext
from prefect.runtime import task_run

from slade_core.config import RuntimeConfig, ShardConfig
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


@flow(name="slade-shards")
def embed_shards(
    checkpoint: str,
    index: str,
    splits: Sequence[str],
    shards: list[Shard],
    runtime: RuntimeConfig,
    digest: str,
    store: str,
    retries: int,
    resources: dict[str, float],
) -> list[dict[str, Any]]:
    """Submit every shard to the flow's task runner and wait for all of them."""
    embed = embed_shard.with_options(retries=retries)
    with _annotated(resources):
        futures = [
            embed.submit(checkpoint, index, splits, shard, runtime, digest, store)
            for shard in shards
        ]
    return [future.result() for future in futures]


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
    args = (str(checkpoint), str(index), list(splits))
    common = (runtime, model_digest(checkpoint), str(runs_root() / STORE))
    if cfg.dask_address is None:
        results = [embed_shard.fn(*args, shard, *common) for shard in shards]
    else:
        from prefect_dask import DaskTaskRunner  # the `dask` extra

        on_dask = embed_shards.with_options(task_runner=DaskTaskRunner(address=cfg.dask_address))
        results = on_dask(*args, shards, *common, cfg.retries, cfg.worker_resources)
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
