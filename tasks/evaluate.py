"""Stage 6: retrieval metrics of every model (metrics.json, report.md, report_examples.png);
with a control, also `student_minus_control/<metric>`."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact

from slade_core.evaluate import GAIN, evaluate, percent, unlabeled_verdict
from tasks.stage import StageContext, stage_task

METRIC_NAMES = ("map_at_r", "r_precision", "precision_at_1", "recall_at_1")


@stage_task("evaluate", ("model", "runtime", "evaluate"))
def evaluate_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Evaluate each upstream model (all entries but `data`); metrics as `<model>/<metric>`,
    and the student's lead over its control as `student_minus_control/<metric>`."""
    checkpoints = {
        name: ctx.input(result, result["checkpoint"])
        for name, result in upstream.items()
        if name != "data"
    }
    result = evaluate(
        checkpoints,
        ctx.input(upstream["data"], "index.parquet"),
        ctx.work_dir,
        config.evaluate,
        config.runtime,
        trunk=config.model,
    )
    models = result.metrics["models"]
    verdict = ""
    if GAIN in result.metrics:
        verdict = " " + unlabeled_verdict(result.metrics[GAIN].get("map_at_r"))
    create_table_artifact(
        [
            {"model": name, **{k: percent(v) for k, v in values.items()}}
            for name, values in models.items()
        ],
        key="slade-metrics",
        description=f"Retrieval metrics in percent ({result.metrics['protocol']}, "
        f"{result.metrics['n_queries']} queries).{verdict}",
    )
    rows = {**models, GAIN: result.metrics.get(GAIN, {})}
    return {
        f"{name}/{metric}": value
        for name, values in rows.items()
        for metric, value in values.items()
    }
