"""Retrieval evaluation of one or more models: metrics.json, report.md, report_examples.png.

Protocol follows the index: split "test" is retrieved against itself (self excluded, the
CUB/Cars protocol); otherwise split "query" against split "gallery" (In-shop). Every model is
scored on the same rows, and the report shows the same seeded example queries for each model
so their neighbours can be compared side by side. Given the model spec, the untrained
trunk's own pooled features are scored first as `pretrained_trunk`, so a reader sees what
training added. With a `student` and its `control` (the student's steps on labeled data
only), the report says whether the unlabeled images helped (`student_minus_control`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageOps

from slade_core.config import EvalConfig, ModelConfig, RuntimeConfig
from slade_core.data.prepare import index_protocol
from slade_core.embeddings import (
    EmbeddingTable,
    extract_embeddings,
    extract_trunk_features,
    read_embeddings,
)
from slade_core.images import UnreadableImageError, load_rgb
from slade_core.io import atomic_path, write_json
from slade_core.metrics import nearest_neighbors, retrieval_metrics

EXAMPLE_NEIGHBOURS = 5
TRUNK_ROW = "pretrained_trunk"
METRIC_HEADERS = {"map_at_r": "MAP@R", "r_precision": "RP", "precision_at_1": "P@1"}
STUDENT, CONTROL = "student", "control"
GAIN = "student_minus_control"  # metrics.json key and MLflow metric prefix


@dataclass(frozen=True)
class EvalResult:
    metrics_path: Path
    report_path: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class RetrievalExample:
    """One query of one model and its top neighbours; images are index rows as dicts."""

    model: str
    query: dict[str, Any]
    neighbours: list[dict[str, Any]]  # each also has "correct": bool


def evaluate(
    checkpoints: Mapping[str, Path],
    index_path: str | Path,
    out_dir: str | Path,
    cfg: EvalConfig,
    runtime: RuntimeConfig,
    trunk: ModelConfig | None = None,
) -> EvalResult:
    """Embed the evaluation split(s) with every model, score them and write the report;
    with `trunk` (the pipeline's model spec) the pretrained trunk is scored first."""
    if not checkpoints:
        raise ValueError("evaluate needs at least one checkpoint (name -> path)")
    for name in checkpoints:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == TRUNK_ROW:
            raise ValueError(
                f"model name {name!r} must be letters, digits, '_', '.' or '-' (and not "
                f"{TRUNK_ROW!r}, the baseline row)"
            )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = pd.read_parquet(
        index_path, columns=["image_id", "path", "label", "class_name", "split"]
    )
    protocol, splits = evaluation_protocol(index["split"].unique())
    rows = index[index["split"].isin(splits)].set_index("image_id")

    models: dict[str, dict[str, float | None]] = {}
    examples: list[RetrievalExample] = []
    chosen: list[str] | None = None
    extractors = {
        name: partial(extract_embeddings, checkpoint) for name, checkpoint in checkpoints.items()
    }
    if trunk is not None:
        extractors = {TRUNK_ROW: partial(extract_trunk_features, trunk), **extractors}
    for name, extract in extractors.items():
        info = extract(index_path, out_dir / f"embeddings_{name}.parquet", splits, runtime)
        table = read_embeddings(info.path)
        query, reference = split_roles(table, protocol)
        scores = retrieval_metrics(
            table.embeddings[query],
            table.labels[query],
            None if reference is None else table.embeddings[reference],
            None if reference is None else table.labels[reference],
            recall_at=cfg.recall_at,
        )
        models[name] = {k: None if math.isnan(v) else v for k, v in scores.items()}
        if chosen is None:
            chosen = select_examples(
                table.image_ids[query],
                table.labels[query],
                None if reference is None else table.labels[reference],
                cfg.examples,
                runtime.seed,
            )
        examples += retrieval_examples(name, table, query, reference, chosen, rows)

    n_references = len(reference) if reference is not None else len(query)
    metrics = {
        "protocol": index_protocol(index_path) or protocol,  # "validation": held-out classes
        "n_queries": int(len(query)),
        "n_references": int(n_references),
        "models": models,
    }
    gain = student_minus_control(models)
    if gain:
        metrics[GAIN] = gain
    metrics_path = write_json(out_dir / "metrics.json", metrics)
    grid_path = out_dir / "report_examples.png"
    if examples:
        draw_examples_grid(examples, grid_path)
    report = render_report(metrics, examples, grid_path.name if examples else None)
    report_path = out_dir / "report.md"
    with atomic_path(report_path) as tmp:
        tmp.write_text(report)
    return EvalResult(metrics_path=metrics_path, report_path=report_path, metrics=metrics)


def student_minus_control(models: Mapping[str, Mapping[str, float | None]]) -> dict[str, float]:
    """Per metric, the student's score minus its control's: what the unlabeled images added
    beyond the student's extra steps. Empty without both rows; a metric that is undefined
    (None) on either side is left out."""
    if STUDENT not in models or CONTROL not in models:
        return {}
    student, control = models[STUDENT], models[CONTROL]
    return {
        metric: value - control[metric]
        for metric, value in student.items()
        if value is not None and control.get(metric) is not None
    }


def unlabeled_verdict(map_at_r_gain: float | None, protocol: str | None = None) -> str:
    """One line: did the unlabeled images help on this run's evaluation classes, and by how
    much (student - control MAP@R, one run: a gap within the seed-to-seed spread is noise)."""
    if protocol == "validation":
        where = "this run's validation classes (held-out training classes)"
    else:
        where = f"this run's test protocol ({protocol})" if protocol else "this run's test protocol"
    if map_at_r_gain is None or math.isnan(map_at_r_gain):
        return f"Unlabeled images: no verdict, MAP@R is undefined on {where}."
    helped = "helped" if map_at_r_gain > 0 else "did not help"
    return (
        f"Unlabeled images {helped} on {where}: student - control = "
        f"{100 * map_at_r_gain:+.2f} MAP@R (one run)."
    )


def evaluation_protocol(splits: Iterable[str]) -> tuple[str, list[str]]:
    """("test-vs-test", ["test"]) or ("query-vs-gallery", ["query", "gallery"])."""
    present = set(splits)
    if "test" in present:
        return "test-vs-test", ["test"]
    if {"query", "gallery"} <= present:
        return "query-vs-gallery", ["query", "gallery"]
    raise ValueError(
        f"the index has splits {sorted(present)}; evaluation needs 'test', or 'query' and "
        "'gallery' (check the dataset manifest's split rules)"
    )


def split_roles(table: EmbeddingTable, protocol: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Row positions of queries and references (None = the queries themselves)."""
    if protocol == "test-vs-test":
        return np.flatnonzero(table.splits == "test"), None
    return np.flatnonzero(table.splits == "query"), np.flatnonzero(table.splits == "gallery")


def select_examples(
    image_ids: Sequence[str],
    labels: np.ndarray,
    reference_labels: np.ndarray | None,
    count: int,
    seed: int,
) -> list[str]:
    """`count` query image ids drawn with `seed`, from queries that have a relevant reference.

    Sorted ids are drawn from, so the choice does not depend on row order.
    """
    labels = np.asarray(labels)
    if reference_labels is None:
        values, counts = np.unique(labels, return_counts=True)
        has_match = np.isin(labels, values[counts > 1])
    else:
        has_match = np.isin(labels, np.asarray(reference_labels))
    candidates = np.sort(np.asarray(image_ids, dtype=object)[has_match])
    count = min(count, candidates.size)
    picked = np.random.default_rng(seed).choice(candidates.size, count, replace=False)
    return [str(candidates[i]) for i in np.sort(picked)]


def retrieval_examples(
    model: str,
    table: EmbeddingTable,
    query: np.ndarray,
    reference: np.ndarray | None,
    chosen: Sequence[str],
    index_rows: pd.DataFrame,
    k: int = EXAMPLE_NEIGHBOURS,
) -> list[RetrievalExample]:
    """Top-k neighbours of the chosen query ids; index_rows (by image_id) gives paths/names."""
    position = {image_id: i for i, image_id in enumerate(table.image_ids[query])}
    missing = [image_id for image_id in chosen if image_id not in position]
    if missing:
        raise ValueError(f"example queries {missing[:3]} are not in the embeddings of {model!r}")
    rows = [position[image_id] for image_id in chosen]
    ref_rows = query if reference is None else reference
    _, neighbours = nearest_neighbors(
        table.embeddings[query],
        None if reference is None else table.embeddings[reference],
        k=k,
        rows=rows,
    )
    out = []
    for row, hits in zip(rows, neighbours, strict=True):
        q = _describe(index_rows, table.image_ids[query[row]])
        found = [_describe(index_rows, table.image_ids[ref_rows[j]]) for j in hits]
        for hit in found:
            hit["correct"] = hit["label"] == q["label"]
        out.append(RetrievalExample(model=model, query=q, neighbours=found))
    return out


def _describe(index_rows: pd.DataFrame, image_id: str) -> dict[str, Any]:
    row = index_rows.loc[image_id]
    return {
        "image_id": image_id,
        "path": str(row["path"]),
        "label": int(row["label"]),
        "class_name": str(row["class_name"]),
    }


def render_metrics_table(models: Mapping[str, Mapping[str, float | None]]) -> str:
    """Markdown table, one row per model, metrics in percent (as papers report them)."""
    names = list(dict.fromkeys(k for values in models.values() for k in values))
    headers = [METRIC_HEADERS.get(k, k.replace("recall_at_", "R@")) for k in names]
    lines = ["| model | " + " | ".join(headers) + " |", "|---" * (len(names) + 1) + "|"]
    for model, values in models.items():
        cells = [percent(values.get(k)) for k in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def percent(value: float | None) -> str:
    """A metric fraction as people read it: 0.46312 -> "46.31" (fractions stay in JSON)."""
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def render_report(
    metrics: Mapping[str, Any], examples: Sequence[RetrievalExample], grid_name: str | None
) -> str:
    """report.md: protocol, metrics table, then each model's neighbours of the example queries."""
    lines = [
        "# Retrieval evaluation",
        "",
        f"Protocol **{metrics['protocol']}**: {metrics['n_queries']} queries, "
        f"{metrics['n_references']} references. Metrics in percent, PML AccuracyCalculator "
        "semantics (squared L2 on normalised embeddings, self excluded, queries without a "
        "relevant reference left out; R@K = share of queries with a same-label image in the "
        "top K).",
        "",
        render_metrics_table(metrics["models"]),
    ]
    if GAIN in metrics:
        lines += ["", unlabeled_verdict(metrics[GAIN].get("map_at_r"), metrics["protocol"])]
    if examples:
        lines += ["", "## Retrieval examples", ""]
        if grid_name:
            lines += [
                f"![retrieval examples]({grid_name})",
                "",
                "Rows: model / query (blue) then its nearest neighbours, green border = same "
                "label, red = different.",
            ]
        for example in examples:
            q = example.query
            lines += [
                "",
                f"**{example.model}**, query `{q['path']}` (label {q['label']}{_class_suffix(q)}):",
                "",
            ]
            for rank, hit in enumerate(example.neighbours, start=1):
                mark = "✓" if hit["correct"] else "✗"
                lines.append(
                    f"{rank}. {mark} `{hit['path']}` (label {hit['label']}{_class_suffix(hit)})"
                )
    return "\n".join(lines) + "\n"


def _class_suffix(image: Mapping[str, Any]) -> str:
    return f", {image['class_name']}" if image.get("class_name") else ""


def draw_examples_grid(
    examples: Sequence[RetrievalExample], path: str | Path, thumb: int = 112, border: int = 5
) -> Path:
    """PNG grid, one row per example: model name, query, then neighbours.

    Borders: query blue; neighbour green / red when it has the query's label / not, grey when
    relevance is unknown (no "correct" key). A neighbour's "caption", if any, is written on it.
    """
    cell = thumb + 2 * border
    label_width = 120
    columns = 1 + max(len(e.neighbours) for e in examples)
    canvas = Image.new(
        "RGB", (label_width + columns * (cell + 4), len(examples) * (cell + 4)), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for r, example in enumerate(examples):
        y = r * (cell + 4)
        draw.text((4, y + cell // 2 - 12), example.model[:18], fill="black")
        if example.query.get("label") is not None:
            draw.text((4, y + cell // 2 + 2), f"label {example.query['label']}", fill="gray")
        tiles = [(example.query, (40, 90, 220))] + [
            (hit, _RELEVANCE_COLOURS[hit.get("correct")]) for hit in example.neighbours
        ]
        for c, (image, colour) in enumerate(tiles):
            tile = ImageOps.expand(_thumbnail(image["path"], thumb), border=border, fill=colour)
            x = label_width + c * (cell + 4)
            canvas.paste(tile, (x, y))
            if image.get("caption"):
                text = str(image["caption"])[:18]
                box = draw.textbbox((x + border, y + cell - border - 12), text)
                draw.rectangle(box, fill="white")
                draw.text((x + border, y + cell - border - 12), text, fill="black")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


_RELEVANCE_COLOURS = {True: (30, 160, 60), False: (210, 40, 40), None: (150, 150, 150)}


def _thumbnail(path: str, size: int) -> Image.Image:
    """Square thumbnail; a grey tile when the file is unreadable (the report still renders)."""
    try:
        image = load_rgb(path)
    except UnreadableImageError:
        return Image.new("RGB", (size, size), (128, 128, 128))
    return ImageOps.fit(image, (size, size))
