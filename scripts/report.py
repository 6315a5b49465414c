"""Print a pipeline run's metrics, UI addresses and where its wall time went.

    python scripts/report.py FLOW_RUN_ID [--submitted UNIX_SECONDS]

Compute = time inside slade_core (the stages' `compute_seconds`); the rest of the flow
run's wall time is orchestration overhead (Prefect task/state handling, MLflow runs and
artifact uploads, Prefect artifacts). `--submitted` adds the time before the flow started
(worker pick-up and process start).
"""

from __future__ import annotations

import argparse
import os
import time

from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from slade_core.evaluate import GAIN, percent, unlabeled_verdict

PIPELINE = "tags.`slade.kind` = 'pipeline'"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flow_run_id")
    parser.add_argument("--submitted", type=float, help="unix time the run was requested")
    args = parser.parse_args()

    with get_client(sync_client=True) as prefect:
        run = prefect.read_flow_run(args.flow_run_id)
    client = MlflowClient()
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`prefect.flow_run_id` = '{args.flow_run_id}' and {PIPELINE}",
        max_results=1,
    )
    print(f"\nflow run {run.name} ({args.flow_run_id}): {run.state.name if run.state else '?'}")
    if parents:
        parent = parents[0]
        exp = parent.info.experiment_id
        children = client.search_runs(
            [exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        _metrics_table(parent.data.metrics)
        compute = sum(c.data.metrics.get("compute_seconds", 0.0) for c in children)
        _timing(run, compute, args.submitted)
        _registered(client, parent.info.run_id)
        mlflow_url = f"{os.environ['MLFLOW_TRACKING_URI']}/#/experiments/{exp}/runs/"
        print(f"MLflow run:  {mlflow_url}{parent.info.run_id}")
    print(f"Prefect run: {os.environ.get('PREFECT_UI_URL', '')}/runs/flow-run/{run.id}")
    print(f"Prefect UI:  {os.environ.get('PREFECT_UI_URL', '')}")
    print(f"MLflow UI:   {os.environ['MLFLOW_TRACKING_URI']}")


def _metrics_table(metrics: dict[str, float]) -> None:
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        model, _, metric = key.partition("/")
        if metric and model != GAIN:
            rows.setdefault(model, {})[metric] = value
    if not rows:
        print("(no metrics)")
        return
    names = sorted({m for r in rows.values() for m in r})
    print("\nretrieval metrics in percent")
    print(" | ".join(["model".ljust(10), *(n.ljust(14) for n in names)]))
    print("-" * (13 + 17 * len(names)))
    for model, values in rows.items():
        cells = (percent(values[n]).ljust(14) if n in values else "-".ljust(14) for n in names)
        print(" | ".join([model.ljust(10), *cells]))
    if f"{GAIN}/map_at_r" in metrics:
        print(unlabeled_verdict(metrics[f"{GAIN}/map_at_r"]))
    print()


def _registered(client: MlflowClient, parent_run_id: str) -> None:
    """The Model Registry version this run registered, its alias and how to search with it."""
    found = client.search_model_versions(f"tags.`slade.pipeline_run` = '{parent_run_id}'")
    for found_version in found:  # search results leave out aliases
        version = client.get_model_version(found_version.name, found_version.version)
        aliases = ", ".join(version.aliases) or "no alias"
        print(f"registered model {version.name} version {version.version} ({aliases})")
        champion = client.get_model_version_by_alias(version.name, "champion")
        print(
            f"champion: version {champion.version}; try: slade search IMAGE --model "
            f"models:/{version.name}@champion\n"
        )


def _timing(run, compute: float, submitted: float | None) -> None:
    if not (run.start_time and run.end_time):
        return
    flow_wall = (run.end_time - run.start_time).total_seconds()
    overhead = max(flow_wall - compute, 0.0)
    print(f"flow run wall time   {flow_wall:7.1f} s")
    print(f"  slade_core compute {compute:7.1f} s")
    share = 100 * overhead / flow_wall
    print(f"  Prefect + MLflow   {overhead:7.1f} s ({share:.0f}% of the flow run)")
    if submitted:
        total = run.end_time.timestamp() - submitted
        before = run.start_time.timestamp() - submitted
        share = 100 * (overhead + before) / total
        print(
            f"request to finish    {total:7.1f} s (worker pick-up + process start {before:.1f} s;"
            f" orchestration share {share:.0f}%)"
        )
    print(f"(report at {time.strftime('%H:%M:%S')})\n")


if __name__ == "__main__":
    main()
