"""Running a stage on a work pool: the stage deployment exists, a worker is there to take it.

`run_deployment` alone waits forever for a flow run no worker picks up. Here the child
flow run is created without waiting, then watched: while it is still Scheduled and no
worker of the pool has been online (a recent heartbeat) for `pool_timeout` seconds, it is
cancelled and the stage fails with the command that starts such a worker.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, StateType, WorkerStatus, WorkPoolStatus
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled

STAGE_FLOW = "slade-stage"
POLL_SECONDS = 2.0
HEARTBEAT_MULTIPLE = 3  # a worker silent for 3 heartbeat intervals counts as gone
NOT_STARTED = (StateType.SCHEDULED, StateType.PENDING)


class PoolUnavailable(RuntimeError):
    """No worker of the work pool took the stage in time."""


def stage_deployment(pool: str) -> str:
    return f"{STAGE_FLOW}/{pool}"


def check_deployed(pool: str) -> None:
    """Fail before any stage when the routing target is not deployed."""
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(stage_deployment(pool))
        except ObjectNotFound:
            raise ValueError(
                f"training_pool={pool!r}: no deployment {stage_deployment(pool)!r}; deploy "
                f"prefect.yaml (`make deploy`) or leave training_pool empty to train in this "
                f"process"
            ) from None


def pool_ready(client: SyncPrefectClient, pool: str) -> bool:
    """The pool is not paused and one of its workers sent a heartbeat recently."""
    if client.read_work_pool(pool).status == WorkPoolStatus.PAUSED:
        return False
    now = datetime.now(UTC)
    return any(
        worker.status == WorkerStatus.ONLINE
        and worker.last_heartbeat_time is not None
        and now - worker.last_heartbeat_time
        < HEARTBEAT_MULTIPLE * timedelta(seconds=worker.heartbeat_interval_seconds or 30)
        for worker in client.read_workers_for_work_pool(pool)
    )


def _unavailable(client: SyncPrefectClient, pool: str, name: str, child: FlowRun, waited: float):
    if client.read_work_pool(pool).status == WorkPoolStatus.PAUSED:
        what_to_do = f"the pool is paused: `prefect work-pool resume {pool}`"
    else:
        what_to_do = (
            f"start one where the stage should run: `prefect worker start --pool {pool}` "
            f"(same SLADE_RUNS_DIR and MLFLOW_TRACKING_URI), or raise pool_timeout, or leave "
            f"training_pool empty to train in the flow's process"
        )
    return PoolUnavailable(
        f"{name}: no worker of work pool {pool!r} took flow run {child.id} within "
        f"{waited:g} s; {what_to_do}"
    )


def run_on_pool(
    pool: str, parameters: dict[str, Any], name: str, pool_timeout: float | None
) -> FlowRun:
    """Start `slade-stage/<pool>` as a child flow run and wait for its final state.

    pool_timeout: seconds a not-yet-started child may go without any worker of the pool
    online before it is cancelled and PoolUnavailable is raised; None waits forever.
    """
    child = run_deployment(
        stage_deployment(pool), parameters=parameters, flow_run_name=name, timeout=0
    )
    deadline = None if pool_timeout is None else time.monotonic() + pool_timeout
    with get_client(sync_client=True) as client:
        while True:
            child = client.read_flow_run(child.id)
            if child.state is not None and child.state.is_final():
                return child
            not_started = child.state is None or child.state.type in NOT_STARTED
            if deadline is not None and not_started:
                if pool_ready(client, pool):
                    deadline = time.monotonic() + pool_timeout
                elif time.monotonic() > deadline:
                    client.set_flow_run_state(
                        child.id, Cancelled(message=f"no worker of {pool!r}"), force=True
                    )
                    raise _unavailable(client, pool, name, child, pool_timeout)
            time.sleep(POLL_SECONDS)
