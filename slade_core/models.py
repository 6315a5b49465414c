"""The embedding network: a timm trunk, a small head, L2-normalised output.

Everything downstream (losses, k-means, metrics) assumes unit-length embeddings, so the
normalisation lives in the model rather than in each caller. The trunk can be frozen
entirely, partly (the last n timm parameter groups, e.g. EfficientNet stages or ResNet
layers), or not at all.

The network is a chain `prefix -> suffix -> head`: the prefix is everything that does not
train (the whole trunk with its pooling when frozen, the stages before the first trainable
one otherwise, nothing when the whole trunk trains). A frozen prefix is a pure function of
the image, so its output is computed once per augmented view and cached
(`slade_core.features`); training then runs only the suffix and head. That is what makes
partial-trunk training fit on a CPU.

BatchNorm: with `batchnorm="frozen"` (the default) every trunk BatchNorm layer keeps its
loaded running statistics while the trunk trains (eval mode; its affine weights still train
where their block does). Re-estimating them from small m-per-class batches of aggressive
crops collapses the embedding at eval time (../shared/reference/FINDINGS.md section 2).

`create_model` builds the network with its starting weights (`slade_core.weights`);
`load_model` rebuilds a trained one from its checkpoint file (`slade_core.checkpoints`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models import group_parameters
from torch import nn

from slade_core.checkpoints import checkpoint_spec, read_checkpoint
from slade_core.config import ModelConfig
from slade_core.trunk import TrunkMode
from slade_core.weights import bare_trunk, load_exact, starting_trunk

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class EmbeddingNet(nn.Module):
    """timm trunk (global pooled features) -> head -> L2-normalised embedding."""

    def __init__(self, spec: ModelConfig, trunk: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.mode = TrunkMode.of(spec)
        self.trunk = trunk
        self.trunk_dim = int(trunk.num_features)
        d = spec.embedding_dim
        self.head = nn.Linear(self.trunk_dim, d)
        _init_head(self.head)
        self._frozen_modules: list[str] = []
        _apply_trainable_blocks(self, self.mode.blocks)
        self._prefix_names: list[str] = []
        self._suffix_names: list[str] = []
        if self.mode.partial:
            self._prefix_names, self._suffix_names = _split_chain(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed_features(self.prefix(images))

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen part: pooled trunk features (frozen trunk), the feature maps before
        the first trainable stage (partial trunk), or the images themselves (whole trunk)."""
        if self.mode.frozen:
            return self.trunk(images)
        if self.mode.whole:
            return images
        return self._run(self._prefix_names, images)

    def embed_features(self, prefix_output: torch.Tensor) -> torch.Tensor:
        """Suffix and head: embeddings from (possibly cached) prefix outputs."""
        return F.normalize(self.head(self.suffix(prefix_output)).float(), dim=-1)

    def suffix(self, prefix_output: torch.Tensor) -> torch.Tensor:
        """The trainable trunk part, ending in pooled [B, trunk_dim] features."""
        if self.mode.frozen:
            return prefix_output
        if self.mode.whole:
            return self.trunk(prefix_output)
        maps = self._run(self._suffix_names, prefix_output)
        return self.trunk.forward_head(maps, pre_logits=True)

    def _run(self, names: list[str], x: torch.Tensor) -> torch.Tensor:
        for name in names:
            x = self.get_submodule(name)(x)
        return x

    def prefix_modules(self) -> list[str]:
        """Names (relative to the net) of the modules that make the prefix."""
        if self.mode.frozen:
            return ["trunk"]
        return list(self._prefix_names)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) the trunk's weights expect (timm's pretrained_cfg; lite0: 0.5/0.5)."""
        cfg = getattr(self.trunk, "pretrained_cfg", None) or {}
        mean = tuple(float(v) for v in cfg.get("mean", _IMAGENET_MEAN))
        std = tuple(float(v) for v in cfg.get("std", _IMAGENET_STD))
        return mean, std

    def train(self, mode: bool = True) -> EmbeddingNet:
        """Frozen trunk parts stay in eval mode so BatchNorm statistics never drift; with
        batchnorm="frozen" so does every trunk BatchNorm layer (see the module doc)."""
        super().train(mode)
        for name in self._frozen_modules:
            self.get_submodule(name).eval()
        if self.spec.batchnorm == "frozen":
            for module in self.trunk.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def _init_head(head: nn.Linear) -> None:
    """Start the head's weight as a (semi-)orthogonal matrix.

    With d <= trunk_dim the linear head's rows are orthonormal, so a fresh head is a random
    orthogonal projection of the trunk features (an isometry when d == trunk_dim): it keeps
    their norms and cosine similarities (approximately, Johnson-Lindenstrauss, when d is
    smaller) instead of PyTorch's default uniform weights, which distort them. Training then
    starts from the pretrained trunk's retrieval geometry and refines it. Biases keep
    PyTorch's default small uniform init. Only fresh heads are affected: a checkpoint's head
    weights still load over it.
    """
    nn.init.orthogonal_(head.weight)


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


def _split_chain(model: EmbeddingNet) -> tuple[list[str], list[str]]:
    """(prefix, suffix) module names of a partly trainable trunk.

    The trunk's feature part is read as a chain of its children up to the pooling, one level
    into Sequential containers (EfficientNet stages, ResNet layers); the prefix is the chain
    before the first module with a trainable parameter. The chain is checked against the
    trunk's own forward_features once, so a backbone whose forward is not such a chain (a
    ViT adds position embeddings between modules) fails here rather than training wrong.
    """
    trunk = model.trunk
    head_names = {"global_pool", "head", "fc", "classifier", "head_drop"}
    chain: list[str] = []
    for name, child in trunk.named_children():
        if name in head_names:
            break
        if isinstance(child, nn.Sequential):
            chain += [f"trunk.{name}.{sub}" for sub, _ in child.named_children()]
        else:
            chain.append(f"trunk.{name}")
    first = next(
        i
        for i, name in enumerate(chain)
        if any(p.requires_grad for p in model.get_submodule(name).parameters())
    )
    prefix, suffix = chain[:first], chain[first:]
    was_training = model.training
    model.eval()
    try:
        size = model.spec.image_size
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = trunk.forward_features(x)
            got = model._run(suffix, model._run(prefix, x))
        chained = got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4)
    except (RuntimeError, ValueError, AssertionError, TypeError):
        chained = False
    finally:
        model.train(was_training)
    if not chained:
        raise ValueError(
            f"backbone {model.spec.backbone!r} is not a plain chain of its child modules, so "
            "its frozen prefix cannot be cached and model.trainable_blocks > 0 is "
            "unsupported for it; use 0 (frozen trunk) or -1 (train everything)"
        )
    return prefix, suffix


def create_model(spec: ModelConfig) -> EmbeddingNet:
    """Build the network with starting weights per `spec.weights` (see slade_core.weights)."""
    trunk, head_state = starting_trunk(spec)
    model = EmbeddingNet(spec, trunk)
    if head_state:
        model.head.load_state_dict(head_state)
    return model


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[EmbeddingNet, dict]:
    """Rebuild a model from a slade checkpoint (no weight download: all weights are in it)."""
    path = Path(path)
    obj = read_checkpoint(path, map_location)
    spec = ModelConfig.model_validate(checkpoint_spec(obj))
    model = EmbeddingNet(spec, bare_trunk(spec.backbone))
    load_exact(model, obj["state_dict"], str(path))
    return model.to(map_location), obj["meta"]
