"""Stage 3: embed the unlabeled images with the current teacher, one Parquet part per shard
(the `embeddings.parquet/` dataset; tasks.shards maps the shards onto the task runner)."""

from __future__ import annotations

from tasks.shards import extract_sharded
from tasks.stage import StageContext, stage_task

SPLITS = ("unlabeled",)


@stage_task("extract_embeddings", ("runtime", "shards"))
def extract_embeddings_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Embeddings of the rows the clustering stage labels (split 'unlabeled')."""
    model = upstream["teacher"]
    return extract_sharded(
        ctx.input(model, model["checkpoint"]),
        ctx.input(upstream["data"], "index.parquet"),
        SPLITS,
        ctx.work_dir / "embeddings.parquet",
        config.shards,
        config.runtime,
    )
