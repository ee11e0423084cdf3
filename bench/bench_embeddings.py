"""The embedding pass of stage 4 on each backend: rows/s and the pairs found, against sentence-transformers.

Two sets of English rows: the bench's injected pool (bench/bench_dedup.py) as the embedding pass sees it,
the rows MinHash kept (a sample of EMBED_ROWS), and real prompts (the shared corpora's English prompts and
the demo pool). Each backend embeds the set and pairs it at the stage's threshold; pairs are compared with
those of `torch` (sentence-transformers itself). Export and model loading are timed apart (first use only).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_dedup  # noqa: E402

from bsa.stages import dedup  # noqa: E402
from bsa.text import embeddings, minhash  # noqa: E402

EMBED_ROWS = 10_000
BACKENDS = [("torch", None), ("onnx", None), ("onnx", 0.05), ("onnx", 0.07)]


def injected_rows() -> list[str]:
    """English rows of the injected pool that MinHash keeps, the first EMBED_ROWS of them."""
    pool = bench_dedup.make_pool()
    settings = dedup.MinHashConfig()
    found = minhash.near_duplicates(pool["text"].tolist(), pool["lang"].tolist(), num_perm=settings.num_perm,
                                    threshold=settings.threshold, ngram=settings.ngram,
                                    char_ngram=settings.char_ngram, seed=settings.seed, verify=settings.verify,
                                    false_negative_weight=settings.false_negative_weight)
    kept = dedup.representatives(len(pool), found.pairs) == np.arange(len(pool))
    english = pool[kept & (pool["lang"] == "en").to_numpy()]
    return english["text"].head(EMBED_ROWS).tolist()


def real_rows() -> list[str]:
    """The English seed prompts: the shared corpora when present, and the demo pool."""
    return list(dict.fromkeys(text for text, lang in bench_dedup.seed_texts() if lang == "en"))


def measure(texts: list[str], cache: str, threshold: float) -> list[tuple[str, float, int, int, int, float]]:
    """(backend, rows/s, pairs, missed vs torch, extra vs torch, first-use seconds) per backend."""
    results, reference = [], None
    for backend, margin in BACKENDS:
        started = time.perf_counter()
        embeddings.embed(texts[:8], embeddings.MINILM, 32, backend, cache if backend == "onnx" else None)
        if margin is not None:
            embeddings.embed(texts[:8], embeddings.MINILM, 32, backend, cache, int8=True)
        first_use = time.perf_counter() - started
        started = time.perf_counter()
        _, pairs, _ = embeddings.pairs_of(texts, embeddings.MINILM, threshold, batch_size=32, backend=backend,
                                          cache_dir=cache if backend == "onnx" else None, prefilter_margin=margin)
        seconds = time.perf_counter() - started
        found = set(map(tuple, pairs.tolist()))
        reference = found if reference is None else reference
        name = backend if margin is None else f"{backend} + int8 prefilter (margin {margin})"
        results.append((name, len(texts) / seconds, len(found), len(reference - found), len(found - reference),
                        first_use))
    return results


def run() -> str:
    threshold = dedup.EmbeddingConfig().model_for("en").threshold
    lines = ["## Embedding pass (stage 4, English, MiniLM)", "",
             f"Pairs at cosine >= {threshold}, compared with sentence-transformers (`torch`); batch 32, every core.",
             ""]
    with tempfile.TemporaryDirectory(prefix="bsa-onnx-") as cache:
        for title, texts in (("the injected pool's MinHash survivors", injected_rows()),
                             ("real English prompts (shared corpora + demo pool)", real_rows())):
            lines += [f"{title}: {len(texts):,} rows", "",
                      "| backend | rows/s | pairs | missed | extra | first use (s) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: |"]
            lines += [f"| {name} | {rate:,.0f} | {pairs:,} | {missed} | {extra} | {first:.1f} |"
                      for name, rate, pairs, missed, extra, first in measure(texts, cache, threshold)]
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
