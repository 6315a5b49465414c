"""m images per class in every batch, so every batch holds positive pairs.

Ranking losses only learn from pairs inside a batch; a uniformly drawn batch of 32 over 100+
classes rarely contains two images of one class. The sampler is a pure function of
(seed, epoch): a resumed run draws exactly the batches the uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class MPerClassBatchSampler(Sampler[list[int]]):
    """Yields `batches_per_epoch` batches of `batch_size // m_per_class` classes x m images.

    Classes are visited in a shuffled cycle (each class once before any repeats); a class with
    fewer than m images is sampled with replacement (see `first_occurrences` for what the
    trainers do with the repeats). Indices are positions into `labels`.
    Call `set_epoch(e)` before iterating to get that epoch's (seeded) batches; `stream`
    separates samplers that share a seed (the student's labeled and unlabeled halves).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        m_per_class: int,
        batch_size: int,
        seed: int,
        batches_per_epoch: int,
        stream: int = 0,
    ) -> None:
        labels = np.asarray(labels)
        if m_per_class < 1 or batch_size % m_per_class:
            raise ValueError(
                f"batch_size={batch_size} must be a multiple of m_per_class={m_per_class}; "
                "change one of them"
            )
        if batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        classes, inverse = np.unique(labels, return_inverse=True)
        self.classes_per_batch = batch_size // m_per_class
        if len(classes) < self.classes_per_batch:
            raise ValueError(
                f"a batch of {batch_size} with {m_per_class} images per class needs at least "
                f"{self.classes_per_batch} classes, but the labels hold only {len(classes)}; "
                "lower the batch size, raise m_per_class, or use more classes"
            )
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))[:-1]
        self._members = np.split(order, bounds)
        self.m_per_class = m_per_class
        self.batch_size = batch_size
        self.seed = seed
        self.batches_per_epoch = batches_per_epoch
        self.stream = stream
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.stream, self.epoch])
        n_classes = len(self._members)
        cycle = rng.permutation(n_classes)
        cursor = 0
        for _ in range(self.batches_per_epoch):
            if cursor + self.classes_per_batch > n_classes:
                rest = cycle[cursor:]
                fresh = rng.permutation(np.setdiff1d(np.arange(n_classes), rest))
                cycle, cursor = np.concatenate([rest, fresh]), 0
            chosen = cycle[cursor : cursor + self.classes_per_batch]
            cursor += self.classes_per_batch
            batch = []
            for c in chosen:
                members = self._members[c]
                replace = len(members) < self.m_per_class
                batch.extend(rng.choice(members, self.m_per_class, replace=replace).tolist())
            yield batch
