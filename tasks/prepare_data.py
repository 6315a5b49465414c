"""Stage 1: build the image index (index.parquet + filter_report.json) from the preset's data.

The stage key includes a digest of the local (folder / csv) datasets' files, so a changed
image set re-runs it; the index is logged as the run's MLflow dataset input (lineage.json
holds its name and digest).
"""

from __future__ import annotations

from slade_core.data.lineage import source_digest
from slade_core.data.prepare import prepare_data
from tasks.lineage import LINEAGE_FILE, log_index_input, write_lineage
from tasks.locations import downloads_dir
from tasks.stage import StageContext, stage_task


def local_images(config) -> str:
    """Digest of the preset's local image folders / CSVs (part of the stage key)."""
    return source_digest([config.data.labeled, *config.data.unlabeled], downloads_dir())


@stage_task(
    "prepare_data", ("preset", "data"), inputs=local_images, retries=1, retry_delay_seconds=10
)
def prepare_data_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Index the labeled and unlabeled images; downloads are retried once."""
    prepared = prepare_data(config.data, ctx.work_dir, downloads_dir())
    write_lineage(prepared.index_path, f"{config.preset}-index")
    log_index_input(
        ctx.client, ctx.run_id, prepared.index_path, ctx.work_dir / LINEAGE_FILE, "training"
    )
    return prepared.counts
