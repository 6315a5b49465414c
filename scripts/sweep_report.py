"""Print a sweep's trials table (validation metric per trial), its best trial's test run
and the UI addresses.

    python scripts/sweep_report.py FLOW_RUN_ID     # the flow run of slade/sweep
"""

from __future__ import annotations

import argparse
import os

from mlflow.tracking import MlflowClient

from slade_core.evaluate import percent
from tasks.sweep_records import render_table, trials_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flow_run_id")
    args = parser.parse_args()
    client = MlflowClient()
    found = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=(
            f"tags.`prefect.flow_run_id` = '{args.flow_run_id}' and tags.`slade.kind` = 'sweep'"
        ),
        max_results=1,
    )
    if not found:
        raise SystemExit(f"no sweep run of flow run {args.flow_run_id} in {client.tracking_uri}")
    sweep = found[0]
    metric = sweep.data.params["sweep.metric"]
    held_out = sweep.data.params["sweep.validation_classes"]
    print(f"\nsweep {sweep.data.tags['slade.study']} ({sweep.info.status}): {metric} in percent")
    print(f"on the last {held_out} training classes\n")
    print(render_table(trials_table(sweep.info.run_id, metric)))
    best, test_run = sweep.data.tags.get("slade.best_trial"), sweep.data.tags.get("slade.test_run")
    if test_run:
        score = percent(sweep.data.metrics.get(f"test/{metric}"))
        print(f"\nbest: trial {best}; on the test split {metric} = {score} (run {test_run})")
    base = os.environ.get("MLFLOW_TRACKING_URI", "")
    exp = sweep.info.experiment_id
    url = f"{base}/#/experiments/{exp}/runs/{sweep.info.run_id}"
    print(f"MLflow sweep run: {url} (its child runs are the trials: select them, Compare)")
    print(f"Prefect run: {os.environ.get('PREFECT_UI_URL', '')}/runs/flow-run/{args.flow_run_id}")


if __name__ == "__main__":
    main()
