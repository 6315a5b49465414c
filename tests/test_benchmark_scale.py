"""benchmarks/scale.py times both clustering methods, each labelled, on tiny synthetic rows."""

from __future__ import annotations

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture
def scale(monkeypatch):
    """The script with its per-count child processes run in this one (the same `measure`)."""
    module = load_benchmark("scale")
    monkeypatch.setattr(
        module,
        "in_fresh_process",
        lambda method, rows, argv: module.measure(method, rows, module.parse_args(argv)),
    )
    return module


def test_scale_reports_each_method_with_the_rows_it_fitted(scale, tmp_path):
    argv = [
        "--rows", "1500", "3000", "--rows-per-shard", "1000", "--k", "4", "--sample", "2000",
        "--iterations", "2", "--work", str(tmp_path),
    ]  # fmt: skip
    report = scale.main(argv)
    assert list(report["methods"]) == ["kmeans", "ward"]
    assert (report["rows_per_shard"], report["k"]) == (1000, 4)
    for figures in report["methods"].values():
        assert figures["rows"] == [1500, 3000]
        assert figures["fit_rows"] == [1500, 2000]  # the sample, or every row when fewer
        pairs = zip(figures["cluster_seconds"], figures["seconds"], strict=True)
        assert all(cluster <= total for cluster, total in pairs)
        per_row = [s / r for s, r in zip(figures["seconds"], figures["rows"], strict=True)]
        assert figures["seconds_per_row_ratio"] == round(per_row[1] / per_row[0], 3)
    assert not list(tmp_path.iterdir())  # every scratch dataset was removed


def test_ward_fits_at_most_its_cap_and_kmeans_the_sample(scale):
    args = scale.parse_args(["--sample", "25600"])
    assert scale.fit_sample_size(scale.cluster_config("ward", args)) == 8192
    assert scale.fit_sample_size(scale.cluster_config("kmeans", args)) == 25_600
    assert args.methods == ["kmeans", "ward"]  # both by default


def test_each_child_gets_one_method_and_one_row_count(scale):
    argv = ["--rows", "10", "20", "--methods", "ward", "--k", "4"]
    assert scale._without(argv, ("--rows", "--methods")) == ["--k", "4"]
