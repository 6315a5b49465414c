"""What training needs from an index, checked before any training stage starts.

The m-per-class samplers need `m_per_class` images of every training class (with fewer they
repeat images, so a batch's "positives" are the same picture) and enough classes for one
batch; the student needs unlabeled images. These depend on the run's training settings, not
on the data alone, so they are checked against a finished index (cached or not) rather than
while it is built: changing a sampler setting never rebuilds the index.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from slade_core.data.errors import DataError

EXAMPLES = 5  # classes named in an error


@dataclass(frozen=True)
class TrainingNeeds:
    """images_per_class: the samplers' largest m_per_class; classes: the most classes one
    labeled batch holds (batch size // m_per_class); unlabeled: a student is trained."""

    images_per_class: int = 1
    classes: int = 1
    unlabeled: bool = False


def check_training_needs(index: pd.DataFrame, needs: TrainingNeeds) -> None:
    """Raise DataError naming what the index lacks for `needs` (nothing when it suffices)."""
    train = index[index["split"] == "train"]
    sizes = train.groupby("label").size()
    short = sizes[sizes < needs.images_per_class].sort_values(kind="stable")
    if len(short):
        names = train.groupby("label")["class_name"].first()
        listed = ", ".join(
            f"{names[label]!r} ({count})" for label, count in short.head(EXAMPLES).items()
        )
        raise DataError(
            f"{len(short)} of {len(sizes)} training classes have fewer than "
            f"{needs.images_per_class} images, the samplers' m_per_class: {listed}"
            f"{' ...' if len(short) > EXAMPLES else ''}; add images, lower teacher.m_per_class "
            f"and student.m_per_class, or drop small classes with the labeled dataset's "
            f"subset: {{min_images_per_class: {needs.images_per_class}}}"
        )
    if len(sizes) < needs.classes:
        raise DataError(
            f"the training split has {len(sizes)} classes; a labeled batch needs "
            f"{needs.classes} (batch size // m_per_class): lower the batch size, raise "
            "m_per_class, or label more classes"
        )
    if needs.unlabeled and not (index["split"] == "unlabeled").any():
        raise DataError(
            "the unlabeled set is empty but the student trains on unlabeled images: add "
            "`unlabeled:` datasets to the preset's data (or hide labels with the split's "
            "labeled_per_class)"
        )
