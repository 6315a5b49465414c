"""The validation protocol: tune on held-out training classes, never on the test classes.

`data.validation_classes: N` makes the last N training classes the evaluation split (rows
with split "test") and drops the real test rows, so a run that chooses hyperparameters never
reads a test image. Scarce labels stay consistent: the held-out classes' hidden images join
their evaluation split, and unlabeled images of a held-out species from other sets are
dropped, as the leakage filter drops those of the real test classes (the same name matcher
pairs the species across sets).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from slade_core.data.errors import DataError
from slade_core.data.filtering import FilterSettings
from slade_core.data.names import NameMatcher

PROTOCOL = "validation"
EVALUATION_SPLITS = ("test", "query", "gallery")  # dropped: the test protocol's images


def hidden_species(index: pd.DataFrame, settings: FilterSettings) -> dict[str, int]:
    """Unlabeled image id -> hidden species id (a diagnostic the method never sees).

    Species are class names; a name of one source that the leakage filter's matcher (same
    threshold and aliases) pairs with a labeled-set name counts as that species, so the
    labeled set's own images moved to the unlabeled side (scarce labels) and the same
    species in another set share one id."""
    unlabeled = index[index["split"] == "unlabeled"]
    names = species_names(index, settings)
    ids = pd.factorize(unlabeled["class_name"].map(names), sort=True)[0]
    return dict(zip(unlabeled["image_id"], ids.tolist(), strict=True))


def species_names(index: pd.DataFrame, settings: FilterSettings) -> dict[str, str]:
    """Class name of an unlabeled image -> its species: the labeled-set name the leakage
    filter's matcher pairs it with, else itself."""
    labeled_source = index.loc[index["split"] != "unlabeled", "source"].iloc[0]
    matcher = NameMatcher(
        index.loc[index["source"] == labeled_source, "class_name"].unique(),
        settings.aliases,
        settings.contrast_groups,
        settings.ignore_words,
        settings.ignore_patterns,
    )

    def species(name: str) -> str:
        match, known = matcher.best(name)
        return known if known is not None and match.score >= settings.threshold else name

    unlabeled = index.loc[index["split"] == "unlabeled", "class_name"]
    return {name: species(name) for name in unlabeled.unique()}


def hold_out_classes(
    index: pd.DataFrame,
    n_classes: int,
    settings: FilterSettings,
    min_train_classes: int = 2,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The validation index: the last `n_classes` training classes (by label) become split
    "test", the test protocol's rows (test, query, gallery) are dropped; returns (index,
    report).

    `index` has the index columns (image_id, label, class_name, split, source); `settings`
    are the leakage filter's, whose name matcher finds other sets' images of a held-out
    species. At least `min_train_classes` classes must stay for training.
    """
    train_classes = np.unique(index.loc[index["split"] == "train", "label"])
    if not 2 <= n_classes <= len(train_classes) - min_train_classes:
        raise DataError(
            f"validation_classes {n_classes}: choose 2..{len(train_classes) - min_train_classes}"
            f" of the {len(train_classes)} training classes ({min_train_classes} must stay "
            "for training)"
        )
    held = train_classes[-n_classes:]
    species = species_names(index, settings) if (index["split"] == "unlabeled").any() else {}
    evaluation = index["split"].isin(EVALUATION_SPLITS)
    dropped_test = int(evaluation.sum())
    index = index[~evaluation].copy()
    held_rows = index["label"].isin(held) & (index["split"] == "train")
    index.loc[held_rows, "split"] = "test"
    report: dict[str, Any] = {
        "classes": n_classes,
        "held_out": sorted(index.loc[held_rows, "class_name"].unique().tolist()),
        "held_out_images": int(held_rows.sum()),
        "test_images_dropped": dropped_test,
        "hidden_images_moved": 0,
        "unlabeled_images_dropped": 0,
    }
    unlabeled = index["split"] == "unlabeled"
    if unlabeled.any():
        labeled_source = index.loc[held_rows, "source"].iloc[0]
        held_names = index.loc[held_rows].groupby("class_name")["label"].first()
        leaked = unlabeled & index["class_name"].map(species).isin(held_names.index)
        moved = leaked & (index["source"] == labeled_source)
        if moved.any():
            index.loc[moved, "label"] = index.loc[moved, "class_name"].map(species).map(held_names)
            index.loc[moved, "split"] = "test"
        index = index[~(leaked & ~moved)]
        report["hidden_images_moved"] = int(moved.sum())
        report["unlabeled_images_dropped"] = int((leaked & ~moved).sum())
    return index.reset_index(drop=True), report
