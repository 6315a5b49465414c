"""The student's batches: a labeled m-per-class batch followed by a pseudo-labeled one."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler

from slade_core.samplers.m_per_class import MPerClassBatchSampler


class JointBatchSampler(Sampler[list[int]]):
    """Student batches: a labeled batch followed by a pseudo-labeled batch, in one index list.

    Positions index the concatenation [labeled rows, unlabeled rows]: the first
    `labeled.batch_size` entries are labeled rows, the rest are unlabeled rows shifted by
    `unlabeled_offset` (the number of labeled rows). Both halves are m-per-class (on labels
    and on pseudo labels), so the unlabeled half has positive pairs too.
    """

    def __init__(
        self,
        labeled: MPerClassBatchSampler,
        unlabeled: MPerClassBatchSampler,
        unlabeled_offset: int,
    ) -> None:
        if len(labeled) != len(unlabeled):
            raise ValueError(
                f"labeled and unlabeled samplers disagree on batches per epoch "
                f"({len(labeled)} vs {len(unlabeled)}); build both with the same count"
            )
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.unlabeled_offset = unlabeled_offset
        self.split = labeled.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.labeled.set_epoch(epoch)
        self.unlabeled.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.labeled)

    def __iter__(self) -> Iterator[list[int]]:
        for lab, unl in zip(self.labeled, self.unlabeled, strict=True):
            yield lab + [i + self.unlabeled_offset for i in unl]
