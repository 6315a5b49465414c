"""Retrieval metrics with the exact semantics of pytorch-metric-learning's AccuracyCalculator.

MAP@R, R-Precision and Precision@1 are computed as AccuracyCalculator(k="max_bin_count")
computes them (REFERENCE.md section 2): references are ranked by squared L2 distance to the
query, the query itself is excluded in self-retrieval, and "lone" queries (no reference shares
their label) are left out of every average. On CPU the search is FAISS IndexFlatL2 with PML's
kernel and query blocks, so distances and rankings are bit-identical to PML's; CUDA tensors
use a blocked matmul + topk on the GPU. Only the top max(R) neighbours are searched, block by
block, so memory stays bounded and the per-query work is vectorised.

Differences from PML, all deliberate:
- Exact distance ties are broken by reference index, also across the search cut-off (PML keeps
  FAISS's heap order), so duplicates rank the same on every run and backend.
- Labels of any dtype are remapped to 0..C-1 (PML casts labels to float32, which merges labels
  above 2**24).
- Recall@K is not part of AccuracyCalculator. Here it is the In-shop definition, the fraction
  of non-lone queries with at least one relevant reference among their K nearest; lone
  queries are left out as for the other metrics, so recall_at_1 == precision_at_1.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import faiss
import numpy as np
import torch

# Query blocks aligned with FAISS's internal BLAS blocks (4096 queries; calls of >= 20
# queries use BLAS), so every distance has exactly the round-off of one big search (= PML).
_QUERY_BLOCK = 4096
_FAISS_BLAS_MIN_QUERIES = 20
_TORCH_BLOCK_BYTES = 1 << 28  # distance block budget on the torch (CUDA) path


def retrieval_metrics(
    query_embeddings: Any,
    query_labels: Any,
    reference_embeddings: Any = None,
    reference_labels: Any = None,
    recall_at: Sequence[int] = (1, 2, 4, 8),
) -> dict[str, float]:
    """MAP@R, R-Precision, Precision@1 and Recall@K of queries against references.

    Without references, the queries are retrieved among themselves with each query excluded
    from its own ranking. Inputs may be numpy arrays, torch tensors (CPU or CUDA) or lists;
    labels may be of any hashable dtype. Metrics are NaN when every query is lone.
    """
    self_retrieval = reference_embeddings is None
    if self_retrieval != (reference_labels is None):
        raise ValueError(
            "pass reference_embeddings and reference_labels together, or neither "
            "(neither = retrieve the queries among themselves)"
        )
    recall_at = _check_recall_at(recall_at)
    query = _as_embeddings(query_embeddings, "query_embeddings")
    reference = query if self_retrieval else _as_embeddings(reference_embeddings, "reference")
    query_codes, reference_codes = _encode_labels(query_labels, reference_labels)
    _check_shapes(query, query_codes, reference, reference_codes)

    counts = np.bincount(reference_codes, minlength=int(query_codes.max(initial=-1)) + 1)
    relevant = counts[query_codes] - int(self_retrieval)  # R per query
    scored = np.flatnonzero(relevant > 0)
    names = ["map_at_r", "r_precision", "precision_at_1"] + [f"recall_at_{k}" for k in recall_at]
    if scored.size == 0:
        return dict.fromkeys(names, float("nan"))

    k = max(int(relevant.max()), max(recall_at))
    sums = np.zeros(len(names), dtype=np.float64)
    # All rows are searched, lone ones too, in PML's FAISS blocks: same round-off, same order.
    every_row = np.arange(len(query))
    for rows, _, indices in _iter_knn(query, reference, k, every_row, self_retrieval):
        keep = relevant[rows] > 0
        rows, indices = rows[keep], indices[keep]
        sums += _metric_sums(
            reference_codes[indices] == query_codes[rows, None], relevant[rows], recall_at
        )
    return {name: float(total / scored.size) for name, total in zip(names, sums, strict=True)}


def nearest_neighbors(
    query: Any, reference: Any = None, k: int = 5, rows: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k references per query as (squared L2 distances [n, k'], indices [n, k']).

    Ranked by (distance, reference index). Without `reference` the queries are searched among
    themselves with self excluded. `rows` limits the search to those query rows (in that
    order). k' = min(k, number of candidate references).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    query = _as_embeddings(query, "query")
    self_retrieval = reference is None
    reference = query if self_retrieval else _as_embeddings(reference, "reference")
    _check_shapes(query, None, reference, None)
    rows = np.arange(len(query)) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(query)):
        raise ValueError(f"rows must index the {len(query)} queries")
    width = min(k, len(reference) - int(self_retrieval))
    blocks = list(_iter_knn(query, reference, k, rows, exclude_self=self_retrieval))
    if not blocks:
        return np.zeros((rows.size, width), np.float32), np.zeros((rows.size, width), np.int64)
    return np.concatenate([b[1] for b in blocks]), np.concatenate([b[2] for b in blocks])


def _metric_sums(rel: np.ndarray, relevant: np.ndarray, recall_at: tuple[int, ...]) -> np.ndarray:
    """Per-block sums of AP@R, RP, P@1 and Recall@K from the relevance matrix rel [b, k]."""
    rank = np.arange(1, rel.shape[1] + 1)
    hits = rel & (rank <= relevant[:, None])  # relevant references within the first R
    precision = np.cumsum(hits, axis=1, dtype=np.float64) / rank
    ap = np.where(hits, precision, 0.0).sum(axis=1) / relevant
    rp = hits.sum(axis=1, dtype=np.float64) / relevant
    recalls = [rel[:, :k].any(axis=1).sum() for k in recall_at]
    return np.array([ap.sum(), rp.sum(), rel[:, 0].sum(), *recalls], dtype=np.float64)


def _iter_knn(
    query: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    k: int,
    rows: np.ndarray,
    exclude_self: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (rows, distances, indices) blocks of the top-k references of query[rows].

    With exclude_self, reference row i is the query row i itself and is never returned.
    Rows whose k-th distance ties with the last one searched are searched again wider, so the
    (distance, index) order is exact across the cut-off.
    """
    n_ref = len(reference)
    k = min(k, n_ref - int(exclude_self))
    if k <= 0 or rows.size == 0:
        return
    search = (
        _torch_search(reference) if isinstance(query, torch.Tensor) else _faiss_search(reference)
    )
    bounds = list(range(0, rows.size, _QUERY_BLOCK)) + [rows.size]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < _FAISS_BLAS_MIN_QUERIES:
        del bounds[-2]  # FAISS would take its non-BLAS kernel for a tiny last block
    for start, end in itertools.pairwise(bounds):
        block = rows[start:end]
        width = k + 1  # one extra to see ties across the cut-off
        distances, indices = _ranked(search, query, block, width, exclude_self, n_ref)
        pending = np.arange(block.size)
        while True:
            tied = distances[pending, k - 1] == distances[pending, -1]
            pending = pending[tied]
            if pending.size == 0 or width >= n_ref - int(exclude_self):
                break
            width = min(2 * width, n_ref - int(exclude_self))
            wide_d, wide_i = _ranked(search, query, block[pending], width, exclude_self, n_ref)
            distances = _widen(distances, width)
            indices = _widen(indices, width)
            distances[pending], indices[pending] = wide_d, wide_i
        yield block, distances[:, :k], indices[:, :k]


def _ranked(search, query, rows, width, exclude_self, n_ref):
    """Search `width` neighbours of query[rows] (self dropped), sorted by (distance, index)."""
    distances, indices = search(query[rows], min(width + int(exclude_self), n_ref))
    if exclude_self:
        drop = indices == rows[:, None]
        drop[~drop.any(axis=1), -1] = True  # self not retrieved: drop the farthest instead
        keep = ~drop
        distances = distances[keep].reshape(len(rows), -1)
        indices = indices[keep].reshape(len(rows), -1)
    order = np.lexsort((indices, distances), axis=-1)
    return np.take_along_axis(distances, order, 1), np.take_along_axis(indices, order, 1)


def _widen(a: np.ndarray, width: int) -> np.ndarray:
    """Pad columns on the right to `width` (rows not searched again keep their values)."""
    return np.pad(a, ((0, 0), (0, width - a.shape[1])), mode="edge")


def _faiss_search(reference: np.ndarray):
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(reference)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances, indices = index.search(np.ascontiguousarray(queries), k)
        return distances, indices.astype(np.int64, copy=False)

    return search


def _torch_search(reference: torch.Tensor):
    """Blocked matmul + topk on the tensors' device (CUDA; faiss-cpu has no GPU index)."""
    ref_sq = (reference * reference).sum(dim=1)
    rows_per_block = max(1, _TORCH_BLOCK_BYTES // (4 * len(reference)))

    def search(queries: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_d, out_i = [], []
        for part in queries.split(rows_per_block):
            q_sq = (part * part).sum(dim=1, keepdim=True)
            dist = torch.addmm(ref_sq[None, :] + q_sq, part, reference.T, alpha=-2.0)
            values, idx = torch.topk(dist, k, dim=1, largest=False, sorted=True)
            out_d.append(values.cpu().numpy())
            out_i.append(idx.cpu().numpy())
        return np.concatenate(out_d), np.concatenate(out_i).astype(np.int64, copy=False)

    return search


def _as_embeddings(x: Any, name: str) -> np.ndarray | torch.Tensor:
    """float32 2-D matrix: a torch tensor when on an accelerator, else a numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float()
        if x.device.type == "cpu":
            x = x.contiguous().numpy()
    else:
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [n, dim] matrix, got shape {tuple(x.shape)}")
    finite = torch.isfinite(x).all().item() if isinstance(x, torch.Tensor) else np.isfinite(x).all()
    if not finite:
        raise ValueError(f"{name} contains NaN or inf values; check the model output")
    return x


def _as_labels(labels: Any, name: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per row), got shape {labels.shape}")
    return labels


def _encode_labels(query_labels: Any, reference_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Remap query and reference labels jointly to int64 codes 0..C-1."""
    q = _as_labels(query_labels, "query_labels")
    if reference_labels is None:
        _, codes = np.unique(q, return_inverse=True)
        return codes.astype(np.int64), codes.astype(np.int64)
    r = _as_labels(reference_labels, "reference_labels")
    if (q.dtype.kind in "biuf") != (r.dtype.kind in "biuf"):
        raise ValueError(
            f"query_labels ({q.dtype}) and reference_labels ({r.dtype}) must both be numeric "
            "or both be strings"
        )
    _, codes = np.unique(np.concatenate([q, r]), return_inverse=True)
    codes = codes.astype(np.int64)
    return codes[: len(q)], codes[len(q) :]


def _check_shapes(query, query_codes, reference, reference_codes) -> None:
    if len(query) == 0:
        raise ValueError("no query embeddings given")
    if query.shape[1] != reference.shape[1]:
        raise ValueError(
            f"query dim {query.shape[1]} != reference dim {reference.shape[1]}; "
            "embed both with the same model"
        )
    for emb, codes, name in (
        (query, query_codes, "query"),
        (reference, reference_codes, "reference"),
    ):
        if codes is not None and len(codes) != len(emb):
            raise ValueError(f"{len(emb)} {name} embeddings but {len(codes)} {name} labels")


def _check_recall_at(recall_at: Sequence[int]) -> tuple[int, ...]:
    values = tuple(int(k) for k in recall_at)
    if not values or min(values) < 1:
        raise ValueError(f"recall_at must be positive integers, got {tuple(recall_at)}")
    return values
