"""Stage 3: embed the unlabeled images (and the labeled training images, whose class means
`cluster.anchors` holds fixed) with the current teacher, one Parquet part per shard (the
`embeddings.parquet/` dataset; tasks.shards maps the shards onto the task runner)."""

from __future__ import annotations

from tasks.shards import extract_sharded
from tasks.stage import StageContext, stage_task

# The labeled rows are embedded whatever the cluster config says, so this stage's key needs
# no cluster field: `cluster.k` never re-runs the extraction.
SPLITS = ("train", "unlabeled")


@stage_task("extract_embeddings", ("runtime", "shards"))
def extract_embeddings_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Embeddings of the rows the clustering stage may need (split 'train' and 'unlabeled')."""
    model = upstream["teacher"]
    return extract_sharded(
        ctx.input(model, model["checkpoint"]),
        ctx.input(upstream["data"], "index.parquet"),
        SPLITS,
        ctx.work_dir / "embeddings.parquet",
        config.shards,
        config.runtime,
    )
