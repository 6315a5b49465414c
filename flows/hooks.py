"""Flow state hooks: a flow run that fails, crashes or is cancelled leaves nothing running.

A failed run's own code ends its MLflow runs; a crashed one (process killed, machine
gone) or a cancelled one cannot, so Prefect runs these hooks instead (for a deployment,
the worker runs the crashed and cancellation hooks after the flow process is gone).
They end the flow run's MLflow runs still RUNNING (FAILED, or KILLED when cancelled) and
cancel its stage flow runs on a work pool that have not finished.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled, Cancelling

from tasks.tracking import end_flow_run

FINAL = [StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]
NOT_STARTED = (StateType.SCHEDULED, StateType.PENDING)


def cancel_child_flow_runs(flow_run_id: Any, reason: str) -> None:
    """Cancel the unfinished flow runs started from this one (stages on a work pool)."""
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=FINAL)),
            )
        )
        for child in children:
            started = child.state is not None and child.state.type not in NOT_STARTED
            state = Cancelling(message=reason) if started else Cancelled(message=reason)
            client.set_flow_run_state(child.id, state, force=True)


def end_runs(status: str) -> Callable[..., None]:
    """A flow state hook that ends what the flow run left running with MLflow `status`."""

    def hook(flow, flow_run, state) -> None:
        reason = f"Prefect flow run {flow_run.id} ended {state.name}: {state.message or ''}"
        cancel_child_flow_runs(flow_run.id, reason)
        end_flow_run(str(flow_run.id), status, reason)

    hook.__name__ = f"end_runs_{status.lower()}"
    return hook


HOOKS = {
    "on_failure": [end_runs("FAILED")],
    "on_crashed": [end_runs("FAILED")],
    "on_cancellation": [end_runs("KILLED")],
}
