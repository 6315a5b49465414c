"""Batch samplers (pytorch-metric-learning's concept): which rows make each training batch.

`MPerClassBatchSampler` (the teacher's and each student half's), `JointBatchSampler` (the
student's labeled + pseudo-labeled batch) and `first_occurrences` (the draws of a batch that
are a row's first, for losses on cached inputs). Every sampler is a pure function of
(seed, epoch), so a resumed run draws the batches the uninterrupted run would have drawn.
"""

from slade_core.samplers.joint import JointBatchSampler
from slade_core.samplers.m_per_class import MPerClassBatchSampler
from slade_core.samplers.repeats import first_occurrences

__all__ = ["JointBatchSampler", "MPerClassBatchSampler", "first_occurrences"]
