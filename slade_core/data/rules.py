"""Manifest rules on a parsed frame: the metric-learning split, scarce labels and the subset
reductions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from slade_core.data.errors import DataError
from slade_core.data.manifest import ClassSplit, SplitRule, SubsetRules


def apply_split(frame: pd.DataFrame, rule: SplitRule, dataset: str) -> tuple[pd.DataFrame, int]:
    """Set `split` by class ranges or fraction, or keep the layout's own; returns (frame, rows
    dropped).

    With class ranges, classes outside every range are dropped (and counted); those in the
    `unlabeled` range become split "unlabeled" (labels hidden by the index's remap). With the
    `source` rule every row must carry a split from the layout.
    """
    if isinstance(rule, ClassSplit):
        labels = frame["label"]
        if rule.test_fraction is not None:
            test_ids = draw_test_classes(labels, rule.test_fraction, rule.seed, dataset)
            train, test = ~labels.isin(test_ids) & (labels >= 0), labels.isin(test_ids)
        else:
            train, test = labels.between(*rule.train), labels.between(*rule.test)
        hidden = labels.between(*rule.unlabeled) if rule.unlabeled else labels.isin([])
        split = pd.Series("", index=frame.index).mask(train, "train").mask(test, "test")
        out = frame.assign(split=split.mask(hidden, "unlabeled"))
        kept = out[train | test | hidden].reset_index(drop=True)
        for name, part in (("train", train), ("test", test)):
            if not part.any():
                raise DataError(
                    f"dataset {dataset!r}: no image has a class id in split.{name} "
                    f"{list(getattr(rule, name))} (ids present: {labels.min()}..{labels.max()})"
                )
        return kept, len(frame) - len(kept)
    missing = int((frame["split"] == "").sum())
    if missing:
        raise DataError(
            f"dataset {dataset!r}: split rule 'source' but {missing} rows carry no split; "
            "add a split column (train/test/query/gallery/unlabeled) or use rule: classes"
        )
    return frame, 0


def draw_test_classes(labels: pd.Series, fraction: float, seed: int, dataset: str) -> list[int]:
    """round(fraction x classes) class ids, a seeded draw that does not depend on row order;
    at least one class on each side."""
    classes = np.unique(labels[labels >= 0])
    count = round(fraction * len(classes))
    if not 1 <= count < len(classes):
        raise DataError(
            f"dataset {dataset!r}: split.test_fraction {fraction} of {len(classes)} classes "
            f"gives {count} test classes; train and test need at least one class each "
            "(change the fraction or add classes)"
        )
    draw = np.random.default_rng(seed).permutation(len(classes))[:count]
    return sorted(classes[draw].tolist())


def apply_subset(frame: pd.DataFrame, rules: SubsetRules) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Keep listed classes, drop small ones, then keep the largest `max_classes`."""
    before = (frame["label"].nunique(), len(frame))
    if rules.keep_classes is not None:
        frame = frame[frame["label"].isin(rules.keep_classes)]
    sizes = frame.groupby("label").size()
    if rules.min_images_per_class is not None:
        sizes = sizes[sizes >= rules.min_images_per_class]
    if rules.max_classes is not None:
        order = sorted(sizes.index, key=lambda label: (-sizes[label], label))
        sizes = sizes[order[: rules.max_classes]]
    frame = frame[frame["label"].isin(sizes.index)].reset_index(drop=True)
    report = {
        "rules": rules.model_dump(exclude_none=True),
        "classes_before": int(before[0]),
        "images_before": int(before[1]),
        "classes_after": int(frame["label"].nunique()),
        "images_after": len(frame),
    }
    return frame, report


def hide_labels(frame: pd.DataFrame, rule: SplitRule) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Scarce labels: all but `rule.labeled_per_class` train images of each class become
    split "unlabeled" (their label is dropped by the index's remap, their class_name stays
    for diagnostics only). The kept images are a seeded draw per class, independent of row
    order; classes with no more images than that keep them all."""
    per_class = rule.labeled_per_class
    report: dict[str, Any] = {"labeled_per_class": per_class, "seed": rule.seed}
    if per_class is None:
        return frame, report
    train = frame[frame["split"] == "train"].sort_values(["label", "rel"])
    rng = np.random.default_rng(rule.seed)
    moved: list[Any] = []
    for _, rows in train.groupby("label", sort=True):
        if len(rows) > per_class:
            order = rng.permutation(len(rows))
            moved.extend(rows.index[order[per_class:]])
    out = frame.copy()
    out.loc[moved, "split"] = "unlabeled"
    report |= {
        "train_classes": int(train["label"].nunique()),
        "train_images_before": len(train),
        "kept_labeled": len(train) - len(moved),
        "moved_to_unlabeled": len(moved),
    }
    return out, report
