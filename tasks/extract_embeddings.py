"""Stage 3: embed the unlabeled images with the current teacher (embeddings.parquet)."""

from __future__ import annotations

from slade_core.embeddings import extract_embeddings
from tasks.stage import StageContext, stage_task

SPLITS = ("unlabeled",)


@stage_task("extract_embeddings", ("runtime",))
def extract_embeddings_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Embeddings of the rows the clustering stage needs (split=='unlabeled')."""
    model = upstream["teacher"]
    info = extract_embeddings(
        ctx.input(model, model["checkpoint"]),
        ctx.input(upstream["data"], "index.parquet"),
        ctx.work_dir / "embeddings.parquet",
        SPLITS,
        config.runtime,
    )
    return {"count": info.count, "dim": info.dim}
