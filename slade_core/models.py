"""The embedding network: a timm trunk, a small head, L2-normalised output.

Everything downstream (losses, k-means, metrics) assumes unit-length embeddings, so the
normalisation lives in the model rather than in each caller. The trunk can be frozen
entirely (its features are then cached per augmented view, see `slade_core.features`),
partly (the last n timm parameter groups, e.g. EfficientNet stages or ResNet layers), or
not at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models import group_parameters
from torch import nn

from slade_core.config import ModelConfig
from slade_core.io import atomic_path

CHECKPOINT_FORMAT = "slade-checkpoint-v1"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(name: str = "auto") -> torch.device:
    """Map a runtime device name to a torch device ("auto": CUDA when present, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"runtime.device={name!r} but no CUDA device is visible; use 'auto' or 'cpu'"
        )
    return device


class EmbeddingNet(nn.Module):
    """timm trunk (global pooled features) -> head -> L2-normalised embedding."""

    def __init__(self, spec: ModelConfig, trunk: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.trunk = trunk
        self.trunk_dim = int(trunk.num_features)
        d = spec.embedding_dim
        if spec.head == "linear":
            self.head = nn.Linear(self.trunk_dim, d)
        else:
            self.head = nn.Sequential(
                nn.Linear(self.trunk_dim, self.trunk_dim), nn.GELU(), nn.Linear(self.trunk_dim, d)
            )
        _init_head(self.head)
        self._frozen_modules: list[str] = []
        _apply_trainable_blocks(self, spec.trainable_blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.trunk(images))

    def embed_features(self, trunk_features: torch.Tensor) -> torch.Tensor:
        """Head only: embeddings from (possibly cached) trunk features."""
        return F.normalize(self.head(trunk_features).float(), dim=-1)

    def trainable_trunk(self) -> bool:
        return self.spec.trainable_blocks != 0

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) the trunk's weights expect (timm's pretrained_cfg; lite0: 0.5/0.5)."""
        cfg = getattr(self.trunk, "pretrained_cfg", None) or {}
        mean = tuple(float(v) for v in cfg.get("mean", _IMAGENET_MEAN))
        std = tuple(float(v) for v in cfg.get("std", _IMAGENET_STD))
        return mean, std

    def train(self, mode: bool = True) -> EmbeddingNet:
        """Frozen trunk parts stay in eval mode so BatchNorm statistics never drift."""
        super().train(mode)
        for name in self._frozen_modules:
            self.get_submodule(name).eval()
        return self


def _init_head(head: nn.Module) -> None:
    """Start every head weight as a (semi-)orthogonal matrix.

    With d <= trunk_dim the linear head's rows are orthonormal, so a fresh head is a random
    orthogonal projection of the trunk features (an isometry when d == trunk_dim): it keeps
    their norms and cosine similarities (approximately, Johnson-Lindenstrauss, when d is
    smaller) instead of PyTorch's default uniform weights, which distort them. Training then
    starts from the pretrained trunk's retrieval geometry and refines it. Biases keep
    PyTorch's default small uniform init. Only fresh heads are affected: a checkpoint's head
    weights still load over it.
    """
    for layer in head.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight)


def _apply_trainable_blocks(model: EmbeddingNet, n: int) -> None:
    trunk = model.trunk
    if n == -1:
        trunk.requires_grad_(True)
        return
    trunk.requires_grad_(False)
    if n > 0:
        try:
            groups = group_parameters(trunk, trunk.group_matcher(coarse=True))
        except (AttributeError, NotImplementedError) as e:
            raise ValueError(
                f"backbone {model.spec.backbone!r} does not describe its blocks (no timm "
                "group_matcher), so model.trainable_blocks > 0 is unsupported for it; "
                "use 0 (frozen) or -1 (train everything)"
            ) from e
        blocks = [groups[k] for k in sorted(groups)][1:]  # group 0 is the stem
        if n > len(blocks):
            raise ValueError(
                f"model.trainable_blocks={n} but backbone {model.spec.backbone!r} has only "
                f"{len(blocks)} blocks after its stem; use at most {len(blocks)} or -1 for all"
            )
        params = dict(trunk.named_parameters())
        for group in blocks[-n:]:  # timm folds the final conv/norm into the last group
            for name in group:
                params[name].requires_grad_(True)
    model._frozen_modules = _fully_frozen_modules(trunk, "trunk")
    model.train(model.training)


def _fully_frozen_modules(module: nn.Module, prefix: str) -> list[str]:
    """Top-most submodules none of whose parameters train (they are kept in eval mode)."""
    params = list(module.parameters())
    if all(not p.requires_grad for p in params):
        return [prefix]
    names: list[str] = []
    for child_name, child in module.named_children():
        names += _fully_frozen_modules(child, f"{prefix}.{child_name}")
    return names


def create_model(spec: ModelConfig) -> EmbeddingNet:
    """Build the network with starting weights per `spec.weights` (see ModelConfig)."""
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
        return EmbeddingNet(spec, trunk)
    trunk = _bare_trunk(spec.backbone)
    if spec.weights == "lite0-package":
        from slade_core.pretrained import load_lite0_package_weights

        load_lite0_package_weights(trunk)
        return EmbeddingNet(spec, trunk)
    if spec.weights == "checkpoint":
        return _from_weights_file(spec, trunk)
    return EmbeddingNet(spec, trunk)


def _bare_trunk(backbone: str) -> nn.Module:
    _check_backbone_name(backbone)
    return timm.create_model(backbone, pretrained=False, num_classes=0)


def _check_backbone_name(backbone: str) -> None:
    if not timm.is_model(backbone):
        close = timm.list_models(f"*{backbone.split('_')[0]}*")[:10]
        raise ValueError(
            f"unknown timm backbone {backbone!r}; similar names: {', '.join(close) or 'none'} "
            "(see timm.list_models())"
        )


def _from_weights_file(spec: ModelConfig, trunk: nn.Module) -> EmbeddingNet:
    """Start from a slade checkpoint (trunk, plus head when it fits) or a timm state_dict."""
    path = Path(spec.checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.checkpoint_path {str(path)!r} does not exist; point it at a timm "
            "state_dict (.pth) or a slade checkpoint (.pt)"
        )
    obj = torch.load(path, map_location="cpu", weights_only=True)
    head_state: dict[str, torch.Tensor] = {}
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state = obj["state_dict"]
        trunk_state = {k[6:]: v for k, v in state.items() if k.startswith("trunk.")}
        old = obj["spec"]
        if old.get("head") == spec.head and old.get("embedding_dim") == spec.embedding_dim:
            head_state = {k[5:]: v for k, v in state.items() if k.startswith("head.")}
    else:
        trunk_state = _unwrap_state_dict(obj, path)
    classifier = (getattr(trunk, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(classifier, str):
        trunk_state = {k: v for k, v in trunk_state.items() if not k.startswith(classifier + ".")}
    _load_exact(trunk, trunk_state, f"{path} (backbone {spec.backbone!r})")
    model = EmbeddingNet(spec, trunk)
    if head_state:
        model.head.load_state_dict(head_state)
    return model


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


def _load_exact(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
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


def save_checkpoint(model: EmbeddingNet, path: str | os.PathLike, meta: dict) -> Path:
    """Write a slade-checkpoint-v1 file atomically (loadable with weights_only=True)."""
    try:
        json.dumps(meta)
    except TypeError as e:
        raise TypeError(f"checkpoint meta must hold plain python types only: {e}") from e
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": model.spec.model_dump(mode="json"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[EmbeddingNet, dict]:
    """Rebuild a model from a slade checkpoint (no weight download: all weights are in it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    obj = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a {CHECKPOINT_FORMAT} file; to start from a timm state_dict use "
            "ModelConfig(weights='checkpoint', checkpoint_path=...) with create_model"
        )
    spec = ModelConfig.model_validate(obj["spec"])
    model = EmbeddingNet(spec, _bare_trunk(spec.backbone))
    _load_exact(model, obj["state_dict"], str(path))
    return model.to(map_location), obj["meta"]
