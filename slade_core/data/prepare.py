"""The prepare_data stage: datasets of a preset -> index.parquet + filter_report.json.

Order: load and validate every manifest (fail before any download) -> fetch/unpack ->
parse each layout -> split the labeled set (and hide all but N labels per training class
when the split asks for scarce labels) -> filter the unlabeled sets against the labeled
classes -> subset reductions -> with `validation_classes`, hold out the last training
classes as the evaluation split and drop the test rows (slade_core.data.validation) ->
decode-check every image (bad rows are excluded and listed; results cached in the downloads
directory) -> fail if the training split or a declared unlabeled set ended empty -> remap
labels to 0..C-1 over labeled rows (-1 for unlabeled) -> write both files atomically.
Schema of index.parquet: see CONTRACTS.md / README; its metadata names the evaluation
protocol (`index_protocol`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from slade_core.data.acquire import acquire
from slade_core.data.errors import DataError
from slade_core.data.filtering import filter_unlabeled
from slade_core.data.image_check import check_images, mode_counts
from slade_core.data.parsers import parse_dataset
from slade_core.data.preset import DataPreset, DatasetRef
from slade_core.data.rules import apply_split, apply_subset, hide_labels
from slade_core.data.validation import PROTOCOL as VALIDATION
from slade_core.data.validation import hold_out_classes
from slade_core.io import atomic_path, write_json

log = logging.getLogger(__name__)

INDEX_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("label", pa.int64()),
        ("class_name", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
    ]
)
LABELED_SPLITS = ("train", "test", "query", "gallery")
PROTOCOL_KEY = b"slade.protocol"
CHECK_CACHE = "image_check_cache.json"  # in the downloads directory, shared by every run
EXAMPLES = 5  # paths named in an error


@dataclass(frozen=True)
class PreparedData:
    """Where the index and report were written, and the headline counts."""

    index_path: Path
    report_path: Path
    counts: dict[str, int]


def prepare_data(data: DataPreset, out_dir: Path, downloads_dir: Path) -> PreparedData:
    """Build out_dir/index.parquet and out_dir/filter_report.json for `data`."""
    out_dir, downloads_dir = Path(out_dir), Path(downloads_dir)
    labeled_manifest = data.labeled.manifest()
    unlabeled_manifests = [ref.manifest() for ref in data.unlabeled]
    split_rule = data.labeled.split or labeled_manifest.split
    if split_rule is None:
        raise DataError(
            f"labeled dataset {labeled_manifest.name!r} has no split rule: add `split:` "
            "(rule: classes with train/test id ranges, or rule: source) to its manifest "
            "or to the preset's labeled entry"
        )
    names = [labeled_manifest.name] + [m.name for m in unlabeled_manifests]
    if len(set(names)) != len(names):
        raise DataError(f"datasets {names} repeat a name; image ids would collide")
    report: dict[str, Any] = {"datasets": {}, "filter": [], "subset": {}}

    root = acquire(labeled_manifest, downloads_dir)
    labeled = parse_dataset(labeled_manifest, root, labeled=True)
    labeled, dropped = apply_split(labeled, split_rule, labeled_manifest.name)
    labeled, report["subset"][labeled_manifest.name] = _subset(
        labeled, data.labeled, labeled_manifest
    )
    labeled, report["labels_hidden"] = hide_labels(labeled, split_rule)
    frames = [_finish(labeled, root, labeled_manifest.name)]
    report["datasets"][labeled_manifest.name] = {
        "role": "labeled",
        "root": str(root),
        "split_rule": split_rule.model_dump(),
        "rows_outside_split": dropped,
    }

    reference = labeled[labeled["split"].isin(LABELED_SPLITS)]
    for ref, manifest in zip(data.unlabeled, unlabeled_manifests, strict=True):
        root = acquire(manifest, downloads_dir)
        frame = parse_dataset(manifest, root).assign(split="unlabeled")
        frame, filter_report = filter_unlabeled(frame, reference, data.filter, manifest.name)
        frame, report["subset"][manifest.name] = _subset(frame, ref, manifest)
        report["filter"].append(filter_report)
        report["datasets"][manifest.name] = {"role": "unlabeled", "root": str(root)}
        frames.append(_finish(frame, root, manifest.name))

    index = pd.concat(frames, ignore_index=True)
    duplicated = index["image_id"].duplicated()
    report["duplicates"] = index.loc[duplicated, "image_id"].tolist()
    index = index[~duplicated].reset_index(drop=True)
    if data.validation_classes:
        index, report["validation"] = hold_out_classes(index, data.validation_classes, data.filter)
    before = index
    index, report["image_check"] = _check(index, data.image_check.workers, downloads_dir)
    _require_rows(before, index, report, declared_unlabeled=bool(data.unlabeled))
    index = _remap_labels(index)
    counts = _counts(index, report)
    report["counts"] = counts
    write_index(index, out_dir / "index.parquet", VALIDATION if data.validation_classes else None)
    report_path = write_json(out_dir / "filter_report.json", report)
    log.info("prepared index: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
    return PreparedData(out_dir / "index.parquet", report_path, counts)


def index_dataset(
    ref: DatasetRef, downloads_dir: Path, split: str, out_path: Path, workers: int | None = None
) -> Path:
    """One dataset alone as an index.parquet whose rows all have `split` (e.g. a search
    gallery): fetched, parsed, subset and decode-checked like prepare_data's; labels are
    0..C-1 over its own classes."""
    manifest = ref.manifest()
    root = acquire(manifest, downloads_dir)
    frame, _ = _subset(parse_dataset(manifest, root).assign(split=split), ref, manifest)
    index, check = _check(_finish(frame, root, manifest.name), workers, downloads_dir)
    if index.empty:
        raise DataError(
            f"dataset {manifest.name!r} has no readable images ({check['bad_count']} bad): "
            f"check its path {root}"
        )
    write_index(_remap_labels(index), Path(out_path))
    return Path(out_path)


def _subset(frame: pd.DataFrame, ref: DatasetRef, manifest: Any) -> tuple[pd.DataFrame, dict]:
    return apply_subset(frame, ref.subset or manifest.subset)


def _finish(frame: pd.DataFrame, root: Path, source: str) -> pd.DataFrame:
    """Parsed frame -> index columns (labels still the dataset's own ids)."""
    return pd.DataFrame(
        {
            "image_id": source + "/" + frame["rel"],
            "path": [str(p if Path(p).is_absolute() else root / p) for p in frame["rel"]],
            "label": frame["label"].astype("int64"),
            "class_name": frame["class_name"],
            "split": frame["split"],
            "source": source,
        }
    )


def _check(
    index: pd.DataFrame, workers: int | None, downloads_dir: Path
) -> tuple[pd.DataFrame, dict[str, Any]]:
    statuses = check_images(index["path"].tolist(), workers, downloads_dir / CHECK_CACHE)
    bad = [i for i, s in enumerate(statuses) if s.problem is not None]
    listing = [
        {
            "image_id": index.at[i, "image_id"],
            "path": index.at[i, "path"],
            "split": index.at[i, "split"],
            "reason": statuses[i].problem,
        }
        for i in bad
    ]
    if bad:
        log.warning(
            "image check: %d of %d images excluded (see filter_report.json)", len(bad), len(index)
        )
    report = {
        "checked": len(index),
        "bad_count": len(bad),
        "bad": listing,
        "modes": mode_counts(statuses),
        "note": "modes other than RGB are converted to RGB at load time",
    }
    return index.drop(index=bad).reset_index(drop=True), report


def _require_rows(
    before: pd.DataFrame, after: pd.DataFrame, report: dict[str, Any], declared_unlabeled: bool
) -> None:
    """Fail when the image check emptied the training or evaluation split, or when the
    preset's unlabeled datasets left no image (filtered, subset or unreadable): the run
    would only fail later, in a training stage, with less to go on."""
    bad = report["image_check"]["bad"]
    for split in (*LABELED_SPLITS, "unlabeled"):
        had, has = int((before["split"] == split).sum()), int((after["split"] == split).sum())
        if has or not (had or split == "unlabeled"):
            continue
        if split == "unlabeled":
            if not declared_unlabeled:
                continue
            removed = {f["source"]: f.get("removed_images", 0) for f in report["filter"]}
            kept = {
                name: report["subset"][name]["images_after"]
                for name, info in report["datasets"].items()
                if info["role"] == "unlabeled"
            }
            raise DataError(
                f"the unlabeled set is empty: the leakage filter removed {removed} images, "
                f"the subset rules then kept {kept}, and {had} left were unreadable"
                f"{_examples(bad, split)}; add unlabeled images or relax the filter"
            )
        raise DataError(
            f"split {split!r} is empty: none of its {had} images is readable "
            f"({report['image_check']['bad_count']} bad images in all){_examples(bad, split)}; "
            "check the dataset's path (or the CSV's images_root) and the files, then re-run "
            "(images already checked are not decoded again)"
        )


def _examples(bad: list[dict[str, Any]], split: str) -> str:
    rows = [b for b in bad if b["split"] == split][:EXAMPLES]
    return "; e.g. " + ", ".join(f"{b['path']} ({b['reason']})" for b in rows) if rows else ""


def _remap_labels(index: pd.DataFrame) -> pd.DataFrame:
    labeled = index["split"] != "unlabeled"
    keys = list(zip(index["source"], index["label"], strict=True))
    order = sorted({k for k, is_labeled in zip(keys, labeled, strict=True) if is_labeled})
    new = {k: i for i, k in enumerate(order)}
    index["label"] = [
        new[k] if is_labeled else -1 for k, is_labeled in zip(keys, labeled, strict=True)
    ]
    index["label"] = index["label"].astype("int64")
    return index


def _counts(index: pd.DataFrame, report: dict[str, Any]) -> dict[str, int]:
    counts = {
        f"images_{s}": int((index["split"] == s).sum()) for s in (*LABELED_SPLITS, "unlabeled")
    }
    for s in LABELED_SPLITS:
        counts[f"classes_{s}"] = int(index.loc[index["split"] == s, "label"].nunique())
    counts["filter_removed_classes"] = sum(f.get("removed_classes", 0) for f in report["filter"])
    counts["filter_removed_images"] = sum(f.get("removed_images", 0) for f in report["filter"])
    counts["labels_hidden_images"] = report["labels_hidden"].get("moved_to_unlabeled", 0)
    counts["bad_images"] = report["image_check"]["bad_count"]
    counts["duplicate_images"] = len(report["duplicates"])
    counts["validation_classes"] = report.get("validation", {}).get("classes", 0)
    return counts


def write_index(index: pd.DataFrame, path: Path, protocol: str | None = None) -> Path:
    """Write an index with the index schema; `protocol` (e.g. "validation") is recorded in
    the file's metadata for evaluation to report (`index_protocol`)."""
    table = pa.Table.from_pandas(index, schema=INDEX_SCHEMA, preserve_index=False)
    if protocol is not None:
        table = table.replace_schema_metadata(
            (table.schema.metadata or {}) | {PROTOCOL_KEY: protocol.encode()}
        )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def index_protocol(path: str | Path) -> str | None:
    """The protocol an index records ("validation"), None for the ordinary test protocol."""
    value = (pq.read_schema(path).metadata or {}).get(PROTOCOL_KEY)
    return value.decode() if value is not None else None
