"""EmbeddingNet, weight sources, trainable blocks, checkpoints and the lite0 mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from slade_core import weights
from slade_core.checkpoints import save_checkpoint
from slade_core.config import ModelConfig, RuntimeConfig
from slade_core.device import Precision, resolve_device
from slade_core.images import build_transform, load_rgb
from slade_core.models import create_model, load_model
from slade_core.weights import lite0_package_file, load_lite0_package_weights

CUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "cub100"


def _spec(**kw) -> ModelConfig:
    base = {"backbone": "resnet10t", "weights": "none", "embedding_dim": 16, "image_size": 32}
    return ModelConfig(**(base | kw))


def _images(n=3, size=32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_output_is_normalised_and_shaped():
    model = create_model(_spec()).eval()
    out = model(_images())
    assert out.shape == (3, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    features = model.trunk(_images())
    assert features.shape == (3, model.trunk_dim)
    torch.testing.assert_close(model.embed_features(features), out)


def test_frozen_trunk_has_no_grads_and_stays_eval():
    model = create_model(_spec(trainable_blocks=0))
    assert not model.mode.trains_trunk
    model.train()
    assert not model.trunk.training and model.head.training
    assert all(not m.training for m in model.trunk.modules())
    model(_images()).sum().backward()
    assert all(p.grad is None for p in model.trunk.parameters())
    assert all(p.grad is not None for p in model.head.parameters())


def test_trainable_blocks_unfreezes_only_the_last_n():
    model = create_model(_spec(trainable_blocks=1)).train()
    trainable = {n.split(".")[0] for n, p in model.trunk.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}
    assert model.trunk.layer4.training and not model.trunk.layer3.training
    assert not model.trunk.bn1.training

    lite = create_model(_spec(backbone="tf_efficientnet_lite0", trainable_blocks=2)).train()
    names = [n for n, p in lite.trunk.named_parameters() if p.requires_grad]
    assert {n.split(".")[0] for n in names} == {"blocks", "conv_head", "bn2"}
    assert {n.split(".")[1] for n in names if n.startswith("blocks")} == {"5", "6"}
    assert not lite.trunk.blocks[4].training and lite.trunk.blocks[6].training


def test_trainable_blocks_all_and_too_many():
    model = create_model(_spec(trainable_blocks=-1)).train()
    assert all(p.requires_grad for p in model.parameters()) and model.trunk.training
    with pytest.raises(ValueError, match="has only 4 blocks"):
        create_model(_spec(trainable_blocks=5))


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = create_model(_spec(trainable_blocks=1))
    with torch.no_grad():  # move BN statistics away from their init
        model.train()(_images(8) * 3 + 1)
    meta = {"stage": "teacher", "epoch": 3, "history": [{"loss": 0.5}]}
    path = save_checkpoint(model, tmp_path / "m.pt", meta)
    loaded, loaded_meta = load_model(path)
    assert loaded_meta == meta and loaded.spec == model.spec
    assert torch.equal(loaded.eval()(_images()), model.eval()(_images()))
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "slade-checkpoint-v1" and raw["spec"]["backbone"] == "resnet10t"
    with pytest.raises(TypeError, match="plain python"):
        save_checkpoint(model, tmp_path / "x.pt", {"bad": object()})


def test_weights_from_timm_state_dict_and_slade_checkpoint(tmp_path):
    source = timm.create_model("resnet10t", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "timm.pth")  # has fc.* keys: dropped
    model = create_model(_spec(weights="checkpoint", checkpoint_path=tmp_path / "timm.pth"))
    for name, tensor in model.trunk.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name])

    teacher = create_model(_spec())
    save_checkpoint(teacher, tmp_path / "teacher.pt", {})
    student = create_model(_spec(weights="checkpoint", checkpoint_path=tmp_path / "teacher.pt"))
    assert torch.equal(student.eval()(_images()), teacher.eval()(_images()))


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model(_spec(weights="checkpoint", checkpoint_path=tmp_path / "none.pth"))
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "r.pth")
    wrong = _spec(
        backbone="mobilenetv3_small_050", weights="checkpoint", checkpoint_path=tmp_path / "r.pth"
    )
    with pytest.raises(ValueError, match="do not match the backbone"):
        create_model(wrong)
    with pytest.raises(ValueError, match="not a slade-checkpoint-v1"):
        load_model(tmp_path / "r.pth")


def test_unknown_backbone_and_offline_timm(monkeypatch):
    with pytest.raises(ValueError, match="unknown timm backbone"):
        create_model(_spec(backbone="resnet_does_not_exist"))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(weights.timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="lite0-package"):
        create_model(_spec(weights="timm"))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device("cuda")


def test_cpu_runs_stay_fp32_unless_amp_on_cpu_asks_for_bf16():
    cpu = torch.device("cpu")
    assert Precision.for_runtime(RuntimeConfig(), cpu).dtype is None
    assert Precision.for_runtime(RuntimeConfig(amp=False, amp_on_cpu=True), cpu).dtype is None
    bf16 = Precision.for_runtime(RuntimeConfig(amp_on_cpu=True), cpu, whole_trunk=True)
    assert bf16.dtype == torch.bfloat16 and bf16.channels_last  # runtime.channels_last's default
    whole = RuntimeConfig(channels_last=False)
    assert not Precision.for_runtime(whole, cpu, whole_trunk=True).channels_last
    # a partial trunk on a CPU keeps the default layout (its results stay those of fp32 NCHW)
    assert not Precision.for_runtime(RuntimeConfig(), cpu).channels_last
    assert not bf16.grad_scaler().is_enabled()  # bf16 needs no loss scaling
    model = create_model(_spec(trainable_blocks=-1))
    with bf16.autocast():
        features = model.trunk.forward_features(_images())
    assert features.dtype == torch.bfloat16  # the network really ran in bf16


def test_amp_on_cpu_without_native_bf16_warns_and_still_does_what_it_says(monkeypatch, caplog):
    from slade_core import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    precision = Precision.for_runtime(RuntimeConfig(amp_on_cpu=True), torch.device("cpu"))
    assert precision.dtype == torch.bfloat16
    assert "no native bf16" in caplog.text and "amp_on_cpu=false" in caplog.text


def test_lite0_package_mapping_covers_every_trunk_tensor():
    model = create_model(_spec(backbone="tf_efficientnet_lite0", weights="lite0-package"))
    assert model.normalization() == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    source = torch.load(lite0_package_file(), weights_only=True)
    source = [v for k, v in source.items() if "num_batches" not in k and not k.startswith("_fc")]
    target = [v for k, v in model.trunk.state_dict().items() if "num_batches" not in k]
    assert len(source) == len(target) == 245
    assert all(torch.equal(s, t) for s, t in zip(source, target, strict=True))
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        load_lite0_package_weights(timm.create_model("resnet10t", num_classes=0))


def _classifier() -> torch.nn.Module:
    return load_lite0_package_weights(timm.create_model("tf_efficientnet_lite0")).eval()


def test_lite0_logits_are_finite_on_generated_image():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8))
    x = build_transform(64, False, (0.5,) * 3, (0.5,) * 3)(image)[None]
    with torch.inference_mode():
        assert torch.isfinite(_classifier()(x)).all()


@pytest.mark.skipif(not CUB.is_dir(), reason="../shared/data/cub100 not present")
def test_lite0_recognises_an_albatross():
    path = next((CUB / "images" / "Black_footed_Albatross").glob("*.jpg"))
    x = build_transform(224, False, (0.5,) * 3, (0.5,) * 3)(load_rgb(path))[None]
    with torch.inference_mode():
        assert _classifier()(x).argmax().item() == 146  # ImageNet "albatross, mollymawk"


@pytest.mark.parametrize(
    ("blocks", "frozen", "partial", "whole", "trains", "caches"),
    [
        (0, True, False, False, False, True),
        (1, False, True, False, True, True),
        (-1, False, False, True, True, False),
    ],
)
def test_the_trunk_mode_decides_what_trains_and_what_is_cached(
    blocks, frozen, partial, whole, trains, caches
):
    model = create_model(_spec(trainable_blocks=blocks))
    mode = model.mode
    assert (mode.frozen, mode.partial, mode.whole) == (frozen, partial, whole)
    assert (mode.trains_trunk, mode.caches_prefix) == (trains, caches)
    assert any(p.requires_grad for p in model.trunk.parameters()) == trains
