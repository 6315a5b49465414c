"""torchrun (DDP on gloo, CPU) runs of the training CLI on a tiny generated index."""

import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from slade_core.checkpoints import save_checkpoint
from slade_core.config import ModelConfig, OptimConfig, RuntimeConfig, TeacherConfig
from slade_core.models import create_model, load_model
from slade_core.samplers import MPerClassBatchSampler
from slade_core.training import launch_teacher, train_teacher
from slade_core.training.__main__ import main
from slade_core.training.distributed import Distributed
from slade_core.training.launch import torchrun_command
from slade_core.training.loop import RESUME_FILE

COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230),
           (230, 30, 230), (130, 60, 10), (250, 250, 250)]  # fmt: skip
MODEL = ModelConfig(backbone="test_byobnet", weights="none", embedding_dim=16, image_size=32)
TEACHER = TeacherConfig(
    batch_size=8, m_per_class=2, optim=OptimConfig(epochs=2, lr=1e-2, iterations_per_epoch=3)
)
STUDENT = {
    "labeled_batch_size": 8,
    "unlabeled_batch_size": 8,
    "m_per_class": 2,
    "basis": {"size": 8, "warmup_iterations": 2},
    "optim": {"epochs": 1, "lr": 1e-2, "iterations_per_epoch": 3},
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """index.parquet (4 train classes x 4, 4 hidden unlabeled classes x 3) + pseudo labels."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = []
    for cls, colour in enumerate(COLOURS):
        split, n = ("train", 4) if cls < 4 else ("unlabeled", 3)
        for i in range(n):
            path = root / f"{split}-{cls}-{i}.png"
            pixels = np.clip(np.array(colour) + rng.normal(0, 12, (32, 32, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            rows.append({"image_id": f"toy/{path.name}", "path": str(path),
                         "label": cls if split == "train" else -1, "class_name": "",
                         "split": split, "source": "toy"})  # fmt: skip
    frame = pd.DataFrame(rows).astype({"label": "int64"})
    frame.to_parquet(root / "index.parquet", index=False)
    unlabeled = frame[frame["split"] == "unlabeled"]
    clusters = [int(i.split("-")[1]) - 4 for i in unlabeled["image_id"]]
    pq.write_table(
        pa.table({"image_id": unlabeled["image_id"].tolist(),
                  "cluster": pa.array(clusters, pa.int64()),
                  "distance": pa.array(np.zeros(len(clusters)), pa.float32())}),
        root / "pseudo_labels.parquet",
    )  # fmt: skip
    return root


def _runtime(cache):
    return RuntimeConfig(device="cpu", feature_cache_dir=cache, cached_views=2, batch_size=16)


def _config(path, cache, **sections):
    config = {
        "model": MODEL.model_dump(mode="json"),
        "runtime": _runtime(cache).model_dump(mode="json"),
        "teacher": TEACHER.model_dump(mode="json"),
        **sections,
    }
    path.write_text(json.dumps(config))
    return path


def _torchrun(nproc, *args):
    """Run the training CLI under torchrun; return its stdout lines (fails on non-zero)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*torchrun, f"--nproc_per_node={nproc}", "-m", "slade_core.training", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _weights(path):
    return load_model(path)[0].state_dict()


def test_sharded_slices_rebuild_each_global_batch():
    sampler = MPerClassBatchSampler(np.repeat(np.arange(6), 3), 2, 8, seed=0, batches_per_epoch=3)
    shards = [Distributed(r, 4).shard(sampler, 8) for r in range(4)]
    for shard in shards:
        shard.set_epoch(2)
    sampler.set_epoch(2)
    rebuilt = [sum(parts, []) for parts in zip(*shards, strict=True)]
    assert rebuilt == list(sampler) and len(shards[0]) == 3
    assert Distributed().shard(sampler, 8) is sampler
    with pytest.raises(ValueError, match="multiple of the process count"):
        Distributed(0, 3).shard(sampler, 8)


@pytest.mark.slow
def test_teacher_under_torchrun_matches_single_process(dataset, tmp_path):
    index = dataset / "index.parquet"
    reference = train_teacher(index, MODEL, TEACHER, _runtime(tmp_path / "c1"), tmp_path / "ref")

    config = _config(tmp_path / "config.json", tmp_path / "c1")
    lines = _torchrun(1, "teacher", "--index", index, "--config", config, "--out", tmp_path / "one")
    one = _weights(tmp_path / "one" / "teacher.pt")
    for name, tensor in _weights(reference.checkpoint_path).items():
        assert torch.equal(tensor, one[name]), name
    assert [line["epoch"] for line in lines[:-1]] == [1, 2]

    # Two ranks, a fresh feature cache (rank 0 fills it, rank 1 waits): the same global
    # batches and gradients, so the weights agree up to float round-off.
    config = _config(tmp_path / "config2.json", tmp_path / "c2")
    out = tmp_path / "two"
    lines = _torchrun(2, "teacher", "--index", index, "--config", config, "--out", out)
    assert [line.get("epoch") for line in lines] == [1, 2, None]  # rank 0 alone reports
    assert lines[-1] == {"checkpoint": str(out / "teacher.pt"), "processes": 2}
    assert sorted(p.name for p in out.iterdir()) == ["history.json", "teacher.pt"]
    two, meta = load_model(out / "teacher.pt")
    assert not (out / RESUME_FILE).exists() and len(meta["history"]) == 2
    for name, tensor in two.state_dict().items():
        torch.testing.assert_close(tensor, one[name], rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(meta["history"], reference.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.slow
def test_partial_trunk_under_torchrun_keeps_batchnorm_and_matches_single_process(dataset, tmp_path):
    """Two ranks train the last block on cached maps: no SyncBatchNorm, the loaded BatchNorm
    statistics stay, and the weights agree with one process up to float round-off."""
    index = dataset / "index.parquet"
    partial = MODEL.model_copy(update={"trainable_blocks": 1})
    one = train_teacher(index, partial, TEACHER, _runtime(tmp_path / "c"), tmp_path / "one")
    config = _config(tmp_path / "config.json", tmp_path / "c", model=partial.model_dump())
    _torchrun(2, "teacher", "--index", index, "--config", config, "--out", tmp_path / "two")
    two = _weights(tmp_path / "two" / "teacher.pt")
    torch.manual_seed(0)
    loaded = create_model(partial).state_dict()
    for name, tensor in _weights(one.checkpoint_path).items():
        # AdamW's normalised steps amplify the all-gather's float round-off a little (~1e-4)
        torch.testing.assert_close(two[name], tensor, rtol=1e-3, atol=5e-4, msg=name)
        if name.endswith(("running_mean", "running_var")):
            assert torch.equal(two[name], loaded[name]), name


@pytest.mark.slow
def test_student_under_torchrun(dataset, tmp_path):
    """Two ranks through basis warm-up, mining and the basis regulariser."""
    teacher = save_checkpoint(create_model(MODEL), tmp_path / "teacher.pt", {"stage": "teacher"})
    config = _config(tmp_path / "config.json", tmp_path / "c", student=STUDENT)
    out = tmp_path / "student"
    lines = _torchrun(2, "student", "--index", dataset / "index.parquet", "--pseudo-labels",
                      dataset / "pseudo_labels.parquet", "--teacher", teacher,
                      "--config", config, "--out", out)  # fmt: skip
    assert lines[-1]["checkpoint"] == str(out / "student.pt")
    assert sorted(p.name for p in out.iterdir()) == ["basis.pt", "history.json", "student.pt"]
    history = load_model(out / "student.pt")[1]["history"]
    assert history[0]["loss_ce"] > 0 and history[0]["loss_rank"] > 0


def test_bad_config_fails_with_nonzero_exit(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"teachr": {}}))
    with pytest.raises(SystemExit) as exit_:
        main(["teacher", "--index", "x.parquet", "--config", str(config), "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "unknown sections ['teachr']" in capsys.readouterr().err


@pytest.mark.slow
def test_launch_teacher_relays_epochs_and_returns_the_result(dataset, tmp_path):
    """The stage-facing launcher: same result shape as train_teacher, epochs relayed."""
    seen = []
    runtime = _runtime(tmp_path / "c").model_copy(update={"processes": 2})
    out = tmp_path / "launched"
    result = launch_teacher(
        dataset / "index.parquet", MODEL, TEACHER, runtime, out,
        on_epoch=lambda epoch, total, metrics: seen.append((epoch, total, sorted(metrics))),
    )  # fmt: skip
    assert result.checkpoint_path == out / "teacher.pt" and result.checkpoint_path.is_file()
    assert [(e, t) for e, t, _ in seen] == [(1, 2), (2, 2)]
    assert "loss" in seen[0][2] and [h["epoch"] for h in result.history] == [1, 2]


@pytest.mark.slow
def test_launch_failure_carries_the_ranks_log(tmp_path):
    runtime = RuntimeConfig(device="cpu", processes=2)
    with pytest.raises(RuntimeError, match="failed with exit code") as failure:
        launch_teacher(tmp_path / "missing.parquet", MODEL, TEACHER, runtime, tmp_path / "out")
    assert "missing.parquet" in str(failure.value)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_one_node_is_standalone_and_several_meet_at_the_rendezvous(tmp_path):
    config = _config(tmp_path / "config.json", tmp_path / "c")
    one = torchrun_command("teacher", ["--index", "i"], RuntimeConfig(), config, tmp_path)
    assert "--standalone" in one and not any(a.startswith("--nnodes") for a in one)
    runtime = RuntimeConfig(nnodes=2, processes=4, rdzv_endpoint="10.0.0.1:29400")
    two = torchrun_command("teacher", ["--index", "i"], runtime, config, tmp_path)
    assert "--standalone" not in two
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29400"} <= set(two)
    assert "--nproc_per_node=4" in two
    (run_id,) = [a for a in two if a.startswith("--rdzv-id=slade-teacher-")]
    # the same on every node (derived from the inputs, not the machine), another per input
    assert run_id in torchrun_command("teacher", ["--index", "i"], runtime, config, tmp_path)
    assert run_id not in torchrun_command("teacher", ["--index", "j"], runtime, config, tmp_path)
    with pytest.raises(ValueError, match="runtime.rdzv_endpoint"):
        torchrun_command("teacher", [], RuntimeConfig(nnodes=2), config, tmp_path)
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        RuntimeConfig(rdzv_endpoint="no-port")


@pytest.mark.slow
def test_two_nodes_over_c10d_rendezvous_train_like_one_process(dataset, tmp_path):
    """Two torchrun agents on 127.0.0.1 (one process each, gloo) sharing one output dir."""
    index = dataset / "index.parquet"
    reference = train_teacher(index, MODEL, TEACHER, _runtime(tmp_path / "c1"), tmp_path / "ref")
    runtime = _runtime(tmp_path / "c2").model_copy(
        update={"nnodes": 2, "rdzv_endpoint": f"127.0.0.1:{_free_port()}"}
    )
    out = tmp_path / "shared"
    with ThreadPoolExecutor(2) as pool:
        nodes = [pool.submit(launch_teacher, index, MODEL, TEACHER, runtime, out) for _ in "ab"]
        results = [node.result(timeout=240) for node in nodes]
    assert {r.checkpoint_path for r in results} == {out / "teacher.pt"}
    two, meta = load_model(out / "teacher.pt")
    assert len(meta["history"]) == 2
    (log,) = out.glob("teacher_launch-*.log")  # per host and pid (both threads share them)
    assert "--rdzv-backend=c10d" in log.read_text().splitlines()[0]  # how other nodes join
    for name, tensor in _weights(reference.checkpoint_path).items():
        torch.testing.assert_close(two.state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
