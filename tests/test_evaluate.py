import json
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from slade_core import evaluate as evaluate_module
from slade_core.config import EvalConfig, RuntimeConfig
from slade_core.embeddings import EmbeddingsInfo, embeddings_schema
from slade_core.evaluate import (
    RetrievalExample,
    evaluate,
    evaluation_protocol,
    render_metrics_table,
    render_report,
    select_examples,
)
from slade_core.metrics import retrieval_metrics

DIM = 8


def make_index(tmp_path, splits):
    """Tiny index: 4 classes, image files as solid colours; one lone class per split set."""
    rows = []
    rng = np.random.default_rng(0)
    for i, split in enumerate(splits):
        label = 9 if i == 0 else i % 4  # row 0: a label nothing else has
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (20, 14), tuple(int(v) for v in rng.integers(0, 255, 3))).save(path)
        rows.append(
            {
                "image_id": f"src/{i}.png",
                "path": str(path),
                "label": label,
                "class_name": f"class {label}",
                "split": split,
                "source": "toy",
            }
        )
    rows[3]["path"] = str(tmp_path / "missing.png")  # unreadable image: grey tile, no crash
    index_path = tmp_path / "index.parquet"
    pd.DataFrame(rows).to_parquet(index_path)
    return index_path


def fake_extract(checkpoint_path, index_path, out_path, splits, runtime):
    """Embeddings near a per-label centre; noise scale from the checkpoint's file name."""
    index = pd.read_parquet(index_path)
    frame = index[index["split"].isin(splits)]
    noise = {"good.pt": 0.05, "bad.pt": 2.0}[checkpoint_path.name]
    rng = np.random.default_rng(len(frame))
    centres = rng.standard_normal((10, DIM))
    x = centres[frame["label"].to_numpy()] + noise * rng.standard_normal((len(frame), DIM))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    table = pa.table(
        {
            "image_id": frame["image_id"].tolist(),
            "split": frame["split"].tolist(),
            "label": pa.array(frame["label"], pa.int64()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
        },
        schema=embeddings_schema(DIM, checkpoint_path.stem),
    )
    pq.write_table(table, out_path)
    return EmbeddingsInfo(out_path, len(frame), DIM)


@pytest.fixture
def patched(monkeypatch):
    monkeypatch.setattr(evaluate_module, "extract_embeddings", fake_extract)


def checkpoints(tmp_path):
    return {"teacher": tmp_path / "bad.pt", "student": tmp_path / "good.pt"}


def test_evaluate_test_vs_test_writes_metrics_report_and_grid(tmp_path, patched):
    index_path = make_index(tmp_path, ["test"] * 20 + ["train"] * 6)
    cfg = EvalConfig(recall_at=(1, 4), examples=3)
    result = evaluate(checkpoints(tmp_path), index_path, tmp_path / "out", cfg, RuntimeConfig())

    metrics = json.loads(result.metrics_path.read_text())
    assert metrics == result.metrics
    assert metrics["protocol"] == "test-vs-test"
    assert metrics["n_queries"] == metrics["n_references"] == 20
    assert set(metrics["models"]) == {"teacher", "student"}
    keys = {"map_at_r", "r_precision", "precision_at_1", "recall_at_1", "recall_at_4"}
    assert all(set(values) == keys for values in metrics["models"].values())
    assert metrics["models"]["student"]["map_at_r"] == 1.0  # tight clusters: perfect

    # the numbers are retrieval_metrics of the written embeddings
    emb = pq.read_table(tmp_path / "out" / "embeddings_teacher.parquet").to_pandas()
    direct = retrieval_metrics(np.stack(emb["embedding"]), emb["label"], recall_at=(1, 4))
    assert metrics["models"]["teacher"] == pytest.approx(direct)

    report = result.report_path.read_text()
    assert "| teacher |" in report and "| student |" in report
    assert "MAP@R" in report and "R@4" in report
    queries = re.findall(r"\*\*(\w+)\*\*, query `([^`]+)`", report)
    assert [model for model, _ in queries] == ["teacher"] * 3 + ["student"] * 3
    assert {q for m, q in queries if m == "teacher"} == {q for m, q in queries if m == "student"}
    # the report names images by path; row 0's label has no other image, so it is never
    # an example query, though it shows up as a (wrong) neighbour
    lone = str(tmp_path / "images" / "0.png")
    assert lone not in {q for _, q in queries}
    assert f"`{lone}` (label 9" in report
    grid = Image.open(tmp_path / "out" / "report_examples.png")
    assert grid.size[1] >= 6 * 100  # one row per (model, example)


def test_evaluate_query_vs_gallery(tmp_path, patched):
    index_path = make_index(tmp_path, ["query"] * 8 + ["gallery"] * 12 + ["train"] * 2)
    cfg = EvalConfig(examples=0)
    result = evaluate(checkpoints(tmp_path), index_path, tmp_path / "out", cfg, RuntimeConfig())
    assert result.metrics["protocol"] == "query-vs-gallery"
    assert result.metrics["n_queries"] == 8 and result.metrics["n_references"] == 12
    assert "## Retrieval examples" not in result.report_path.read_text()
    assert not (tmp_path / "out" / "report_examples.png").exists()


def test_evaluation_protocol():
    assert evaluation_protocol(["train", "test"]) == ("test-vs-test", ["test"])
    assert evaluation_protocol(["query", "gallery"]) == ("query-vs-gallery", ["query", "gallery"])
    with pytest.raises(ValueError, match="needs 'test'"):
        evaluation_protocol(["train", "query"])


def test_select_examples_is_seeded_order_free_and_skips_lone_queries():
    ids = np.array([f"id{i}" for i in range(10)])
    labels = np.array([0, 0, 1, 1, 2, 3, 3, 4, 4, 5])  # 2 and 5 are lone in self-retrieval
    picked = select_examples(ids, labels, None, 5, seed=1)
    assert len(picked) == 5 and not {"id4", "id9"} & set(picked)
    assert select_examples(ids[::-1], labels[::-1], None, 5, seed=1) == picked
    assert select_examples(ids, labels, None, 100, seed=0) == sorted(set(ids) - {"id4", "id9"})
    assert select_examples(ids, labels, np.array([0, 5]), 10, seed=0) == ["id0", "id1", "id9"]


def test_render_metrics_table_and_report():
    models = {
        "teacher": {"map_at_r": 0.2502, "r_precision": 0.3583, "precision_at_1": 0.6528},
        "student": {"map_at_r": None, "r_precision": 0.4, "precision_at_1": 0.7},
    }
    table = render_metrics_table(models)
    assert table.splitlines() == [
        "| model | MAP@R | RP | P@1 |",
        "|---|---|---|---|",
        "| teacher | 25.02 | 35.83 | 65.28 |",
        "| student | n/a | 40.00 | 70.00 |",
    ]
    example = RetrievalExample(
        model="teacher",
        query={"image_id": "q", "path": "/q.jpg", "label": 1, "class_name": "wren"},
        neighbours=[
            {"image_id": "a", "path": "/a.jpg", "label": 1, "class_name": "wren", "correct": True},
            {"image_id": "b", "path": "/b.jpg", "label": 2, "class_name": "", "correct": False},
        ],
    )
    metrics = {"protocol": "test-vs-test", "n_queries": 3, "n_references": 3, "models": models}
    report = render_report(metrics, [example], "grid.png")
    assert "![retrieval examples](grid.png)" in report
    assert "**teacher**, query `/q.jpg` (label 1, wren):" in report
    assert "1. ✓ `/a.jpg` (label 1, wren)" in report
    assert "2. ✗ `/b.jpg` (label 2)" in report
