"""Pseudo labels from the mutual nearest-neighbour graph of the unlabeled embeddings.

k-means has to put every image into some cluster. On an unlabeled set with a few images per
class most same-cluster pairs are then of different classes (15-30% right on the bird
benchmark at any k that keeps some recall). Two images that are each among the other's
`neighbors` nearest are far likelier to share a class, so here a pseudo label is a connected
component of those mutual links, and an image with no mutual neighbour gets no pseudo label
(the student leaves it out rather than teach it a wrong pair). Exact search (FAISS flat
inner product) over the whole set: the graph needs every row at once, so memory holds the
n x d embeddings and time grows as n^2 d.
"""

from __future__ import annotations

import faiss
import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components


def nearest_neighbors(x: np.ndarray, neighbors: int) -> np.ndarray:
    """int64 [n, neighbors]: each unit row's nearest other rows by cosine, nearest first.

    A row is never its own neighbour, also when an exact duplicate ties with it.
    """
    n = len(x)
    if not 1 <= neighbors < n:
        raise ValueError(
            f"cluster.neighbors={neighbors} needs 1 <= neighbors < number of points ({n}); "
            "lower cluster.neighbors"
        )
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, found = index.search(x, neighbors + 1)
    rows = np.arange(n)[:, None]
    is_self = found == rows
    # drop the row itself where it was found, else the farthest of the neighbors + 1
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), neighbors)
    keep = np.ones_like(found, dtype=bool)
    keep[np.arange(n), drop] = False
    return found[keep].reshape(n, neighbors).astype(np.int64)


def mutual_neighbor_groups(x: np.ndarray, neighbors: int) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo labels of unit rows x: (int64 group id per row, -1 for a row with no mutual
    neighbour; float32 squared L2 distance of each row to its group's mean direction, NaN for
    -1). Group ids are 0..g-1, numbered by their first row; the result depends only on x."""
    n = len(x)
    found = nearest_neighbors(x, neighbors)
    links = sparse.csr_matrix(
        (np.ones(found.size, dtype=np.int8), (np.repeat(np.arange(n), neighbors), found.ravel())),
        shape=(n, n),
    )
    mutual = links.multiply(links.T)
    _, component = connected_components(mutual, directed=False)
    sizes = np.bincount(component)
    grouped = sizes[component] > 1
    groups = np.full(n, -1, dtype=np.int64)
    _, first, inverse = np.unique(component[grouped], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # components renumbered by their first row
    groups[grouped] = order[inverse]
    distances = np.full(n, np.nan, dtype=np.float32)
    if grouped.any():
        sums = np.zeros((int(groups.max()) + 1, x.shape[1]), dtype=np.float64)
        np.add.at(sums, groups[grouped], x[grouped])
        centres = sums / np.linalg.norm(sums, axis=1, keepdims=True)
        diff = x[grouped] - centres[groups[grouped]]
        distances[grouped] = (diff * diff).sum(axis=1)
    return groups, distances
