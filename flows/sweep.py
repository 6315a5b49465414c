"""The sweep flow, deployed as `slade/sweep`: tune config fields on held-out training
classes, then run the best trial once on the test split and register it.

The flow is named `slade` like the pipeline, so both deployments sit under one flow in the
Prefect UI (`slade/full-pipeline`, `slade/sweep`); Prefect keys deployments by flow name
and deployment name, not by function. Each trial is the `slade` pipeline as a subflow on
the validation split, without publish or registration; its stages are cached by inputs
and config like any run's, so a student-only sweep trains the teacher once. Optuna runs the
trials (`study.optimize`: grid, or seeded TPE) and keeps the study beside the runs, so
running the same sweep again resumes it. A failed trial is recorded as failed and the
sweep goes on. The search space is validated against the config loader before any trial.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

import optuna
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from flows.hooks import HOOKS
from flows.pipeline import slade
from flows.pools import check_deployed
from slade_core.sweep import SweepError, SweepSpec, parse_sweep
from tasks.provenance import git_commit
from tasks.sweep_records import (
    SWEEP_TAG,
    best_run_tags,
    finished_trials,
    open_study,
    record_failure,
    record_trial,
    render_table,
    start_sweep_run,
    trial_run,
    trial_tags,
    trials_table,
)
from tasks.tracking import finish_run, log_metrics, mlflow_client


@flow(name="slade", flow_run_name="sweep-{preset}", **HOOKS)
def sweep(
    space: dict[str, Any],
    preset: str = "quickstart",
    sampler: str = "grid",
    trials: int | None = None,
    seed: int = 0,
    metric: str = "student/map_at_r",
    validation_classes: int = 15,
    overrides: dict[str, Any] | None = None,
    training_pool: str | None = None,
) -> dict[str, Any]:
    """Search `space` on `preset`'s last `validation_classes` training classes, maximising
    `metric`; run the best trial on the test split and register its student.

    space: config field -> list of values, or {low, high, log, step} (sampler "tpe").
    sampler: "grid" (every combination) or "tpe" (Optuna's TPE, seeded by `seed`).
    trials: the budget (required for tpe; grid: its size by default).
    overrides: config fields every trial shares (as the pipeline's `overrides`).
    training_pool: as the pipeline's: train on this work pool's workers.
    """
    spec = parse_sweep(
        preset=preset,
        overrides=overrides or {},
        space=space,
        sampler=sampler,
        trials=trials,
        seed=seed,
        metric=metric,
        validation_classes=validation_classes,
    )
    if training_pool is not None:
        check_deployed(training_pool)
    study = open_study(spec)
    sweep_run = start_sweep_run(spec, str(flow_run.get_id()), git_commit())
    status = "FAILED"
    try:
        done, described = _progress(spec, study)  # a resumed sweep starts where it was
        progress = create_progress_artifact(done, key="slade-sweep-progress", description=described)
        remaining = spec.budget - len(finished_trials(study))
        if remaining > 0:
            study.optimize(
                _objective(spec, sweep_run, training_pool),
                n_trials=remaining,
                catch=(TrialFailed,),
                callbacks=[_progress_reporter(spec, sweep_run, progress)],
            )
        test = _run_best_on_test(spec, study, sweep_run, training_pool)
        status = "FINISHED"
    finally:
        finish_run(sweep_run, status)
    table = trials_table(sweep_run, spec.metric)
    get_run_logger().info("sweep %s:\n%s", spec.study_name, render_table(table))
    return {"mlflow_run_id": sweep_run, "study": spec.study_name, "trials": table, **test}


class TrialFailed(RuntimeError):
    """A trial's pipeline run did not complete: recorded as failed, the sweep goes on."""


def _objective(
    spec: SweepSpec, sweep_run: str, training_pool: str | None
) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        """One pipeline run on the validation split, as a subflow; its metric."""
        state = slade.with_options(flow_run_name=f"trial-{trial.number}")(
            preset=spec.preset,
            overrides=spec.overrides_for(spec.suggest(trial), validation=True),
            training_pool=training_pool,
            run_tags=trial_tags(sweep_run, trial.number),
            publish=False,
            return_state=True,
        )
        if not state.is_completed():
            record_failure(sweep_run, trial.number, f"{state.name}: {state.message or ''}")
            raise TrialFailed(f"trial {trial.number} ended {state.name}: {state.message}")
        metrics = trial_run(sweep_run, trial.number).data.metrics
        if spec.metric not in metrics:
            raise SweepError(
                f"metric {spec.metric!r} is not logged by the pipeline run; it logs "
                f"{sorted(metrics)}"
            )
        return metrics[spec.metric]

    return objective


def _progress(spec: SweepSpec, study: optuna.Study) -> tuple[float, str]:
    """Percent of the budget done, and what the Prefect UI shows beside it: trials done
    out of the budget and the best so far."""
    done = len(finished_trials(study))
    description = f"{done}/{spec.budget} trials"
    if study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        best = study.best_trial
        description += f"; best {spec.metric} = {best.value:.4f} (trial {best.number}: "
        description += ", ".join(f"{k}={v}" for k, v in best.params.items()) + ")"
    return 100.0 * done / spec.budget, description


def _progress_reporter(
    spec: SweepSpec, sweep_run: str, progress: UUID
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """After each trial: the progress artifact, the trials table, the sweep run's
        curves."""
        if trial.state == optuna.trial.TrialState.COMPLETE:
            record_trial(sweep_run, trial.number, trial.value, study.best_value)
        update_progress_artifact(progress, *_progress(spec, study))
        create_table_artifact(
            trials_table(sweep_run, spec.metric),
            key="slade-sweep-trials",
            description=f"Trials of sweep {spec.study_name} ({spec.metric}, validation classes)",
        )

    return report


def _run_best_on_test(
    spec: SweepSpec, study: optuna.Study, sweep_run: str, training_pool: str | None
) -> dict[str, Any]:
    """The best trial's config on the test split, registered like any pipeline run."""
    if not study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        raise SweepError(f"no trial of sweep {spec.study_name} completed: see the failed runs")
    best = study.best_trial
    client = mlflow_client()
    done = trial_run(sweep_run, best.number, split="test")
    if done is not None and done.info.status == "FINISHED":  # a resumed, finished sweep
        run_id = done.info.run_id
    else:
        state = slade.with_options(flow_run_name=f"trial-{best.number}-test")(
            preset=spec.preset,
            overrides=spec.overrides_for(best.params, validation=False),
            training_pool=training_pool,
            run_tags=best_run_tags(sweep_run, best.number),
            return_state=True,
        )
        result = state.result()  # raises when the test run failed
        run_id = result["mlflow_run_id"]
    # tag the registered version every time, so a sweep resumed after its test run finished
    # (but before this tag was set) still leaves it on the version
    for version in client.search_model_versions(f"tags.`slade.pipeline_run` = '{run_id}'"):
        client.set_model_version_tag(version.name, version.version, SWEEP_TAG, sweep_run)
    test_metrics = client.get_run(run_id).data.metrics
    log_metrics(client, sweep_run, {f"test/{k}": v for k, v in test_metrics.items()})
    client.set_tag(sweep_run, "slade.best_trial", str(best.number))
    client.set_tag(sweep_run, "slade.test_run", run_id)
    get_run_logger().info(
        "best trial %d (%s): validation %s = %.4f, test %s = %s",
        best.number,
        best.params,
        spec.metric,
        best.value,
        spec.metric,
        test_metrics.get(spec.metric),
    )
    return {"best_trial": best.number, "best_params": best.params, "test_run_id": run_id}
