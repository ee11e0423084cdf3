"""The embedding pass's search: exact (every pair scored) against the inverted-file index (`index.kind: ivf`,
embeddings.cell_pairs), by recall of the exact pairs and seconds.

Real vectors: MiniLM on the rows of bench_embeddings (the injected pool's MinHash survivors, and the real
English prompts), paired at the stage's threshold, for 1 to 3 probes. Scale: synthetic unit vectors of
MiniLM's width around many topics (their recall says little about real text; their seconds are real), exact
at 100,000 rows and the index at 100,000 and 1,000,000.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_embeddings  # noqa: E402

from bsa.stages import dedup  # noqa: E402
from bsa.text import embeddings  # noqa: E402

PROBES = (1, 2, 3)


def timed(search, vectors: np.ndarray, threshold: float) -> tuple[set[tuple[int, int]], float]:
    started = time.perf_counter()
    pairs, _ = search(vectors, threshold)
    return set(map(tuple, pairs.tolist())), time.perf_counter() - started


def synthetic(rows: int, topics: int, seed: int = 0) -> np.ndarray:
    """Unit vectors of 384 dimensions around `topics` random directions, about 1% of them near copies."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, 384)).astype(np.float32)
    vectors = centres[rng.integers(topics, size=rows)] + 1.6 * rng.normal(size=(rows, 384)).astype(np.float32)
    copies = rng.random(rows) < 0.01
    vectors[copies] = vectors[rng.integers(rows, size=int(copies.sum()))] + 0.3 * rng.normal(
        size=(int(copies.sum()), 384)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def run() -> str:
    threshold = dedup.EmbeddingConfig().model_for("en").threshold
    lines = ["## Embedding search: exact or an inverted-file index (`dedup.embedding.index`)\n",
             f"MiniLM at cosine >= {threshold}; the index with the default cells (the square root of the rows) "
             "and seed 0. Recall: the exact search's pairs the index finds (it finds no others: every pair it "
             "returns is scored exactly).\n",
             "| rows | search | seconds | pairs | recall |", "| --- | --- | ---: | ---: | ---: |"]
    for title, texts in (("injected pool, MinHash survivors", bench_embeddings.injected_rows()),
                         ("real English prompts", bench_embeddings.real_rows())):
        vectors = embeddings.embed(texts, embeddings.MINILM, 32)
        exact, seconds = timed(embeddings.similar_pairs, vectors, threshold)
        lines.append(f"| {title} ({len(texts):,}) | exact | {seconds:.2f} | {len(exact):,} | 1.000 |")
        for probes in PROBES:
            found, seconds = timed(lambda v, t, p=probes: embeddings.cell_pairs(v, t, probes=p), vectors, threshold)
            recall = len(found & exact) / max(len(exact), 1)
            lines.append(f"| {title} ({len(texts):,}) | index, {probes} probe{'s' if probes > 1 else ''} | "
                         f"{seconds:.2f} | {len(found):,} | {recall:.3f} |")
    lines += ["", "Scale, synthetic vectors (384 dimensions, a topic per 50 rows, 1% near copies):\n",
              "| rows | search | seconds | pairs | recall |", "| --- | --- | ---: | ---: | ---: |"]
    vectors = synthetic(100_000, 2_000)
    exact, seconds = timed(embeddings.similar_pairs, vectors, threshold)
    lines.append(f"| 100,000 | exact | {seconds:.1f} | {len(exact):,} | 1.000 |")
    found, seconds = timed(embeddings.cell_pairs, vectors, threshold)
    lines.append(f"| 100,000 | index, 2 probes | {seconds:.1f} | {len(found):,} | "
                 f"{len(found & exact) / max(len(exact), 1):.3f} |")
    vectors = synthetic(1_000_000, 20_000)
    found, seconds = timed(embeddings.cell_pairs, vectors, threshold)
    lines.append(f"| 1,000,000 | index, 2 probes | {seconds:.1f} | {len(found):,} | not measured (exact: about "
                 "100x the 100,000-row time) |")
    return "\n".join(lines)
