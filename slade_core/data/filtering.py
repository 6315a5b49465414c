"""Leakage filter: drop unlabeled classes that also occur in the labeled dataset.

An unlabeled class whose name matches a labeled class (see names.py) at or above the
threshold is removed with all its images; the report says what was removed, matched to
which labeled class, with what score and why, and lists the closest names that were kept.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import pandas as pd
from pydantic import Field

from slade_core.data.manifest import Strict
from slade_core.data.names import NameMatcher

log = logging.getLogger(__name__)

DEFAULT_CONTRAST_GROUPS = [
    ["eastern", "western", "northern", "southern"],
    ["great", "greater", "lesser", "little", "least"],
    ["male", "female"],
]


class FilterSettings(Strict):
    """How unlabeled classes are matched against labeled ones.

    against: compare with all labeled classes ("all") or only the evaluation classes
      ("test": test/query/gallery). threshold: minimum name score (0-1) to count as the
      same class. aliases: labeled class name -> other names of that class (synonyms no
      spelling rule can find, e.g. Geococcyx = Roadrunner). contrast_groups: words that name
      different classes although spelled alike. ignore_words / ignore_patterns (regex):
      removed from names before matching (e.g. car body styles and years).
      near_miss_margin: kept names scoring within this of the threshold are reported.
    """

    enabled: bool = True
    against: Literal["all", "test"] = "all"
    threshold: float = Field(0.85, gt=0, le=1)
    aliases: dict[str, list[str]] = {}
    contrast_groups: list[list[str]] = DEFAULT_CONTRAST_GROUPS
    ignore_words: list[str] = []
    ignore_patterns: list[str] = []
    near_miss_margin: float = Field(0.25, ge=0, le=1)


def filter_unlabeled(
    unlabeled: pd.DataFrame, labeled: pd.DataFrame, settings: FilterSettings, source: str
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Remove rows of `unlabeled` whose class matches a class of `labeled` (class_name, split)."""
    report: dict[str, Any] = {"source": source, "enabled": settings.enabled}
    if not settings.enabled:
        return unlabeled, report
    splits = ("test", "query", "gallery") if settings.against == "test" else None
    reference = labeled if splits is None else labeled[labeled["split"].isin(splits)]
    split_of = reference.groupby("class_name")["split"].agg(lambda s: "/".join(sorted(set(s))))
    matcher = NameMatcher(
        split_of.index,
        settings.aliases,
        settings.contrast_groups,
        settings.ignore_words,
        settings.ignore_patterns,
    )
    sizes = unlabeled.groupby("class_name").size()
    removed, near = [], []
    for name, images in sizes.items():
        if not name:
            continue
        match, matched = matcher.best(name)
        entry = {
            "class_name": name,
            "images": int(images),
            "matched": matched,
            "matched_split": split_of.get(matched) if matched else None,
            "score": round(match.score, 4),
            "kind": match.kind,
        }
        if matched and match.score >= settings.threshold:
            removed.append(entry)
        elif matched and (
            match.score >= settings.threshold - settings.near_miss_margin or match.blocked_by
        ):
            near.append(entry | {"blocked_by": match.blocked_by})
    gone = {e["class_name"] for e in removed}
    kept = unlabeled[~unlabeled["class_name"].isin(gone)].reset_index(drop=True)
    report |= {
        "against": settings.against,
        "threshold": settings.threshold,
        "labeled_classes_compared": len(split_of),
        "unlabeled_classes": len(sizes),
        "unnamed_images": int((unlabeled["class_name"] == "").sum()),
        "removed_classes": len(removed),
        "removed_images": len(unlabeled) - len(kept),
        "removed": sorted(removed, key=lambda e: (-e["score"], e["class_name"])),
        "near_misses_kept": sorted(near, key=lambda e: (-e["score"], e["class_name"])),
        "unknown_alias_keys": matcher.unknown_aliases,
    }
    log.info(
        "filter %s: removed %d of %d classes (%d images) matching labeled classes",
        source,
        len(removed),
        len(sizes),
        report["removed_images"],
    )
    if report["unnamed_images"]:
        log.warning(
            "filter %s: %d images have no class name and cannot be checked",
            source,
            report["unnamed_images"],
        )
    return kept, report
