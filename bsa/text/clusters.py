"""Clusters of duplicate pairs: connected components whose earliest row is kept, and the same under
constraints (pairs that must stay apart, labels that must not mix) for contrast pairs."""

from __future__ import annotations

import numpy as np


def representatives(n: int, pairs: np.ndarray) -> np.ndarray:
    """For each of n rows, the earliest row of its cluster (connected component of `pairs`)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    earliest = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(earliest, labels, np.arange(n))
    return earliest[labels]


def constrained_representatives(n: int, pairs: np.ndarray, apart: np.ndarray,
                                labels: np.ndarray) -> tuple[np.ndarray, int]:
    """For each of n rows, the earliest row of its cluster, and how many pairs were left unjoined.

    Pairs are joined one at a time in the order given (strongest first); a pair is skipped when joining it
    would put two rows of `apart` in one cluster, or rows of two different known `labels` (-1: unknown), so
    that no chain of duplicates links a contrast pair through a third row. Without constraints this equals
    `representatives`.
    """
    apart = apart[np.isin(apart, pairs).all(axis=1)] if len(pairs) else apart[:0]  # others never meet
    if not len(apart) and len(np.unique(labels[labels >= 0])) < 2:
        return representatives(n, pairs), 0
    from scipy.cluster.hierarchy import DisjointSet

    clusters = DisjointSet(range(n))
    avoid: dict[int, set[int]] = {}  # cluster root -> rows its members must stay apart from
    for a, b in apart.tolist():
        avoid.setdefault(a, set()).add(b)
        avoid.setdefault(b, set()).add(a)
    label = {row: int(labels[row]) for row in np.flatnonzero(labels >= 0).tolist()}  # cluster root -> label
    skipped = 0
    for a, b in pairs.tolist():
        root_a, root_b = clusters[a], clusters[b]
        if root_a == root_b:
            continue
        label_a, label_b = label.get(root_a, -1), label.get(root_b, -1)
        if (label_a >= 0 and label_b >= 0 and label_a != label_b) or any(
                clusters[row] == root_b for row in avoid.get(root_a, ())):
            skipped += 1
            continue
        clusters.merge(a, b)
        root = clusters[a]
        avoid[root] = avoid.pop(root_a, set()) | avoid.pop(root_b, set())
        label[root] = max(label.pop(root_a, -1), label.pop(root_b, -1))
    roots = np.fromiter((clusters[row] for row in range(n)), dtype=np.int64, count=n)
    earliest = np.full(n, n, dtype=np.int64)
    np.minimum.at(earliest, roots, np.arange(n))
    return earliest[roots], skipped


def mixes_labels(clusters: np.ndarray, labels: np.ndarray) -> bool:
    """Whether some cluster (each row's representative in `clusters`) holds rows of two different known
    `labels` (-1: unknown)."""
    known = labels >= 0
    low = np.full(len(clusters), np.iinfo(np.int64).max)
    high = np.full(len(clusters), np.iinfo(np.int64).min)
    np.minimum.at(low, clusters[known], labels[known])
    np.maximum.at(high, clusters[known], labels[known])
    return bool((low < high).any())
