"""Where a sweep is recorded: its Optuna study and its MLflow run.

The study lives in SQLite beside the runs (`${SLADE_RUNS_DIR}/sweeps/optuna.db`), named by
the sweep's definition, so re-running the same sweep resumes it. The sweep's MLflow run
(`slade.kind` = sweep, tagged with the study) is found the same way; each trial's pipeline
run is its child (`mlflow.parentRunId`, `slade.sweep_trial`), so MLflow's compare view
and parallel coordinates work on the trials. Trials a killed sweep left running are ended
FAILED and run again.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import optuna

from slade_core.evaluate import percent
from slade_core.sweep import SweepSpec
from tasks.locations import runs_root
from tasks.provenance import code_version
from tasks.tracking import (
    END_REASON_TAG,
    end_flow_run,
    experiment_id,
    log_metrics,
    log_params,
    mlflow_client,
)

SWEEP_TAG = "slade.sweep_run"
TRIAL_TAG = "slade.sweep_trial"
BUDGET_TAG = "slade.sweep_budget"
HEARTBEAT_SECONDS = 30
SPLIT_TAG = "slade.sweep_split"  # "test" on the best trial's test run


def open_study(spec: SweepSpec) -> optuna.Study:
    """The sweep's study: created, or loaded when this sweep ran before (to resume it).

    Trials send a heartbeat; one silent for longer than the grace period (its sweep was
    killed) is marked failed and queued again with the same values (Optuna's retry)."""
    path = runs_root() / "sweeps" / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings(category=optuna.exceptions.ExperimentalWarning, action="ignore"):
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{path}",
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=3 * HEARTBEAT_SECONDS,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
        )
    return optuna.create_study(
        study_name=spec.study_name,
        storage=storage,
        sampler=spec.sampler_for_study(),
        direction="maximize",
        load_if_exists=True,
    )


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count toward the budget: completed or failed, not retried."""
    trials = study.get_trials(deepcopy=False)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback
    with warnings.catch_warnings(category=optuna.exceptions.ExperimentalWarning, action="ignore"):
        retried = {number for t in trials for number in retry.retry_history(t)}
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    return [t for t in trials if t.state in done and t.number not in retried]


def start_sweep_run(spec: SweepSpec, flow_run_id: str, git_commit: str) -> str:
    """The sweep's MLflow run: this study's earlier one when resuming, else a new one."""
    client = mlflow_client()
    exp = experiment_id(client)
    found = client.search_runs(
        [exp],
        filter_string=f"tags.`slade.kind` = 'sweep' and tags.`slade.study` = '{spec.study_name}'",
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        client.set_tag(run_id, "prefect.flow_run_id", flow_run_id)
        client.set_tag(run_id, BUDGET_TAG, str(spec.budget))
        client.update_run(run_id, status="RUNNING")
        _end_interrupted_trials(run_id)
        return run_id
    run = client.create_run(
        exp,
        run_name=f"sweep-{spec.study_name}",
        tags={
            "prefect.flow_run_id": flow_run_id,
            "slade.kind": "sweep",
            "slade.study": spec.study_name,
            "slade.preset": spec.preset,
            "mlflow.source.git.commit": git_commit,
            "slade.code_version": code_version(),
            BUDGET_TAG: str(spec.budget),  # a re-run may raise it: a tag, not a param
        },
    )
    definition = spec.model_dump(mode="json", exclude={"trials"})
    params = {f"sweep.{k}": v for k, v in definition.items() if k not in ("space", "overrides")}
    params |= {f"sweep.{k}": json.dumps(definition[k])[:6000] for k in ("space", "overrides")}
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def _end_interrupted_trials(sweep_run_id: str) -> None:
    """End the trial runs (and their stage runs) a killed sweep left RUNNING."""
    client = mlflow_client()
    exp = client.get_run(sweep_run_id).info.experiment_id
    running = client.search_runs(
        [exp],
        filter_string=f"tags.`{SWEEP_TAG}` = '{sweep_run_id}' and attributes.status = 'RUNNING'",
    )
    for run in running:
        flow_run_id = run.data.tags["prefect.flow_run_id"]
        end_flow_run(flow_run_id, "FAILED", "the sweep was stopped while this trial ran")


def trial_tags(sweep_run_id: str, number: int) -> dict[str, str]:
    """A trial's pipeline run: a child of the sweep's run."""
    return {"mlflow.parentRunId": sweep_run_id, SWEEP_TAG: sweep_run_id, TRIAL_TAG: str(number)}


def best_run_tags(sweep_run_id: str, number: int) -> dict[str, str]:
    """The best trial's run on the test split: tagged with its sweep, not its child (its
    test metrics do not compare with the trials' validation metrics)."""
    return {SWEEP_TAG: sweep_run_id, TRIAL_TAG: str(number), SPLIT_TAG: "test"}


def trial_run(sweep_run_id: str, number: int, split: str = "validation") -> Any | None:
    """The latest pipeline run of trial `number` on the validation split, or on "test"."""
    client = mlflow_client()
    exp = client.get_run(sweep_run_id).info.experiment_id
    runs = client.search_runs(
        [exp],
        filter_string=(
            f"tags.`{SWEEP_TAG}` = '{sweep_run_id}' and tags.`{TRIAL_TAG}` = '{number}'"
        ),
        order_by=["attributes.start_time DESC"],
    )
    found = [r for r in runs if r.data.tags.get(SPLIT_TAG, "validation") == split]
    return found[0] if found else None


def record_trial(sweep_run_id: str, number: int, value: float, best: float) -> None:
    """A completed trial: its run named for it, the sweep run's curves of each trial's value
    and the best so far (step = trial number)."""
    client = mlflow_client()
    client.set_tag(trial_run(sweep_run_id, number).info.run_id, "mlflow.runName", f"trial-{number}")
    log_metrics(client, sweep_run_id, {"trial_value": value, "best_value": best}, number)


def record_failure(sweep_run_id: str, number: int, message: str) -> None:
    """A failed trial's run says why (its pipeline marked it FAILED)."""
    run = trial_run(sweep_run_id, number)
    if run is not None:
        client = mlflow_client()
        client.set_tag(run.info.run_id, "mlflow.runName", f"trial-{number} (failed)")
        client.set_tag(run.info.run_id, END_REASON_TAG, message[:5000])


def trials_table(sweep_run_id: str, metric: str) -> list[dict[str, Any]]:
    """One row per trial (its latest run): number, searched fields, status, the metric and,
    when logged, the student's gain over the control (metrics in percent)."""
    client = mlflow_client()
    sweep = client.get_run(sweep_run_id)
    fields = list(json.loads(sweep.data.params.get("sweep.space", "{}")))
    runs = client.search_runs(
        [sweep.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{sweep_run_id}'",
        order_by=["attributes.start_time DESC"],
    )
    latest: dict[int, Any] = {}
    for run in runs:
        latest.setdefault(int(run.data.tags[TRIAL_TAG]), run)
    gain = "student_minus_control/" + metric.partition("/")[2]
    rows = []
    for number, run in sorted(latest.items()):
        row = {"trial": number, **{f: run.data.params.get(f) for f in fields}}
        row |= {"status": run.info.status, metric: _percent(run.data.metrics.get(metric))}
        if gain != metric and gain in run.data.metrics:
            row[gain] = _percent(run.data.metrics[gain])
        rows.append(row)
    return rows


def _percent(value: float | None) -> str | None:
    return None if value is None else percent(value)


def render_table(rows: list[dict[str, Any]]) -> str:
    """The trials as a Markdown table (the sweep's log, `scripts/sweep_report.py`)."""
    if not rows:
        return "(no trials)"
    header = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = [["" if row.get(h) is None else str(row[h]) for h in header] for row in rows]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)
