"""benchmarks/gpu_check.py: the --quick CPU run goes through every section and writes the
table and JSON; a failing section is reported, not fatal."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def gpu_check():
    return load_benchmark("gpu_check")


@pytest.mark.timeout(600)
def test_quick_run_reports_every_section(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    payload = gpu_check.main(["--quick", "--out", str(out), "--work-dir", str(tmp_path / "w")])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == payload
    assert payload["device"].startswith("cpu") and printed.startswith("device: cpu")
    sections = payload["sections"]
    assert list(sections) == ["throughput test_byobnet", "birds_dense whole trunk"]
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(sections, "ok")
    assert sections["throughput test_byobnet"]["result"]["img_s"]["bare"] > 0
    birds = sections["birds_dense whole trunk"]["result"]
    assert [row["name"] for row in birds["rows"]] == list(gpu_check.BIRD_ROWS)
    # the dense protocol's class ranges: 25 labeled, 25 hidden (+ birds525), 50 test classes
    counts = birds["data_counts"]
    assert (counts["classes_train"], counts["classes_test"]) == (25, 50)
    assert counts["images_unlabeled"] == 25 * 4 + 12 * 2
    assert birds["config"]["model"]["trainable_blocks"] == -1
    table = payload["table"]
    assert table in printed
    assert all(f"| {name} |" in table for name in gpu_check.BIRD_ROWS)
    assert "| full - control, of oracle PL - control |" in table


def test_failed_section_is_recorded_and_written(gpu_check, tmp_path):
    out = tmp_path / "partial.json"
    payload = {"sections": {}}
    gpu_check.run_section("fine", lambda: {"x": 1}, payload, out)
    gpu_check.run_section("broken", lambda: 1 / 0, payload, out)
    gpu_check.run_section(
        "exits", lambda: (_ for _ in ()).throw(SystemExit("no data")), payload, out
    )
    written = json.loads(out.read_text())["sections"]
    assert written["fine"]["status"] == "ok" and written["fine"]["result"] == {"x": 1}
    assert written["broken"]["status"] == "failed"
    assert written["broken"]["error"] == "ZeroDivisionError: division by zero"
    assert written["exits"]["error"] == "SystemExit: no data"
    table = gpu_check.format_table({k: written[k] for k in ("broken", "exits")})
    assert "| broken | FAILED: ZeroDivisionError: division by zero |" in table
