"""Repeated rows in a batch: a small class or cluster is drawn with replacement."""

from __future__ import annotations

import torch


def first_occurrences(positions: torch.Tensor) -> torch.Tensor:
    """Bool mask of the entries of a batch's row positions that are a row's first draw.

    A cluster smaller than m is sampled with replacement; when the inputs are cached views,
    a repeat is the very same input (similarity 1). As a "positive pair" it carries no
    gradient yet passes every mining threshold and inflates mu+ and sigma+, so trainers on
    cached inputs keep only the first draw of each row in their pair losses.
    """
    order = torch.argsort(positions, stable=True)
    ordered = positions[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    keep = torch.empty_like(first)
    keep[order] = first
    return keep
