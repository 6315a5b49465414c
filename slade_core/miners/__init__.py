"""Miners: which pairs of a batch a ranking loss sees (pytorch-metric-learning's concept).

`build_miner(cfg)` creates one by name (`MiningConfig.name`); every miner is called as
`miner.mine(similarity [B, B], labels [B], moments) -> (a1, p, a2, n)`.
"""

from __future__ import annotations

from slade_core.config import MiningConfig
from slade_core.miners.basis_pairs import BasisPairMiner

MINERS = {"basis_pairs": BasisPairMiner}

__all__ = ["MINERS", "BasisPairMiner", "build_miner"]


def build_miner(cfg: MiningConfig) -> BasisPairMiner:
    """The miner registered under `cfg.name`, built from the config."""
    if cfg.name not in MINERS:
        raise ValueError(f"unknown miner {cfg.name!r}; registered: {sorted(MINERS)}")
    return MINERS[cfg.name](cfg)
