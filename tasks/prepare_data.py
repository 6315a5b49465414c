"""Stage 1: build the image index (index.parquet + filter_report.json) from the preset's data."""

from __future__ import annotations

import os
from pathlib import Path

from slade_core.data.prepare import prepare_data
from tasks.stage import StageContext, stage_task


def downloads_dir() -> Path:
    """Where archives are found or downloaded: $SLADE_DOWNLOADS_DIR or ./.slade/downloads."""
    return Path(os.environ.get("SLADE_DOWNLOADS_DIR", ".slade/downloads")).resolve()


@stage_task("prepare_data", ("data",), retries=1, retry_delay_seconds=10)
def prepare_data_task(ctx: StageContext, config, upstream) -> dict[str, float]:
    """Index the labeled and unlabeled images; downloads are retried once."""
    return prepare_data(config.data, ctx.work_dir, downloads_dir()).counts
