import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from slade_core.checkpoints import save_checkpoint
from slade_core.config import (
    BasisConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    StudentConfig,
    TeacherConfig,
)
from slade_core.device import Precision
from slade_core.models import create_model, load_model
from slade_core.training import TrainResult, train_student, train_teacher
from slade_core.training.loop import RESUME_FILE, run_epochs

STUDENT_METRICS = {
    "loss", "loss_rank", "loss_rank_unlabeled", "loss_ce", "loss_reg", "mined_pos",
    "mined_neg", "grad_rank", "grad_rank_unlabeled", "grad_ce", "grad_reg",
    "duplicate_fraction", "lr",
}  # fmt: skip
STATS = {"mu_pos", "mu_neg", "sigma_pos", "sigma_neg"}

# Well separated class colours (RGB), one per class.
COLOURS = [
    (230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30), (30, 230, 230),
    (230, 30, 230), (130, 60, 10), (250, 250, 250), (10, 10, 10), (120, 120, 200),
]  # fmt: skip


def _image(path, colour, rng):
    """A class-coloured 32 px square with noise and a random dark patch."""
    pixels = np.clip(np.array(colour) + rng.normal(0, 12, (32, 32, 3)), 0, 255)
    y, x = rng.integers(0, 24, 2)
    pixels[y : y + 8, x : x + 8] *= 0.3
    Image.fromarray(pixels.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """index.parquet: 5 train classes x 6, 20 unlabeled (5 hidden classes), 10 test rows,
    and pseudo_labels.parquet that clusters the unlabeled rows by their hidden class."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = []

    def add(split, cls, n, label):
        for i in range(n):
            path = root / f"{split}-{cls}-{i}.png"
            _image(path, COLOURS[cls], rng)
            rows.append(
                {
                    "image_id": f"toy/{path.name}",
                    "path": str(path),
                    "label": label(cls),
                    "class_name": "" if label(cls) < 0 else f"c{cls}",
                    "split": split,
                    "source": "toy",
                }
            )

    for cls in range(5):
        add("train", cls, 6, lambda c: c)
    for cls in range(5, 10):
        add("unlabeled", cls, 4, lambda c: -1)
        add("test", cls, 2, lambda c: c)
    frame = pd.DataFrame(rows).astype({"label": "int64"})
    index = root / "index.parquet"
    frame.to_parquet(index, index=False)
    unlabeled = frame[frame["split"] == "unlabeled"]
    pseudo = pa.table(
        {
            "image_id": unlabeled["image_id"].tolist(),
            "cluster": pa.array(
                [int(i.split("-")[1]) - 5 for i in unlabeled["image_id"]], pa.int64()
            ),
            "distance": pa.array(np.zeros(len(unlabeled)), pa.float32()),
        }
    ).replace_schema_metadata({b"slade.k": b"5", b"slade.seed": b"0"})
    pq.write_table(pseudo, root / "pseudo_labels.parquet")
    return {"index": index, "pseudo": root / "pseudo_labels.parquet", "cache": root / "cache"}


def _model(trainable_blocks=0):
    return ModelConfig(
        backbone="test_byobnet",
        weights="none",
        embedding_dim=16,
        image_size=32,
        trainable_blocks=trainable_blocks,
    )


def _runtime(dataset, seed=0):
    return RuntimeConfig(device="cpu", feature_cache_dir=dataset["cache"], seed=seed,
                         cached_views=2, batch_size=16)  # fmt: skip


def _teacher(epochs=2, iterations=4, lr=1e-2):
    return TeacherConfig(
        batch_size=8,
        m_per_class=2,
        optim=OptimConfig(epochs=epochs, lr=lr, iterations_per_epoch=iterations),
    )


def _state(path):
    model, meta = load_model(path)
    return model.state_dict(), meta


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_teacher_loss_decreases_on_separable_data(dataset, tmp_path):
    seen = []
    result = train_teacher(
        dataset["index"], _model(), _teacher(epochs=6, iterations=6), _runtime(dataset),
        tmp_path, on_epoch=lambda e, n, m: seen.append((e, n, m)),
    )  # fmt: skip
    assert isinstance(result, TrainResult)
    assert result.checkpoint_path == tmp_path / "teacher.pt"
    assert (tmp_path / "history.json").is_file() and not (tmp_path / RESUME_FILE).exists()
    losses = [h["loss"] for h in result.history]
    assert [e for e, _, _ in seen] == list(range(1, 7)) and all(n == 6 for _, n, _ in seen)
    assert set(seen[0][2]) == {"loss", "duplicate_fraction", "lr"}
    assert losses[-1] < 0.7 * losses[0], losses
    _, meta = _state(result.checkpoint_path)
    assert meta["stage"] == "teacher" and meta["history"] == result.history


def test_teacher_resume_after_kill_equals_uninterrupted_run(dataset, tmp_path):
    runtime, teacher = _runtime(dataset), _teacher(epochs=3)
    full = train_teacher(dataset["index"], _model(), teacher, runtime, tmp_path / "full")

    def kill_after_first(epoch, total, metrics):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")

    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train_teacher(dataset["index"], _model(), teacher, runtime, out, kill_after_first)
    assert (out / RESUME_FILE).is_file() and not (out / "teacher.pt").exists()
    resumed = train_teacher(dataset["index"], _model(), teacher, runtime, out)
    assert resumed.history == full.history
    _assert_same(_state(full.checkpoint_path)[0], _state(resumed.checkpoint_path)[0])

    again = train_teacher(dataset["index"], _model(), teacher, runtime, tmp_path / "again")
    assert again.history == full.history
    _assert_same(_state(full.checkpoint_path)[0], _state(again.checkpoint_path)[0])
    other = train_teacher(
        dataset["index"], _model(), teacher, _runtime(dataset, seed=1), tmp_path / "other"
    )
    assert other.history != full.history


def test_stale_resume_file_from_other_config_is_ignored(dataset, tmp_path):
    def kill(epoch, total, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_teacher(dataset["index"], _model(), _teacher(), _runtime(dataset), tmp_path, kill)
    changed = _teacher(lr=5e-3)
    result = train_teacher(dataset["index"], _model(), changed, _runtime(dataset), tmp_path)
    fresh = train_teacher(dataset["index"], _model(), changed, _runtime(dataset), tmp_path / "f")
    assert result.history == fresh.history


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    return save_checkpoint(create_model(_model()), path, {"stage": "teacher"})


def _student(use_basis, use_mining, regularizer="sd", epochs=2, warmup=2):
    return StudentConfig(
        labeled_batch_size=8,
        unlabeled_batch_size=8,
        m_per_class=2,
        use_basis=use_basis,
        use_mining=use_mining,
        basis=BasisConfig(size=8, regularizer=regularizer, warmup_iterations=warmup),
        optim=OptimConfig(epochs=epochs, lr=1e-2, iterations_per_epoch=3),
    )


@pytest.mark.parametrize(
    ("use_basis", "use_mining", "regularizer"),
    [(False, False, "sd"), (True, False, "sd"), (True, True, "sd"), (True, True, "global_ce"),
     (True, True, "local_ce"), (True, False, "none")],
)  # fmt: skip
def test_student_runs_for_each_ablation(
    dataset, teacher_checkpoint, tmp_path, use_basis, use_mining, regularizer
):
    cfg = _student(use_basis, use_mining, regularizer)
    result = train_student(
        dataset["index"], dataset["pseudo"], teacher_checkpoint, _model(), cfg,
        _runtime(dataset), tmp_path,
    )  # fmt: skip
    assert result.checkpoint_path == tmp_path / "student.pt"
    last = result.history[-1]
    assert set(last) >= STUDENT_METRICS
    assert all(math.isfinite(v) for v in last.values()), last
    assert last["loss_rank"] > 0 and last["loss_rank_unlabeled"] >= 0
    if use_basis:
        assert set(last) >= STATS and last["loss_ce"] > 0
        assert (tmp_path / "basis.pt").is_file()
    else:
        assert not STATS & set(last) and last["loss_ce"] == 0
        assert last["mined_pos"] > 0 and last["mined_neg"] > 0  # every pseudo-label pair
    if use_mining:  # the basis-similarity miner found pairs for L_rank(D_u)
        assert last["mined_pos"] > 0 and last["mined_neg"] > 0, last
    model, meta = load_model(result.checkpoint_path)
    assert meta["stage"] == "student" and meta["clusters"] == 5 and meta["labeled_classes"] == 5
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 16)


class _NumberedBatches:
    """3 batches per epoch; batch i of epoch e holds the number 10 e + i."""

    def __len__(self):
        return 3

    def batches(self, epoch):
        for i in range(3):
            yield torch.full((2, 1), 10.0 * epoch + i), torch.tensor([i, i])


def _run_numbered(out_dir, warmup_steps, on_epoch=None):
    """run_epochs over _NumberedBatches (2 epochs, cosine); per step: (batch number, warm-up
    flag, head lr, network weight, basis weight) as the step saw them."""
    torch.manual_seed(0)
    net, basis = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    groups = [{"params": net.parameters()}, {"params": basis.parameters()}]
    optimizer = torch.optim.SGD(groups, lr=0.1)
    seen = []

    def step(inputs, positions, warmup):
        group = optimizer.param_groups[0]["lr"]
        weights = float(net.weight.detach()), float(basis.weight.detach())
        seen.append((float(inputs[0, 0]), warmup, group, *weights))
        with torch.set_grad_enabled(not warmup):
            embeddings = net(inputs)
        return basis(embeddings).pow(2).mean(), {}

    run_epochs(
        stage="s", out_dir=out_dir, config_hash="h", epochs=2, source=_NumberedBatches(),
        step=step, modules={"net": net, "basis": basis}, optimizer=optimizer,
        precision=Precision(torch.device("cpu")), on_epoch=on_epoch, schedule="cosine",
        warmup_steps=warmup_steps,
    )  # fmt: skip
    return seen


def test_warmup_precedes_the_epochs_and_leaves_the_network_alone(tmp_path):
    plain = _run_numbered(tmp_path / "plain", 0)
    warm = _run_numbered(tmp_path / "warm", 5)
    # 5 warm-up steps on epoch 0's batches (cycled), then every step of the plain run
    assert [(n, w) for n, w, *_ in warm[:5]] == [(n, True) for n in (0, 1, 2, 0, 1)]
    assert [(n, w, lr) for n, w, lr, *_ in warm[5:]] == [(n, w, lr) for n, w, lr, *_ in plain]
    assert all(not w for _, w, *_ in plain) and warm[5][2] == plain[0][2] == pytest.approx(0.1)
    # only the basis learned during warm-up
    assert warm[5][3] == plain[0][3] and warm[5][4] != plain[0][4]


def test_warmup_is_not_repeated_on_resume(tmp_path):
    def kill(epoch, total, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run_numbered(tmp_path, 2, kill)
    resumed = _run_numbered(tmp_path, 2)
    assert [(n, w) for n, w, *_ in resumed] == [(20, False), (21, False), (22, False)]


def test_student_warmup_does_not_shorten_joint_training(dataset, teacher_checkpoint, tmp_path):
    cfg = _student(True, True, epochs=1, warmup=100)  # more warm-up than the 3 epoch steps
    result = train_student(
        dataset["index"], dataset["pseudo"], teacher_checkpoint, _model(), cfg,
        _runtime(dataset), tmp_path,
    )  # fmt: skip
    assert result.history[0]["loss_rank"] > 0  # the epoch's steps trained the network
    teacher, student = _state(teacher_checkpoint)[0], _state(result.checkpoint_path)[0]
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)


def test_student_resume_after_kill_equals_uninterrupted_run(dataset, teacher_checkpoint, tmp_path):
    cfg, runtime = _student(True, True, epochs=2, warmup=2), _runtime(dataset)
    args = (dataset["index"], dataset["pseudo"], teacher_checkpoint, _model(), cfg, runtime)
    full = train_student(*args, tmp_path / "full")

    def kill(epoch, total, metrics):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_student(*args, tmp_path / "killed", kill)
    resumed = train_student(*args, tmp_path / "killed")
    assert resumed.history == full.history
    _assert_same(_state(full.checkpoint_path)[0], _state(resumed.checkpoint_path)[0])
    _assert_same(
        torch.load(tmp_path / "full" / "basis.pt", weights_only=True),
        torch.load(tmp_path / "killed" / "basis.pt", weights_only=True),
    )


def test_stale_pseudo_labels_are_rejected(dataset, teacher_checkpoint, tmp_path):
    bad = tmp_path / "pseudo.parquet"
    pd.DataFrame({"image_id": ["elsewhere/x.png"], "cluster": [0], "distance": [0.0]}).to_parquet(
        bad
    )
    with pytest.raises(ValueError, match="another index"):
        train_student(
            dataset["index"], bad, teacher_checkpoint, _model(), _student(True, True),
            _runtime(dataset), tmp_path,
        )  # fmt: skip


def test_trainable_trunk_trains_on_images(dataset, tmp_path):
    model = _model(trainable_blocks=-1)
    torch.manual_seed(0)  # the run seeds with runtime.seed=0 too: same initial weights
    before = create_model(model).trunk.state_dict()
    result = train_teacher(
        dataset["index"], model, _teacher(epochs=1, iterations=1), _runtime(dataset), tmp_path
    )
    assert math.isfinite(result.history[0]["loss"])
    trunk = {k[6:]: v for k, v in _state(result.checkpoint_path)[0].items() if k[:6] == "trunk."}
    assert any(not torch.equal(before[k], trunk[k]) for k in before if "weight" in k)
    student = train_student(
        dataset["index"], dataset["pseudo"], result.checkpoint_path, model,
        _student(True, True, epochs=1, warmup=0), _runtime(dataset), tmp_path / "s",
    )  # fmt: skip
    assert math.isfinite(student.history[0]["loss"])
