"""Ward agglomerative clustering and the pseudo labels it gives (`cluster.method: ward`)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from test_clustering import blobs

from slade_core.clustering import cluster_rows, sample_rows
from slade_core.config import ClusterConfig
from slade_core.ward import ward_groups, ward_tree


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the two labelings group the rows identically (ids may differ)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("n", [40, 300])
def test_the_tree_is_scipys_ward_at_every_cut(n):
    x = np.random.default_rng(n).normal(size=(n, 6))
    tree, reference = ward_tree(x), linkage(x, method="ward")
    # scipy reports sqrt(2 * merge cost) as the merge height
    np.testing.assert_allclose(np.sqrt(2 * tree.cost), reference[:, 2], rtol=1e-9)
    for k in (2, 5, n // 4, n - 1):
        groups = tree.cut(k)
        assert len(np.unique(groups)) == k
        assert same_partition(groups, fcluster(reference, k, criterion="maxclust"))


def test_ward_keeps_a_spread_out_class_whole_where_kmeans_cuts_it():
    # one class spread along a long arc, four tight classes: at k = 5 Ward's cut is the classes
    rng = np.random.default_rng(1)
    t = np.linspace(0, 1.2, 200)
    arc = np.stack([np.cos(t), np.sin(t), np.zeros_like(t), np.zeros_like(t)], axis=1)
    tight = np.repeat(np.eye(4)[[2, 3]], 50, axis=0)
    tight = np.concatenate([tight, -tight]) + rng.normal(scale=0.02, size=(200, 4))
    x = np.concatenate([arc, tight])
    truth = np.repeat([0, 1, 2, 3, 4], [200, 50, 50, 50, 50])
    groups, _ = cluster_rows(x, ClusterConfig(method="ward", k=5))
    assert same_partition(groups, truth)
    kmeans, _ = cluster_rows(x, ClusterConfig(method="kmeans", k=5, seed=0))
    assert not same_partition(kmeans, truth)


def test_ward_labels_are_repeatable_and_sampled_past_the_cap():
    x, _ = blobs(n=400, k=6, spread=0.3, seed=2)
    cfg = ClusterConfig(method="ward", k=6, ward_max_points=100, seed=3)
    a, distances = cluster_rows(x, cfg)
    b, _ = cluster_rows(x, cfg)
    assert (a == b).all() and len(np.unique(a)) == 6
    assert distances.dtype == np.float32 and (distances >= 0).all()
    other, _ = cluster_rows(x, cfg.model_copy(update={"seed": 4}))  # another sample
    assert len(np.unique(other)) == 6
    with pytest.raises(ValueError, match="k=7 clusters but only"):
        cluster_rows(x[:6], cfg.model_copy(update={"k": 7}))


def test_centres_are_unit_mean_directions_of_the_cut():
    x, _ = blobs(n=120, k=3, spread=0.1, seed=5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    groups, centres = ward_groups(unit, 3)
    assert same_partition(groups, ward_tree(unit).cut(3))
    assert centres.shape == (3, x.shape[1]) and centres.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1, atol=1e-6)
    means = np.stack([unit[groups == g].mean(0) for g in range(3)])
    np.testing.assert_allclose(
        centres, means / np.linalg.norm(means, axis=1, keepdims=True), atol=1e-6
    )


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="cannot cut 3 points into k=4"):
        ward_tree(np.eye(3)).cut(4)
    with pytest.raises(ValueError, match="cannot cut 3 points into k=0"):
        ward_tree(np.eye(3)).cut(0)


def test_the_rows_ward_merged_keep_their_group_the_rest_go_to_the_nearest_centre():
    x, _ = blobs(n=300, k=6, spread=0.5, seed=7)  # overlapping: groups are not Voronoi cells
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    labels, distances = cluster_rows(x, ClusterConfig(method="ward", k=6))
    groups, centres = ward_groups(unit, 6)
    assert same_partition(labels, groups)
    nearest = (unit @ centres.T).argmax(axis=1)
    assert (nearest != groups).any()  # the boundary rows nearest-centre would have moved
    own = ((unit - centres[groups]) ** 2).sum(axis=1)
    np.testing.assert_allclose(distances, own, atol=1e-5)

    cfg = ClusterConfig(method="ward", k=6, ward_max_points=120, seed=1)
    labels, _ = cluster_rows(x, cfg)
    rows = sample_rows(len(x), 6, 1, 120)
    sample_groups, sample_centres = ward_groups(unit[rows], 6)
    assert same_partition(labels[rows], sample_groups)
    others = np.setdiff1d(np.arange(len(x)), rows)
    expected = (unit[others] @ sample_centres.T).argmax(axis=1)
    assert same_partition(np.concatenate([labels[rows], labels[others]]),
                          np.concatenate([sample_groups, expected]))  # fmt: skip
