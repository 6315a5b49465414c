"""The GPU data path: decoded-image cache, on-device augmentation, "auto" loader workers,
and whole-trunk training through them."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from slade_core import decoded, workers
from slade_core.augment import DeviceAugment
from slade_core.config import ModelConfig, OptimConfig, RuntimeConfig, TeacherConfig
from slade_core.decoded import DecodedImages, decoded_file, stored_size
from slade_core.device import Precision
from slade_core.images import UnreadableImageError, build_transform, load_rgb
from slade_core.models import create_model, load_model
from slade_core.training import train_teacher
from slade_core.training.data import DecodedImageSource, ImageSource, make_source

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _write_images(root: Path, n: int = 6) -> pd.DataFrame:
    """Noise images of mixed sizes, orientations and formats (JPEG RGB, PNG gray, PNG
    palette), and an index frame describing them."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        h, w = (37 + 9 * i, 61 - 4 * i) if i % 2 else (70 - 5 * i, 45 + 3 * i)
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        kind = i % 3
        path = root / f"{i}.{'jpg' if kind == 0 else 'png'}"
        if kind == 1:
            image = image.convert("L")
        elif kind == 2:
            image = image.convert("P")
        image.save(path)
        rows.append({"image_id": f"toy/{path.name}", "path": str(path)})
    return pd.DataFrame(rows)


def _pil_reference(path: str, side: int) -> np.ndarray:
    """Plain PIL: decode, bilinear resize of the shorter side to `side`, centre square."""
    with Image.open(path) as im:
        image = im.convert("RGB")
    w, h = image.size
    size = (side, int(side * h / w)) if w <= h else (int(side * w / h), side)
    image = image.resize(size, Image.Resampling.BILINEAR)
    left = int(round((size[0] - side) / 2.0))
    top = int(round((size[1] - side) / 2.0))
    return np.asarray(image.crop((left, top, left + side, top + side)))


def _runtime(tmp_path: Path, **kw) -> RuntimeConfig:
    return RuntimeConfig(device="cpu", feature_cache_dir=tmp_path / "cache", **kw)


# --- the cache ---------------------------------------------------------------------------


def test_cache_equals_direct_pil_decode_resize_crop(tmp_path):
    frame = _write_images(tmp_path / "img")
    path = decoded_file(frame, 56, _runtime(tmp_path), workers=3)
    side = stored_size(56)
    assert side == 64 and path.name.startswith("decoded-64px-")
    cached = np.load(path, mmap_mode="r")
    assert cached.shape == (len(frame), 64, 64, 3) and cached.dtype == np.uint8
    for row, image_path in enumerate(frame["path"]):
        np.testing.assert_array_equal(cached[row], _pil_reference(image_path, side))
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp leftovers


def test_parallel_and_serial_builds_are_identical(tmp_path):
    frame = _write_images(tmp_path / "img")
    one = np.load(decoded_file(frame, 32, _runtime(tmp_path / "a"), workers=1))
    four = np.load(decoded_file(frame, 32, _runtime(tmp_path / "b"), workers=4))
    np.testing.assert_array_equal(one, four)


def test_cache_is_reused_and_rebuilt_when_an_image_changes(tmp_path, monkeypatch):
    frame = _write_images(tmp_path / "img")
    runtime = _runtime(tmp_path)
    first = decoded_file(frame, 32, runtime)
    stamp = first.stat().st_mtime_ns

    def no_rebuild(*args):
        raise AssertionError("the cache was rebuilt although nothing changed")

    with monkeypatch.context() as patch:
        patch.setattr(decoded, "_build", no_rebuild)
        assert decoded_file(frame, 32, runtime.model_copy(update={"seed": 7})) == first
    assert first.stat().st_mtime_ns == stamp

    changed = frame["path"].iloc[2]
    Image.new("RGB", (50, 50), (200, 10, 10)).save(changed)
    os.utime(changed, ns=(stamp + 10**9, stamp + 10**9))  # a visibly newer file
    second = decoded_file(frame, 32, runtime)
    assert second != first and first.is_file()
    old, new = np.load(first), np.load(second)
    np.testing.assert_array_equal(new[2], np.full((36, 36, 3), (200, 10, 10), np.uint8))
    np.testing.assert_array_equal(np.delete(new, 2, 0), np.delete(old, 2, 0))
    assert decoded_file(frame, 48, runtime) not in (first, second)  # another size: own file


def test_corrupt_image_names_the_file_and_leaves_nothing(tmp_path):
    frame = _write_images(tmp_path / "img", n=8)
    bad = Path(frame["path"].iloc[0])  # a JPEG, cut in half
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    runtime = _runtime(tmp_path)
    with pytest.raises(UnreadableImageError, match=rf"{bad.name}.*Replace the file"):
        decoded_file(frame, 32, runtime, workers=2)
    cache = tmp_path / "cache"
    assert not cache.exists() or not list(cache.iterdir())  # no file, no temp file


def test_decoded_images_gather_across_frames(tmp_path):
    frame = _write_images(tmp_path / "img")
    runtime = _runtime(tmp_path)
    files = [decoded_file(frame.iloc[:2], 32, runtime), decoded_file(frame.iloc[2:], 32, runtime)]
    images = DecodedImages(files)
    whole = np.load(decoded_file(frame, 32, runtime))
    assert len(images) == len(frame)
    positions = [5, 0, 2, 1, 5]
    np.testing.assert_array_equal(images.gather(positions), whole[positions])
    with pytest.raises(IndexError):
        images.gather([6])


# --- on-device augmentation --------------------------------------------------------------


def _batch(n=8, side=40, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8))


def test_train_view_shape_dtype_range_and_seed():
    augment = DeviceAugment(24, MEAN, STD)
    batch = _batch()
    out = augment.train_view(batch, torch.Generator().manual_seed(3))
    assert out.shape == (8, 3, 24, 24) and out.dtype == torch.float32
    low = (-torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1)
    high = ((1 - torch.tensor(MEAN)) / torch.tensor(STD)).view(1, 3, 1, 1)
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()
    again = augment.train_view(batch, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    other = augment.train_view(batch, torch.Generator().manual_seed(4))
    assert not torch.allclose(out, other)


def test_crop_boxes_follow_random_resized_crop():
    augment = DeviceAugment(24, MEAN, STD)
    boxes = augment.crop_boxes(2000, 40, torch.Generator().manual_seed(0))
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + w <= 40).all() and (y0 + h <= 40).all()
    area = w * h / 40**2
    assert area.min() >= 0.13 and area.max() <= 1.0  # 0.16-1, up to rounding of w and h
    assert (w / h).min() >= 0.7 and (w / h).max() <= 1.4  # 3/4-4/3, up to rounding
    assert 0.5 < area.mean() < 0.65  # uniform area on [0.16, 1] (fewer big crops fit)


def test_crop_equals_torchvision_resized_crop():
    augment = DeviceAugment(24, (0.0,) * 3, (1 / 255,) * 3, flip=0.0)  # raw pixel values
    batch = _batch()
    boxes = augment.crop_boxes(8, 40, torch.Generator().manual_seed(5))
    out = augment.train_view(batch, torch.Generator().manual_seed(5))
    for i, (x0, y0, w, h) in enumerate(boxes.int().tolist()):
        image = batch[i].permute(2, 0, 1).float()
        expected = TF.resized_crop(image, y0, x0, h, w, [24, 24], antialias=False)
        # equal but for the outermost pixels of an enlarged crop (see slade_core.augment)
        torch.testing.assert_close(
            out[i, :, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=2e-3, rtol=0
        )


def test_flip_flips():
    whole = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}  # the whole image, no resize
    batch = _batch(n=16)
    pixels = batch.permute(0, 3, 1, 2).float()
    raw = DeviceAugment(40, (0.0,) * 3, (1 / 255,) * 3, **whole)
    out = raw.train_view(batch, torch.Generator().manual_seed(0))
    same = [torch.allclose(o, p, atol=1e-3) for o, p in zip(out, pixels, strict=True)]
    mirrored = [torch.allclose(o, p.flip(-1), atol=1e-3) for o, p in zip(out, pixels, strict=True)]
    assert all(s != m for s, m in zip(same, mirrored, strict=True))  # each one or the other
    assert 0 < sum(mirrored) < 16  # p = 0.5: both happen
    always = DeviceAugment(40, (0.0,) * 3, (1 / 255,) * 3, flip=1.0, **whole)
    torch.testing.assert_close(
        always.train_view(batch, torch.Generator()), pixels.flip(-1), atol=1e-3, rtol=0
    )


def test_eval_view_matches_the_pil_eval_transform(tmp_path):
    frame = _write_images(tmp_path / "img")
    cached = torch.from_numpy(np.load(decoded_file(frame, 56, _runtime(tmp_path))))
    out = DeviceAugment(56, MEAN, STD).eval_view(cached)
    assert out.shape == (len(frame), 3, 56, 56) and out.dtype == torch.float32
    reference = build_transform(56, False, MEAN, STD)
    for row, path in enumerate(frame["path"]):
        expected = reference(load_rgb(path))
        # centre crop of the stored centre square: at most one pixel off the direct crop
        shifts = [
            (out[row][:, 1:-1, 1:-1] - expected[:, 1 + dy : 55 + dy, 1 + dx : 55 + dx]).abs().max()
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
        assert min(shifts) < 1e-5


def test_augment_rejects_wrong_input():
    augment = DeviceAugment(24, MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        augment.eval_view(torch.zeros(2, 40, 40, 3))
    with pytest.raises(ValueError, match="side >= 24"):
        augment.eval_view(torch.zeros(2, 20, 20, 3, dtype=torch.uint8))


# --- loader workers ----------------------------------------------------------------------


def test_auto_workers_resolve_to_a_sane_int(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    default = RuntimeConfig()
    assert default.num_workers == "auto"
    n = workers.loader_workers(default)
    assert isinstance(n, int) and 0 <= n <= workers.MAX_AUTO_WORKERS
    assert n == min(workers.MAX_AUTO_WORKERS, workers.usable_cpus() - 1)
    for cpus, processes, expected in [(1, 1, 0), (2, 1, 1), (16, 1, 8), (64, 8, 7), (4, 8, 0)]:
        monkeypatch.setattr(workers, "usable_cpus", lambda cpus=cpus: cpus)
        runtime = RuntimeConfig(processes=processes)
        assert workers.loader_workers(runtime) == expected, (cpus, processes)
    monkeypatch.setattr(workers, "usable_cpus", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun's count wins
    assert workers.loader_workers(RuntimeConfig()) == 3
    assert workers.loader_workers(RuntimeConfig(num_workers=3)) == 3
    assert workers.loader_workers(RuntimeConfig(num_workers=0)) == 0
    assert RuntimeConfig.model_validate({"num_workers": "auto"}).num_workers == "auto"
    for bad in (-1, "many"):
        with pytest.raises(ValueError, match="num_workers"):
            RuntimeConfig(num_workers=bad)


def test_cgroup_quota_caps_usable_cpus(tmp_path, monkeypatch):
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(workers, "_CGROUP_CPU_MAX", cpu_max)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert workers.usable_cpus() == 16  # no file
    cpu_max.write_text("max 100000\n")
    assert workers.usable_cpus() == 16
    cpu_max.write_text("150000 100000\n")
    assert workers.usable_cpus() == 2


# --- whole-trunk training through the decoded path -----------------------------------------

COLOURS = [(230, 30, 30), (30, 200, 30), (30, 30, 230), (230, 230, 30)]


@pytest.fixture(scope="module")
def labeled_index(tmp_path_factory) -> Path:
    """index.parquet: 4 colour classes x 6 images of 40 x 30 px."""
    root = tmp_path_factory.mktemp("labeled")
    rng = np.random.default_rng(1)
    rows = []
    for cls, colour in enumerate(COLOURS):
        for i in range(6):
            path = root / f"{cls}-{i}.jpg"
            pixels = np.clip(np.array(colour) + rng.normal(0, 20, (30, 40, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            rows.append((f"toy/{path.name}", str(path), cls, f"c{cls}", "train", "toy"))
    columns = ["image_id", "path", "label", "class_name", "split", "source"]
    index = root / "index.parquet"
    pd.DataFrame(rows, columns=columns).astype({"label": "int64"}).to_parquet(index)
    return index


def _whole_trunk() -> ModelConfig:
    return ModelConfig(
        backbone="test_byobnet", weights="none", embedding_dim=16, image_size=32,
        trainable_blocks=-1,
    )  # fmt: skip


def _teacher() -> TeacherConfig:
    return TeacherConfig(
        batch_size=8, m_per_class=2, optim=OptimConfig(epochs=2, iterations_per_epoch=2, lr=1e-2)
    )


def test_sources_follow_the_decoded_cache_switch(labeled_index, tmp_path):
    frame = pd.read_parquet(labeled_index)
    net = create_model(_whole_trunk())
    precision = Precision(torch.device("cpu"))
    on = make_source(net, [frame], [[0, 1]], _runtime(tmp_path), precision)
    off = make_source(net, [frame], [[0, 1]], _runtime(tmp_path, decoded_cache=False), precision)
    assert isinstance(on, DecodedImageSource) and isinstance(off, ImageSource)


@pytest.mark.timeout(240)
def test_whole_trunk_teacher_trains_from_the_decoded_cache(labeled_index, tmp_path, monkeypatch):
    runtime = _runtime(tmp_path, num_workers=0)
    torch.manual_seed(0)  # the run seeds with runtime.seed=0 too: same initial weights
    before = create_model(_whole_trunk()).trunk.state_dict()
    first = train_teacher(labeled_index, _whole_trunk(), _teacher(), runtime, tmp_path / "a")
    assert all(math.isfinite(h["loss"]) for h in first.history)
    assert len(list((tmp_path / "cache").glob("decoded-36px-*.npy"))) == 1
    model, _ = load_model(first.checkpoint_path)
    after = model.trunk.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "weight" in k)

    def no_pil(path):
        raise AssertionError(f"PIL decoded {path} during training")

    monkeypatch.setattr(decoded, "load_rgb", no_pil)  # the cache is built: no decoding now

    def kill_after_first(epoch, total, metrics):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")

    # one loader worker, killed after epoch 1 and resumed: the same crops, so the same run
    other = runtime.model_copy(update={"num_workers": 1})
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train_teacher(labeled_index, _whole_trunk(), _teacher(), other, out, kill_after_first)
    again = train_teacher(labeled_index, _whole_trunk(), _teacher(), other, out)
    assert again.history == first.history
    model_b, _ = load_model(again.checkpoint_path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(model_b.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_whole_trunk_teacher_under_torchrun_builds_the_cache_once(labeled_index, tmp_path):
    """Two gloo ranks, a fresh cache: rank 0 builds it while rank 1 waits, both train."""
    from test_distributed import _torchrun

    config = tmp_path / "config.json"
    runtime = _runtime(tmp_path, num_workers=0)
    config.write_text(
        json.dumps(
            {
                "model": _whole_trunk().model_dump(mode="json"),
                "runtime": runtime.model_dump(mode="json"),
                "teacher": _teacher().model_dump(mode="json"),
            }
        )
    )
    out = tmp_path / "two"
    lines = _torchrun(2, "teacher", "--index", labeled_index, "--config", config, "--out", out)
    assert lines[-1] == {"checkpoint": str(out / "teacher.pt"), "processes": 2}
    history = load_model(out / "teacher.pt")[1]["history"]
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    assert [p.name[:13] for p in (tmp_path / "cache").iterdir()] == ["decoded-36px-"]
