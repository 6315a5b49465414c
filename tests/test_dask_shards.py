"""The tiny pipeline through prefect-dask on a real two-process distributed.LocalCluster.

No mocks: the shards of extract_embeddings are task runs on the cluster's worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

ROWS_PER_SHARD = 4  # the tiny preset's unlabeled rows -> several shards


@pytest.fixture
def cluster_env(prefect_server, tmp_path, monkeypatch):
    """Stores for one flow run and a 2-worker LocalCluster whose processes can reach them
    (the workers are new processes: they get the environment as it is when they start)."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("SLADE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SLADE_DOWNLOADS_DIR", str(tmp_path / "downloads"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "slade-dask-test")
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    # extraction starts DataLoader worker processes: daemonic Dask workers may not have any
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
    ):
        yield {"cluster": cluster, "runs": tmp_path / "runs"}


@pytest.fixture
def hang_first_shard(monkeypatch):
    """SLADE_HANG_ONCE=embed_shard for the cluster's workers (set before they start)."""
    from tasks.faults import HANG_ENV

    monkeypatch.setenv(HANG_ENV, "embed_shard")


def _run(tiny_preset, cluster):
    from flows.pipeline import slade

    preset, overrides = tiny_preset
    shards = {"rows_per_shard": ROWS_PER_SHARD, "dask_address": cluster.scheduler_address}
    return slade(preset=preset, overrides={**overrides, "shards": shards}, return_state=True)


def _task_runs(prefix: str, since: datetime | None = None) -> list:
    """Task runs whose name starts with `prefix` (`shard-3`, `assign-0`), started `since`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=prefix))
        )
    return [
        run
        for run in runs
        if run.name.startswith(prefix) and (since is None or run.start_time >= since)
    ]


def _check_dataset(runs: Path) -> list[dict]:
    """The embeddings dataset has exactly one part per shard and every unlabeled row once (the
    clustering labels only those); the pseudo labels cover the unlabeled rows."""
    (stage,) = (runs / "extract_embeddings").glob("*/stage.json")
    dataset = stage.parent / "embeddings.parquet"
    (prepared,) = (runs / "prepare_data").glob("*/index.parquet")
    index = pd.read_parquet(prepared)
    embedded = index.loc[index["split"] == "unlabeled", "image_id"].tolist()
    n_shards = -(-len(embedded) // ROWS_PER_SHARD)
    assert n_shards >= 4
    names = sorted(p.name for p in dataset.iterdir())
    assert names == [f"part-{i:05d}.parquet" for i in range(n_shards)]
    ids = pd.read_parquet(dataset, columns=["image_id"])["image_id"].tolist()
    assert ids == embedded
    (labels,) = (runs / "cluster").glob("*/pseudo_labels.parquet")
    unlabeled = index.loc[index["split"] == "unlabeled", "image_id"].tolist()
    assert pd.read_parquet(labels, columns=["image_id"])["image_id"].tolist() == unlabeled
    return json.loads((stage.parent / "shards.json").read_text())


def test_shards_run_as_task_runs_on_both_workers(cluster_env, tiny_preset):
    started = datetime.now(UTC)
    state = _run(tiny_preset, cluster_env["cluster"])
    assert state.is_completed(), state.message
    records = _check_dataset(cluster_env["runs"])
    task_runs = {str(run.id): run for run in _task_runs("shard-")}
    for record in records:  # each shard: its own completed task run, on some worker
        run = task_runs[record["task_run_id"]]
        assert run.name == f"shard-{record['number']}" and run.state.is_completed()
        assert run.state.result() == record
    workers = {record["worker"] for record in records}
    scheduler_pids = distributed.Client(cluster_env["cluster"]).run(os.getpid)
    assert len(workers) == 2
    assert {int(w.rsplit(":", 1)[1]) for w in workers} == set(scheduler_pids.values())
    # the pseudo labels: one completed assignment task run per part, on the cluster too
    assigned = _task_runs("assign-", since=started)
    assert sorted(run.name for run in assigned) == sorted(f"assign-{r['number']}" for r in records)
    assert all(run.state.is_completed() for run in assigned)


def test_a_killed_worker_shard_runs_again_and_no_part_is_lost_or_doubled(
    hang_first_shard, cluster_env, tiny_preset
):
    import threading

    runs = cluster_env["runs"]
    marker = runs / ".hang-embed_shard"
    pids = set(distributed.Client(cluster_env["cluster"]).run(os.getpid).values())

    killed = []

    def kill_the_hanging_worker():
        deadline = time.monotonic() + 300
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = int(marker.read_text())
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_hanging_worker, daemon=True)
    killer.start()
    state = _run(tiny_preset, cluster_env["cluster"])
    killer.join(timeout=5)
    assert state.is_completed(), state.message
    assert killed and killed[0] in pids  # a worker process died mid-shard
    records = _check_dataset(runs)
    assert sorted(r["number"] for r in records) == list(range(len(records)))
    assert killed[0] not in {int(r["worker"].rsplit(":", 1)[1]) for r in records}


def test_shards_claiming_a_gpu_run_only_on_the_worker_that_declares_one(
    prefect_server, tmp_path, monkeypatch, tiny_preset
):
    """shards.worker_resources {"GPU": 1}: a cluster of one plain worker and one started with
    resources GPU=1 (real processes, distributed's SpecCluster) runs every embedding shard on
    the second; the assignment shards claim nothing and may run on either."""
    from distributed import Nanny, Scheduler, SpecCluster
    from prefect.settings import PREFECT_API_URL

    from flows.pipeline import slade

    for name, value in {
        "SLADE_RUNS_DIR": tmp_path / "runs",
        "SLADE_DOWNLOADS_DIR": tmp_path / "downloads",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_EXPERIMENT_NAME": "slade-dask-gpu-test",
        "PREFECT_API_URL": PREFECT_API_URL.value(),
    }.items():
        monkeypatch.setenv(name, str(value))
    worker = {"cls": Nanny, "options": {"nthreads": 1}}
    gpu_worker = {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}}
    with (
        dask.config.set({"distributed.worker.daemon": False}),
        SpecCluster(
            scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
            workers={"cpu": worker, "gpu": gpu_worker},
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        client.wait_for_workers(2)
        pids = client.run(os.getpid)
        resources = {a: w["resources"] for a, w in client.scheduler_info()["workers"].items()}
        (gpu_address,) = [a for a, r in resources.items() if r.get("GPU")]
        preset, overrides = tiny_preset
        shards = {
            "rows_per_shard": ROWS_PER_SHARD,
            "dask_address": cluster.scheduler_address,
            "worker_resources": {"GPU": 1},
        }
        state = slade(preset=preset, overrides={**overrides, "shards": shards}, return_state=True)
    assert state.is_completed(), state.message
    records = _check_dataset(tmp_path / "runs")
    assert len(records) >= 4
    assert {int(r["worker"].rsplit(":", 1)[1]) for r in records} == {pids[gpu_address]}
