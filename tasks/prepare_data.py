"""Stage 1: build the image index (index.parquet + filter_report.json) from the preset's data,
then check it against what this run's training needs.

The stage key includes a digest of the local (folder / csv) datasets' files, so a changed
image set re-runs it; the index is logged as the run's MLflow dataset input (lineage.json
holds its name and digest). The flow then calls `check_data` on every run, cached index or
not: what training needs depends on sampler settings outside the index's key, so changing
them never rebuilds the index (nor re-keys the stages after it).
"""

from __future__ import annotations

import pandas as pd

from slade_core.config import PipelineConfig
from slade_core.data.lineage import source_digest
from slade_core.data.needs import TrainingNeeds, check_training_needs
from slade_core.data.prepare import prepare_data
from tasks.inputs import stage_input
from tasks.lineage import LINEAGE_FILE, log_index_input, write_lineage
from tasks.locations import downloads_dir
from tasks.stage import StageContext, StageResult, stage_task


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


def training_needs(config: PipelineConfig) -> TrainingNeeds:
    """The teacher's and the student's (and the control's, which samples like the student)
    m-per-class batches, and the student's unlabeled half."""
    teacher, student = config.teacher, config.student
    return TrainingNeeds(
        images_per_class=max(teacher.m_per_class, student.m_per_class),
        classes=max(
            teacher.batch_size // teacher.m_per_class,
            student.labeled_batch_size // student.m_per_class,
        ),
        unlabeled=True,
    )


def check_data(config: PipelineConfig, data: StageResult) -> None:
    """Fail the run before any training when the index lacks what its training needs: the
    samplers' m_per_class images in every training class, a batch's classes, unlabeled
    images (the DataError names the classes and what to change)."""
    index = pd.read_parquet(
        stage_input(data, "index.parquet"), columns=["label", "class_name", "split"]
    )
    check_training_needs(index, training_needs(config))
