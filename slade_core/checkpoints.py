"""The slade checkpoint file: one torch.save of {format, spec, state_dict, meta}.

Plain tensors and JSON-able python only, so it loads with weights_only=True and carries
every weight: `models.load_model` rebuilds the network from it without a download, and
`ModelConfig(weights="checkpoint")` starts a new network from it (`slade_core.weights`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from slade_core.io import atomic_path

if TYPE_CHECKING:
    from slade_core.models import EmbeddingNet

CHECKPOINT_FORMAT = "slade-checkpoint-v1"


def is_checkpoint(obj: Any) -> bool:
    """Whether a torch.load result is a slade checkpoint (and not, e.g., a timm state_dict)."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


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


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The payload of a slade checkpoint file; a clear error for anything else."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    obj = torch.load(path, map_location=map_location, weights_only=True)
    if not is_checkpoint(obj):
        raise ValueError(
            f"{path} is not a {CHECKPOINT_FORMAT} file; to start from a timm state_dict use "
            "ModelConfig(weights='checkpoint', checkpoint_path=...) with create_model"
        )
    return obj


def checkpoint_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The ModelConfig fields a checkpoint payload was saved with. Checkpoints written while
    ModelConfig had a `head` field record it; "linear" is the head every model has now."""
    spec = dict(obj["spec"])
    head = spec.pop("head", "linear")
    if head != "linear":
        raise ValueError(
            f"this checkpoint has a {head!r} head, which slade no longer builds (the head is "
            "one linear layer); retrain it, or start from its trunk with a timm state_dict"
        )
    return spec
