"""Manifest rules on a parsed frame: the metric-learning split and the subset reductions."""

from __future__ import annotations

from typing import Any

import pandas as pd

from slade_core.data.errors import DataError
from slade_core.data.manifest import ClassSplit, SplitRule, SubsetRules


def apply_split(frame: pd.DataFrame, rule: SplitRule, dataset: str) -> tuple[pd.DataFrame, int]:
    """Set `split` by class ranges or keep the layout's own; returns (frame, rows dropped).

    With a class rule, classes outside both ranges are dropped (and counted). With the
    `source` rule every row must carry a split from the layout.
    """
    if isinstance(rule, ClassSplit):
        labels = frame["label"]
        train = labels.between(*rule.train)
        test = labels.between(*rule.test)
        out = frame.assign(
            split=pd.Series("", index=frame.index).mask(train, "train").mask(test, "test")
        )
        kept = out[train | test].reset_index(drop=True)
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
