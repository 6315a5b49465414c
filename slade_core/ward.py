"""Ward agglomerative clustering: pseudo labels that keep whole classes together.

k-means cuts the embedding space into cells of similar size, so a class whose images are
spread out lands in several clusters, and the same-class pairs the teacher finds hardest are
never a pseudo-positive pair. Ward's rule merges, at every step, the two groups whose union
adds the least within-group variance, so a spread-out class tends to stay whole and a wrong
merge joins neighbouring classes rather than unrelated ones.

Memory is one dense [m, m] float64 matrix (m = rows merged), so the pseudo-label stage
merges a seeded sample past `cluster.ward_max_points` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slade_core.directions import mean_directions


@dataclass(frozen=True)
class WardTree:
    """The merges of a Ward dendrogram over m points, in the order they apply."""

    left: np.ndarray  # int64 [m - 1] point whose group absorbs the other's
    right: np.ndarray  # int64 [m - 1]
    cost: np.ndarray  # float64 [m - 1] increase of the within-group sum of squares

    def cut(self, k: int) -> np.ndarray:
        """int64 group id (0..k-1) of each point once the first m - k merges are applied."""
        m = len(self.cost) + 1
        if not 1 <= k <= m:
            raise ValueError(f"cannot cut {m} points into k={k} groups")
        parent = np.arange(m)

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for a, b in zip(self.left[: m - k], self.right[: m - k], strict=True):
            parent[root(int(b))] = root(int(a))
        roots = np.array([root(i) for i in range(m)])
        return np.unique(roots, return_inverse=True)[1].astype(np.int64)


def ward_tree(x: np.ndarray) -> WardTree:
    """Ward's dendrogram of the rows of x.

    Nearest-neighbour chain with Lance-Williams updates: O(m^2) time and memory. The merge
    cost of groups A, B is |A||B| / (|A| + |B|) * ||mean_A - mean_B||^2; ties go to the lower
    index, so the tree is repeatable.
    """
    x = np.asarray(x, dtype=np.float64)
    m = len(x)
    size = np.ones(m)  # points per group
    squares = (x * x).sum(axis=1)
    cost = x @ x.T  # built in place: the [m, m] matrix is the memory that counts
    cost *= -2.0
    cost += squares[:, None]
    cost += squares[None, :]
    np.maximum(cost, 0.0, out=cost)
    cost *= 0.5  # |A||B| / (|A| + |B|) of two single points
    np.fill_diagonal(cost, np.inf)
    merges: list[tuple[int, int, float]] = []
    chain: list[int] = []
    alive = np.ones(m, dtype=bool)
    while len(merges) < m - 1:
        if not chain:
            chain.append(int(np.argmax(alive)))
        a = chain[-1]
        b = int(np.argmin(cost[a]))
        if len(chain) > 1 and cost[a, chain[-2]] <= cost[a, b]:
            b = chain[-2]
        if len(chain) < 2 or b != chain[-2]:
            chain.append(b)
            continue
        chain.pop()
        chain.pop()
        a, b = min(a, b), max(a, b)
        ab = cost[a, b]
        merges.append((a, b, float(ab)))
        total = size + size[a] + size[b]
        with np.errstate(invalid="ignore"):
            row = ((size + size[a]) * cost[a] + (size + size[b]) * cost[b] - size * ab) / total
        row[~alive] = np.inf
        row[a] = row[b] = np.inf
        cost[a], cost[:, a] = row, row
        cost[b], cost[:, b] = np.inf, np.inf
        size[a] += size[b]
        alive[b] = False
    order = np.argsort([c for _, _, c in merges], kind="stable")
    merged = np.array(merges, dtype=np.float64).reshape(-1, 3)[order]
    return WardTree(merged[:, 0].astype(np.int64), merged[:, 1].astype(np.int64), merged[:, 2])


def ward_groups(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 group of each unit row of x in Ward's cut into k, unit-norm float32 [k, d] mean
    direction of each group). The rows keep their group; other rows go to the nearest centre
    (reassigning the merged rows too would move exactly the boundary rows Ward kept with
    their group)."""
    groups = ward_tree(x).cut(k)
    return groups, mean_directions(x, groups, k)
