"""Stage 4: clustering of the unlabeled embeddings (Ward by default, or k-means) -> pseudo
labels, one part per embeddings part (the `pseudo_labels.parquet/` dataset); the parts are
assigned where the shards run."""

from __future__ import annotations

from slade_core.clustering import make_sharded_pseudo_labels
from slade_core.io import write_json
from tasks.shards import assign_on
from tasks.stage import StageContext, stage_task


@stage_task("cluster", ("cluster", "shards"))
def cluster_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Pseudo labels for the student; cluster-size stats become metrics."""
    result = make_sharded_pseudo_labels(
        ctx.input(upstream["embeddings"], "embeddings.parquet"),
        ctx.work_dir / "pseudo_labels.parquet",
        config.cluster,
        map_parts=assign_on(config.shards),
    )
    write_json(ctx.work_dir / "cluster_stats.json", result.stats)
    return result.stats
