"""How much of the trunk trains: decided once from `model.trainable_blocks`, asked everywhere.

Three modes, each with its own input path:
- frozen (0): nothing in the trunk trains; its pooled features are cached per augmented view
  and only the head learns;
- partial (n > 0): the last n blocks train; the frozen prefix's feature maps are cached per
  augmented view (`slade_core.features`);
- whole (-1): everything trains; there is no frozen prefix, so batches are images (the
  decoded-image cache, `slade_core.decoded`, or PIL every step).
The network (`EmbeddingNet.mode`), the batch source, extraction and DDP wrapping ask this
object instead of comparing the integer themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from slade_core.config import ModelConfig


@dataclass(frozen=True)
class TrunkMode:
    """The trunk's training mode; `blocks` is model.trainable_blocks (0, n > 0 or -1)."""

    blocks: int

    @classmethod
    def of(cls, spec: ModelConfig) -> TrunkMode:
        return cls(spec.trainable_blocks)

    @property
    def frozen(self) -> bool:
        """Nothing in the trunk trains: the prefix is the whole trunk, pooled."""
        return self.blocks == 0

    @property
    def whole(self) -> bool:
        """Everything trains: no frozen prefix, batches are images."""
        return self.blocks == -1

    @property
    def partial(self) -> bool:
        """The last `blocks` blocks train: the network splits into prefix and suffix."""
        return self.blocks > 0

    @property
    def trains_trunk(self) -> bool:
        """Some trunk weights train (partial or whole): BatchNorm and AMP choices apply."""
        return not self.frozen

    @property
    def caches_prefix(self) -> bool:
        """A frozen prefix exists (frozen or partial): its outputs can be cached on disk."""
        return not self.whole
