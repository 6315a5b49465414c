from collections import Counter

import numpy as np
import pytest

from slade_core.samplers import JointBatchSampler, MPerClassBatchSampler


def _labels():
    # 6 classes of 5 images, plus a class with a single image (sampled with replacement)
    return np.array([c for c in range(6) for _ in range(5)] + [6])


def test_batches_hold_m_images_of_each_class():
    labels = _labels()
    sampler = MPerClassBatchSampler(
        labels, m_per_class=4, batch_size=12, seed=0, batches_per_epoch=20
    )
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    seen = set()
    for batch in batches:
        assert len(batch) == 12
        counts = Counter(labels[batch].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}
        seen.update(counts)
        for c in counts:  # no duplicates unless the class is too small
            members = [i for i in batch if labels[i] == c]
            if (labels == c).sum() >= 4:
                assert len(set(members)) == 4
    assert seen == set(range(7))  # the class cycle visits every class


def test_same_seed_and_epoch_repeat_and_set_epoch_changes_order():
    labels = _labels()

    def draw(seed, epoch):
        sampler = MPerClassBatchSampler(labels, 2, 8, seed=seed, batches_per_epoch=5)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draw(0, 1) == draw(0, 1)
    assert draw(0, 1) != draw(0, 2)
    assert draw(0, 1) != draw(1, 1)


def test_too_few_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 4 classes"):
        MPerClassBatchSampler([0, 0, 1, 1, 2, 2], 2, 8, seed=0, batches_per_epoch=1)
    with pytest.raises(ValueError, match="multiple of m_per_class"):
        MPerClassBatchSampler(_labels(), 4, 10, seed=0, batches_per_epoch=1)


def test_joint_sampler_concatenates_labeled_then_offset_unlabeled_batches():
    labeled = np.repeat(np.arange(4), 3)  # 12 labeled rows
    pseudo = np.repeat(np.arange(5), 4)  # 20 unlabeled rows
    joint = JointBatchSampler(
        MPerClassBatchSampler(labeled, 2, 4, seed=0, batches_per_epoch=6),
        MPerClassBatchSampler(pseudo, 2, 6, seed=0, batches_per_epoch=6, stream=1),
        unlabeled_offset=len(labeled),
    )
    joint.set_epoch(3)
    batches = list(joint)
    assert len(batches) == len(joint) == 6
    for batch in batches:
        lab, unl = batch[: joint.split], np.array(batch[joint.split :]) - len(labeled)
        assert all(0 <= i < len(labeled) for i in lab)
        assert ((unl >= 0) & (unl < len(pseudo))).all()
        assert set(Counter(pseudo[unl].tolist()).values()) == {2}  # positives in D_u
    joint.set_epoch(3)
    assert list(joint) == batches
