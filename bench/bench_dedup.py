"""Dedup: MinHash signatures + LSH + clustering on a 100,000-instruction pool with injected near-duplicates.

The pool: 88,000 distinct base rows, each a seed instruction (the shared corpora, else the demo pool) with
about a third of its words (Chinese: jieba words) swapped for others from the seeds' vocabulary, so two
base rows share almost no words; then 10,000 near-duplicate copies of distinct base rows, one edit each
(casing, punctuation, spacing, a function word inserted, deleted or swapped, a polite prefix), and 2,000
contrast twins (one content word swapped), which stage 4 must keep apart while labels are unknown; so every
true duplicate pair is known. (bench/pool.py's pool suits the other stages but not this one: its rows are
light edits of a few thousand seeds, so most of them are near duplicates of each other and there is no
ground truth.)
Measured: rows/s of datasketch's per-row `MinHash.update` loop and of `MinHash.bulk` (on a subsample),
ours end to end (shingles, signatures, LSH, Jaccard check, clusters), precision and recall of duplicate
pairs against the injected truth with and without the stage's twin rule, text-dedup 0.4.1's MinHash on the same pool under Python 3.12 (time
only), the embedding pass on a subsample, and the whole stage (MinHash + embeddings) on the pool.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from glob import glob
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsa.pipeline.executor import run_local  # noqa: E402
from bsa.pipeline.io import read_jsonl  # noqa: E402
from bsa.stages import dedup  # noqa: E402
from bsa.text import contrast, minhash  # noqa: E402
from bsa.text import embeddings as embed_dedup  # noqa: E402

CORPORA = ROOT.parent / "shared" / "data" / "corpora"
POOL_SIZE, DUPLICATE_SHARE, TWIN_SHARE, ENGLISH_SHARE = 100_000, 0.10, 0.02, 0.7
BASELINE_ROWS, EMBED_ROWS = 10_000, 2_000
SETTINGS = dedup.MinHashConfig()
ALTERNATIVES = [(2, 3, 0.6), (3, 3, 0.7)]  # (word n, CJK char n, threshold) compared with the default
TEXT_DEDUP_VENV = Path.home() / ".cache" / "bsa-bench" / "td312"
_WORDS = re.compile(r"\S+")


# -- the pool -------------------------------------------------------------------------------------------------
def seed_texts() -> list[tuple[str, str]]:
    """(text, lang) seed instructions: the shared corpora when present, else the project's demo pool."""
    seeds: list[tuple[str, str]] = []
    readers: list[tuple[str, str, Callable[[Path], list[str]]]] = [
        ("advbench/harmful_behaviors.csv", "en", lambda p: _csv_column(p, "goal")),
        ("harmbench/harmbench_behaviors_text_all.csv", "en", lambda p: _csv_column(p, "Behavior")),
        ("xstest/xstest_prompts.csv", "en", lambda p: _csv_column(p, "prompt")),
        ("flames_zh/Flames_1k_Chinese.jsonl", "zh",
         lambda p: [json.loads(line)["prompt"] for line in p.read_text(encoding="utf-8").splitlines() if line]),
        ("safetybench_zh/test_zh_subset.json", "zh",
         lambda p: [item["question"] for item in json.loads(p.read_text(encoding="utf-8"))]),
    ]
    for relative, lang, read in readers:
        path = CORPORA / relative
        if path.exists():
            seeds += [(text, lang) for text in read(path) if text and text.strip()]
    if not seeds:
        for path in sorted(glob(str(ROOT / "data" / "demo" / "pool_*.jsonl"))):
            for row in read_jsonl(path, on_error="reject")[0]:  # the demo pool holds a malformed line on purpose
                if isinstance(row.get("text"), str) and len(row["text"].split()) + len(row["text"]) > 12:
                    seeds.append((row["text"], row.get("lang") or "en"))
    if not seeds:
        raise FileNotFoundError(f"no seed texts: neither {CORPORA} nor data/demo/pool_*.jsonl is present")
    return list(dict.fromkeys(seeds))


def _csv_column(path: Path, column: str) -> list[str]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [row[column] for row in csv.DictReader(handle)]


def _units(text: str, lang: str) -> list[str]:
    """Words: split on spaces, or by jieba for Chinese."""
    if lang == "zh":
        import jieba

        return [w for w in jieba.lcut(text) if w.strip()]
    return _WORDS.findall(text)


def _join(units: list[str], lang: str) -> str:
    return "".join(units) if lang == "zh" else " ".join(units)


def _bag(units: list[str]) -> frozenset[str]:
    return frozenset(u.casefold() for u in units)


def _too_close(bag: frozenset[str], others: list[frozenset[str]], ceiling: float) -> bool:
    for other in others:
        shared = len(bag & other)
        if shared >= ceiling * (len(bag) + len(other) - shared):
            return True
    return False


def base_rows(seeds: list[tuple[str, str]], count: int, rng: random.Random, share: float = 0.35,
              ceiling: float = 0.5) -> tuple[list[tuple[list[str], str]], dict[str, list[str]]]:
    """`count` distinct variants (units, lang) of the seeds, about `share` of each one's words swapped for
    others of its language, and the vocabulary per language. A variant whose set of words overlaps a
    sibling's (same seed) by `ceiling` or more (Jaccard) is drawn again, so no two base rows are near
    duplicates of each other, whatever the shingle size."""
    units = [_units(text, lang) for text, lang in seeds]
    vocab = {lang: sorted({u for us, (_, tl) in zip(units, seeds, strict=True) if tl == lang for u in us})
             for lang in sorted({lang for _, lang in seeds})}
    by_lang = {lang: [i for i, (_, tl) in enumerate(seeds) if tl == lang] for lang in vocab}
    weights = [ENGLISH_SHARE if lang == "en" else (1 - ENGLISH_SHARE) / max(len(vocab) - 1, 1) for lang in by_lang]
    siblings: dict[int, list[frozenset[str]]] = {}
    rows: list[tuple[list[str], str]] = []
    while len(rows) < count:
        lang = rng.choices(list(by_lang), weights)[0]
        pick = rng.choice(by_lang[lang])
        variant = [rng.choice(vocab[lang]) if rng.random() < share else u for u in units[pick]]
        bag = _bag(variant)
        if not _too_close(bag, siblings.setdefault(pick, []), ceiling):
            siblings[pick].append(bag)
            rows.append((variant, lang))
    return rows, vocab


NEAR_EDITS = ("casing", "punctuation", "spacing", "function_insert", "function_delete", "function_swap",
              "prefix")
TWIN_EDIT = "content_substitute"  # a contrast twin: one content word swapped for another; to be kept apart
PREFIXES = {"en": ["Please ", "Hey, ", "Quick question: "], "zh": ["请问", "你好，", "麻烦问一下，"]}
FUNCTION_WORDS = {lang: sorted(set(words.split())) for lang, words in contrast.FUNCTION_WORDS.items()}


def edit(units: list[str], lang: str, vocab: list[str], rng: random.Random,
         kind: str | None = None) -> tuple[str, str]:
    """A copy of a row made with one edit (of NEAR_EDITS, by default one drawn at random, or TWIN_EDIT);
    returns (copy, kind). A function-word edit on a row without function words inserts one instead."""
    kind = kind or rng.choice(NEAR_EDITS)
    text, units = _join(units, lang), list(units)
    functions = [i for i, unit in enumerate(units) if contrast.is_function_word(unit)]
    if kind == "casing":
        return rng.choice([text.upper(), text.lower(), text.title()]) if lang != "zh" else text + "!", kind
    if kind == "punctuation":
        return text.rstrip(".?!。？！") + rng.choice(["?", "!", "...", " ?", "。", "？"]), kind
    if kind == "spacing":
        return "  " + text.replace(" ", "  ") + " \n", kind
    if kind == "prefix":
        return rng.choice(PREFIXES[lang]) + text, kind
    if kind in ("function_delete", "function_swap") and not functions:
        kind = "function_insert"
    if kind == "function_insert":
        units.insert(rng.randrange(len(units) + 1), rng.choice(FUNCTION_WORDS[lang]))
    elif kind == "function_delete":
        del units[rng.choice(functions)]
    elif kind == "function_swap":
        at = rng.choice(functions)
        units[at] = rng.choice([w for w in FUNCTION_WORDS[lang] if w != units[at].casefold()])
    elif kind == TWIN_EDIT:
        contents = [i for i in range(len(units)) if not contrast.is_function_word(units[i])] or list(range(len(units)))
        at = rng.choice(contents)
        units[at] = rng.choice([w for w in rng.sample(vocab, 20) if not contrast.is_function_word(w)
                                and w.casefold() != units[at].casefold()] or vocab)
    else:
        raise ValueError(f"unknown edit {kind!r}")
    return _join(units, lang), kind


def make_pool(size: int = POOL_SIZE, duplicate_share: float = DUPLICATE_SHARE, twin_share: float = TWIN_SHARE,
              seed: int = 0) -> pd.DataFrame:
    """Columns id, text, lang, family (rows of one family are the injected near duplicates of each other; a
    contrast twin has a family of its own), edit (`original`, a near edit, or TWIN_EDIT) and of (the family
    a copy or twin was made from)."""
    rng = random.Random(seed)
    copies, twins = int(size * duplicate_share), int(size * twin_share)
    base, vocab = base_rows(seed_texts(), size - copies - twins, rng)
    rows = [(_join(units, lang), lang, family, "original", family) for family, (units, lang) in enumerate(base)]
    picked = rng.sample(range(len(base)), copies + twins)
    for n, family in enumerate(picked):
        units, lang = base[family]
        copy, kind = edit(units, lang, vocab[lang], rng, None if n < copies else TWIN_EDIT)
        rows.append((copy, lang, family if n < copies else len(base) + n, kind, family))
    rng.shuffle(rows)
    pool = pd.DataFrame(rows, columns=["text", "lang", "family", "edit", "of"])
    pool.insert(0, "id", [f"r{i:06d}" for i in range(len(pool))])
    return pool


# -- scoring --------------------------------------------------------------------------------------------------
def pair_set(groups: np.ndarray) -> set[tuple[int, int]]:
    """Every pair (i < j) of rows with the same group label."""
    order = np.argsort(groups, kind="stable")
    pairs = set()
    for members in np.split(order, np.flatnonzero(np.diff(groups[order])) + 1):
        members = sorted(members.tolist())
        pairs.update((a, b) for k, a in enumerate(members) for b in members[k + 1:])
    return pairs


def precision_recall(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float, int, int]:
    """Pairwise precision and recall of the predicted clusters against the true families."""
    found, true = pair_set(predicted), pair_set(truth)
    hits = len(found & true)
    return hits / max(len(found), 1), hits / max(len(true), 1), len(found), len(true)


def joined_by_edit(pool: pd.DataFrame, clusters: np.ndarray) -> dict[str, float]:
    """Share of the injected copies (near duplicates and twins) of each edit kind put in the cluster of the
    row they were made from: recall for a near edit, the share of twins lost for TWIN_EDIT."""
    original_cluster = dict(zip(pool["family"][pool["edit"] == "original"],
                                clusters[(pool["edit"] == "original").to_numpy()], strict=True))
    copies = pool[pool["edit"] != "original"]
    same = clusters[copies.index.to_numpy()] == copies["of"].map(original_cluster).to_numpy()
    return copies.assign(found=same).groupby("edit")["found"].mean().to_dict()


# -- timing -----------------------------------------------------------------------------------------------
def _shingles(text: str, lang: str) -> list[bytes]:
    """Plain-Python shingles as a per-row loop would make them: word n-grams, character n-grams for zh."""
    units = list("".join(re.findall(r"\w+", text.casefold()))) if lang == "zh" else re.findall(r"\w+", text.casefold())
    n = SETTINGS.char_ngram if lang == "zh" else SETTINGS.ngram
    return [" ".join(units[i:i + n]).encode("utf-8") for i in range(max(len(units) - n + 1, 1))]


def time_update_loop(texts: list[tuple[str, str]]) -> float:
    """Seconds for datasketch's plain per-row loop: one MinHash, `update` per shingle."""
    from datasketch import MinHash

    started = time.perf_counter()
    for text, lang in texts:
        sketch = MinHash(num_perm=SETTINGS.num_perm, seed=SETTINGS.seed)
        for gram in _shingles(text, lang):
            sketch.update(gram)
    return time.perf_counter() - started


def time_update_loop_with_lsh(texts: list[tuple[str, str]]) -> float:
    """The same loop plus datasketch's MinHashLSH (insert, then query each row)."""
    from datasketch import MinHash, MinHashLSH

    started = time.perf_counter()
    lsh = MinHashLSH(threshold=SETTINGS.threshold, num_perm=SETTINGS.num_perm)
    sketches = []
    for i, (text, lang) in enumerate(texts):
        sketch = MinHash(num_perm=SETTINGS.num_perm, seed=SETTINGS.seed)
        sketch.update_batch(_shingles(text, lang))
        lsh.insert(i, sketch)
        sketches.append(sketch)
    for sketch in sketches:
        lsh.query(sketch)
    return time.perf_counter() - started


def time_bulk(texts: list[tuple[str, str]]) -> float:
    """Seconds for `MinHash.bulk` over the same shingles."""
    from datasketch import MinHash

    started = time.perf_counter()
    MinHash.bulk([_shingles(text, lang) for text, lang in texts], num_perm=SETTINGS.num_perm,
                 seed=SETTINGS.seed)
    return time.perf_counter() - started


def run_ours(pool: pd.DataFrame, settings: dedup.MinHashConfig = SETTINGS
             ) -> tuple[float, np.ndarray, minhash.NearDuplicates]:
    """Seconds for our MinHash pass (shingles to clusters) and each row's representative."""
    started = time.perf_counter()
    found = minhash.near_duplicates(pool["text"].tolist(), pool["lang"].tolist(), num_perm=settings.num_perm,
                                    threshold=settings.threshold, ngram=settings.ngram,
                                    char_ngram=settings.char_ngram, seed=settings.seed, verify=settings.verify,
                                    false_negative_weight=settings.false_negative_weight)
    representative = dedup.representatives(len(pool), found.pairs)
    return time.perf_counter() - started, representative, found


def stage_context(config_path: Path = ROOT / "configs" / "default.yaml"):
    """A StageContext for stage 4 under the default config, as the runner would make it."""
    from bsa.pipeline.prompts import PromptLoader
    from bsa.pipeline.stage import StageContext
    from bsa.pipeline.taxonomy import Taxonomy
    from bsa.project import load_config

    config = load_config(config_path)
    return config, StageContext("dedup", config, Taxonomy.load(ROOT / config.taxonomy), PromptLoader("en"),
                                show_progress=False)


def run_guarded(pool: pd.DataFrame) -> tuple[float, np.ndarray]:
    """Seconds for the stage's MinHash pass with its contrast guard, labels unknown (what stage 4 does before
    the embedding pass), and each row's representative."""
    _, ctx = stage_context()
    texts = pool["text"].tolist()
    guard = dedup.ContrastGuard(texts, np.full(len(pool), -1, dtype=np.int8), contrast.MIN_TEMPLATE_SHARE)
    started = time.perf_counter()
    representative, _ = dedup.minhash_pass(texts, pool["lang"].tolist(), SETTINGS, ctx, guard)
    return time.perf_counter() - started, representative


# -- text-dedup ---------------------------------------------------------------------------------------------
def python312() -> str | None:
    """A working Python 3.12+ interpreter (text-dedup 0.4.1 needs one), or None."""
    candidates = [shutil.which(name) for name in ("python3.13", "python3.12")]
    candidates += sorted(glob(str(Path.home() / ".pyenv" / "versions" / "3.1[2-9]*" / "bin" / "python3")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def text_dedup_python() -> Path:
    """The venv holding text-dedup 0.4.1 (made on first use, outside the repository)."""
    python = TEXT_DEDUP_VENV / "bin" / "python"
    if python.exists():
        return python
    interpreter = python312()
    if interpreter is None:
        raise RuntimeError("no Python 3.12 or newer found")
    subprocess.run([interpreter, "-m", "venv", str(TEXT_DEDUP_VENV)], check=True, capture_output=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "text-dedup==0.4.1"], check=True,
                   capture_output=True, text=True)
    return python


TEXT_DEDUP_CONFIG = """\
[input]
input_type = "local_files"
file_type = "parquet"
[input.read_arguments]
path = "parquet"
data_files = "{data}"
split = "train"

[algorithm]
algorithm_name = "minhash"
text_column = "text"
seed = {seed}
num_perm = {num_perm}
threshold = {threshold}
ngram_size = {ngram}
min_length = 0
num_proc = {procs}

[output]
output_dir = "{out}"
clean_cache = true

[debug]
enable_profiling = false
"""


def time_text_dedup(pool: pd.DataFrame) -> tuple[float | None, str]:
    """Wall seconds of `python -m text_dedup.minhash` on the pool (load to save), or None and why not."""
    try:
        python = text_dedup_python()
    except (RuntimeError, subprocess.CalledProcessError, OSError) as err:
        detail = getattr(err, "stderr", "") or ""
        return None, f"could not set up text-dedup 0.4.1: {err} {detail[-400:]}".strip()
    with tempfile.TemporaryDirectory(prefix="bsa-td-") as tmp:
        data = Path(tmp) / "pool.parquet"
        pool[["id", "text"]].to_parquet(data)
        (Path(tmp) / "config.toml").write_text(TEXT_DEDUP_CONFIG.format(
            data=data, seed=SETTINGS.seed, num_perm=SETTINGS.num_perm, threshold=SETTINGS.threshold,
            ngram=SETTINGS.ngram, procs=os.cpu_count() or 1, out=Path(tmp) / "out"), encoding="utf-8")
        env = {**os.environ, "HF_DATASETS_CACHE": str(Path(tmp) / "hf"), "HF_HUB_OFFLINE": "1"}
        started = time.perf_counter()
        done = subprocess.run([str(python), "-m", "text_dedup.minhash"], cwd=tmp, env=env, capture_output=True,
                              text=True)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        return None, f"text-dedup failed (exit {done.returncode}): {(done.stderr or done.stdout)[-600:]}"
    return seconds, f"{python.parent.parent} ({subprocess.run([str(python), '--version'], capture_output=True, text=True).stdout.strip()})"


# -- the embedding pass -------------------------------------------------------------------------------------
def time_embeddings(pool: pd.DataFrame, rows: int) -> list[tuple[str, int, float, int]]:
    """(language, rows, seconds, duplicate pairs) of the embedding pass on a subsample per model."""
    config = dedup.EmbeddingConfig()
    results = []
    for lang in ("en", "zh"):
        sample = pool[pool["lang"] == lang].head(rows)
        if sample.empty:
            continue
        started = time.perf_counter()
        model = config.model_for(lang)
        vectors = embed_dedup.embed(sample["text"].tolist(), model.name, config.batch_size)
        pairs, _ = embed_dedup.similar_pairs(vectors, model.threshold, config.block_rows)
        results.append((lang, len(sample), time.perf_counter() - started, len(pairs)))
    return results


def time_whole_stage(pool: pd.DataFrame) -> tuple[float, dict[str, int]]:
    """Seconds of the whole stage 4 (`dedup.run`, default config) on the pool, and its drops by reason.

    The embedding models are already loaded (by `time_embeddings`), so this is the stage's own work:
    MinHash on every row, then the embedding pass on the rows MinHash kept, one language at a time.
    """
    config, ctx = stage_context()
    records = pd.DataFrame({"id": [f"r{i}" for i in range(len(pool))], "text": pool["text"], "lang": pool["lang"]})
    started = time.perf_counter()
    result = run_local(dedup.STAGE, records, dedup.STAGE.settings(config), ctx)
    seconds = time.perf_counter() - started
    return seconds, {str(k): int(v) for k, v in result.rejected["reject_reason"].value_counts().items()}


# -- the report ---------------------------------------------------------------------------------------------
def run() -> str:
    started = time.perf_counter()
    pool = make_pool()
    build_seconds = time.perf_counter() - started
    subsample = list(zip(pool["text"].head(BASELINE_ROWS), pool["lang"].head(BASELINE_ROWS), strict=True))
    loop_rate = len(subsample) / time_update_loop(subsample)
    loop_lsh_rate = len(subsample) / time_update_loop_with_lsh(subsample)
    bulk_rate = len(subsample) / time_bulk(subsample)
    minhash.permutations(SETTINGS.num_perm, SETTINGS.seed)  # one-off setup (cached), like the loop's import
    minhash.bands_and_rows(SETTINGS.threshold, SETTINGS.num_perm, 1 - SETTINGS.false_negative_weight,
                           SETTINGS.false_negative_weight)
    seconds, representative, found = run_ours(pool)
    ours_rate = len(pool) / seconds
    precision, recall, n_found, n_true = precision_recall(representative, pool["family"].to_numpy())
    by_edit = joined_by_edit(pool, representative)
    guarded_seconds, guarded = run_guarded(pool)
    g_precision, g_recall, g_found, _ = precision_recall(guarded, pool["family"].to_numpy())
    g_by_edit = joined_by_edit(pool, guarded)
    n_twins = int((pool["edit"] == TWIN_EDIT).sum())
    grid = []
    for ngram, char_ngram, threshold in ALTERNATIVES:
        settings = SETTINGS.model_copy(update={"ngram": ngram, "char_ngram": char_ngram, "threshold": threshold})
        other_seconds, other_rep, _ = run_ours(pool, settings)
        grid.append((ngram, char_ngram, threshold, other_seconds,
                     *precision_recall(other_rep, pool["family"].to_numpy())[:2]))
    td_seconds, td_note = time_text_dedup(pool)
    embeddings = time_embeddings(pool, EMBED_ROWS)
    stage_seconds, stage_drops = time_whole_stage(pool)
    bands, rows = found.bands, found.rows
    lines = [
        "## Dedup (stage 4)",
        "",
        f"Pool: {len(pool):,} rows ({int(len(pool) * DUPLICATE_SHARE):,} injected near-duplicate copies; "
        f"{(pool['lang'] == 'zh').mean():.0%} Chinese), made in {build_seconds:.1f} s by bench/bench_dedup.py. "
        f"MinHash settings: num_perm {SETTINGS.num_perm}, threshold {SETTINGS.threshold}, word {SETTINGS.ngram}-grams, "
        f"CJK character {SETTINGS.char_ngram}-grams, {bands} bands x {rows} rows (from the threshold), exact "
        f"Jaccard check {'on' if SETTINGS.verify else 'off'}.",
        "",
        "| MinHash pass | rows/s | vs update loop |",
        "| --- | ---: | ---: |",
        f"| datasketch `MinHash.update` per shingle, per row (signatures only; {len(subsample):,}-row subsample) "
        f"| {loop_rate:,.0f} | 1.0x |",
        f"| per-row `MinHash.update_batch` + datasketch `MinHashLSH` insert and query | {loop_lsh_rate:,.0f} "
        f"| {loop_lsh_rate / loop_rate:.1f}x |",
        f"| datasketch `MinHash.bulk` (signatures only) | {bulk_rate:,.0f} | {bulk_rate / loop_rate:.1f}x |",
        f"| **ours**: shingles, signatures, LSH, Jaccard check, clusters ({len(pool):,} rows, {seconds:.2f} s) "
        f"| **{ours_rate:,.0f}** | **{ours_rate / loop_rate:.1f}x** |",
    ]
    if td_seconds is not None:
        lines.append(f"| text-dedup 0.4.1 `python -m text_dedup.minhash`, same pool and settings, "
                     f"{os.cpu_count()} processes, whole run incl. load and save ({td_seconds:.1f} s) "
                     f"| {len(pool) / td_seconds:,.0f} | {len(pool) / td_seconds / loop_rate:.1f}x |")
    lines += [
        "",
        f"Near-duplicate pairs against the injected truth, as stage 4 finds them (MinHash with the contrast "
        f"guard, labels unknown; {guarded_seconds:.2f} s): precision **{g_precision:.3f}**, recall "
        f"**{g_recall:.3f}** ({g_found:,} pairs found, {n_true:,} true). Contrast twins (one content word "
        f"swapped) kept apart from the row they were made from: **{1 - g_by_edit.get(TWIN_EDIT, 0):.3f}** "
        f"of {n_twins:,}.",
        "Recall by kind of edit: " + ", ".join(f"{k} {g_by_edit[k]:.2f}" for k in NEAR_EDITS if k in g_by_edit)
        + ".",
        "",
        f"The MinHash pass alone, without the guard (the rows/s above): precision {precision:.3f}, recall "
        f"{recall:.3f} ({n_found:,} pairs found; {found.candidates:,} LSH candidates before the Jaccard check); "
        f"twins joined to their source: {by_edit.get(TWIN_EDIT, 0):.3f}.",
        "",
        "Other shingle settings on the same pool (why the default is word 1-grams at 0.7):",
        "",
        "| word n | CJK char n | threshold | seconds | precision | recall |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {SETTINGS.ngram} (default) | {SETTINGS.char_ngram} | {SETTINGS.threshold} | {seconds:.2f} "
        f"| {precision:.3f} | {recall:.3f} |",
        *[f"| {n} | {c} | {t} | {s:.2f} | {p:.3f} | {r:.3f} |" for n, c, t, s, p, r in grid],
        "",
        (f"text-dedup: {td_note}; times compared, not counts." if td_seconds is not None
         else f"text-dedup not timed: {td_note}"),
        "",
        "| Embedding pass (subsample, model load included) | rows | seconds | rows/s | pairs >= threshold |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    config = dedup.EmbeddingConfig()
    lines += [f"| {config.model_for(lang).name} ({lang}, cosine >= {config.model_for(lang).threshold}) | {n:,} "
              f"| {s:.1f} | {n / s:,.0f} | {p:,} |"
              for lang, n, s, p in embeddings]
    lines += [
        "",
        f"The whole stage 4 (`dedup.run`, default config: MinHash on every row, then embeddings per language on "
        f"the rows it kept; models already loaded) on the {len(pool):,}-row pool: {stage_seconds:.1f} s, "
        f"**{len(pool) / stage_seconds:,.0f} rows/s**; dropped "
        + ", ".join(f"{reason} {count:,}" for reason, count in stage_drops.items()) + ".",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
