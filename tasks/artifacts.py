"""Prefect artifacts of a stage: a link to its MLflow run, a progress bar, metric tables."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prefect.artifacts import (
    create_link_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def artifact_key(stage: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes."""
    return "slade-" + stage.replace("_", "-").lower()


def link_run(url: str, stage: str, label: str) -> None:
    """A link artifact from the Prefect task run to the stage's MLflow run."""
    create_link_artifact(url, link_text=f"MLflow run: {label}", key=f"{artifact_key(stage)}-mlflow")


def epoch_progress(
    stage: str, label: str, description: str
) -> Callable[[int, int, Mapping[str, float]], None]:
    """A progress artifact advanced per epoch; the last epoch adds the per-epoch table."""
    progress_id = create_progress_artifact(0.0, description=f"{label}: {description}")
    history: list[dict[str, Any]] = []

    def advance(epoch: int, total: int, metrics: Mapping[str, float]) -> None:
        history.append({"epoch": epoch, **metrics})
        update_progress_artifact(
            progress_id, 100.0 * epoch / total, description=f"{label}: epoch {epoch}/{total}"
        )
        if epoch == total:
            create_table_artifact(
                history,
                key=f"{artifact_key(stage)}-history",
                description=f"{label}: per-epoch training metrics",
            )

    return advance
