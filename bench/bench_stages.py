"""Stages 1 (clean) and 2 (language) on a pool of 100,000 instructions, on one core.

The pool comes from bench/pool.py (perturbed demo and shared-corpora instructions). Each stage's `run` is
timed directly, with the process pinned to one CPU and native thread pools set to one thread. The best of
five runs is reported, and the median, by wall-clock time and by the process's CPU time (on a busy machine
the CPU time is the better measure of the stage's own cost; on a quiet one the two agree). The language
stage runs on clean's kept rows, as in a build; its KenLM models are trained from the default references
into a temporary build dir first.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from pool import make_pool  # noqa: E402

from bsa.pipeline.config import BuildConfig  # noqa: E402
from bsa.pipeline.executor import run_local  # noqa: E402
from bsa.pipeline.prompts import PromptLoader  # noqa: E402
from bsa.pipeline.stage import StageContext, StageResult  # noqa: E402
from bsa.pipeline.taxonomy import Taxonomy  # noqa: E402
from bsa.project import load_config  # noqa: E402
from bsa.stages import clean, language  # noqa: E402

POOL_SIZE = 100_000
REPEATS = 5
TARGET = 20_000  # rows/s for stages 1+2 together


def best_time(step: Callable[[], StageResult]) -> tuple[float, float, float, StageResult]:
    """The fastest and the median of REPEATS runs (wall seconds), the fastest by CPU seconds, the last result."""
    wall, cpu = [], []
    for _ in range(REPEATS):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = step()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return min(wall), statistics.median(wall), min(cpu), result


def context(name: str, config: BuildConfig) -> StageContext:
    return StageContext(name, config, Taxonomy.load(ROOT / config.taxonomy), PromptLoader("en"), show_progress=False)


def reasons(result: StageResult) -> str:
    counts = result.rejected["reject_reason"].value_counts() if len(result.rejected) else pd.Series(dtype=int)
    return ", ".join(f"{reason} {count:,}" for reason, count in counts.items()) or "none"


def run() -> str:
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    previous_dir = Path.cwd()
    os.chdir(ROOT)
    try:
        with tempfile.TemporaryDirectory() as build:
            return measure(load_config(overrides=[f"build_dir={build}"]))
    finally:
        os.chdir(previous_dir)
        os.sched_setaffinity(0, cpus)


def measure(config: BuildConfig) -> str:
    started = time.perf_counter()
    pool = make_pool(POOL_SIZE)
    pool_seconds = time.perf_counter() - started
    started = time.perf_counter()
    language.train_models(language.STAGE.settings(config), config.build_dir)
    train_seconds = time.perf_counter() - started
    clean_config, language_config = clean.STAGE.settings(config), language.STAGE.settings(config)
    clean_wall, clean_median, clean_cpu, cleaned = best_time(
        lambda: run_local(clean.STAGE, pool, clean_config, context("clean", config)))
    language_wall, language_median, language_cpu, identified = best_time(
        lambda: run_local(language.STAGE, cleaned.kept, language_config, context("language", config)))
    zh_share = (identified.kept["lang"] == "zh").mean() if len(identified.kept) else 0.0
    heads = cleaned.kept["text"].str[:language_config.lid_max_chars].nunique()
    rows = [("1 clean", len(pool), clean_wall, clean_median, clean_cpu, reasons(cleaned)),
            ("2 language", len(cleaned.kept), language_wall, language_median, language_cpu, reasons(identified)),
            ("1+2 together", len(pool), clean_wall + language_wall, clean_median + language_median,
             clean_cpu + language_cpu, "")]
    table = ["| stage | rows in | wall s | rows/s (wall) | rows/s (median wall) | CPU s | rows/s (CPU) | dropped |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    table += [f"| {name} | {n:,} | {wall:.2f} | {n / wall:,.0f} | {n / median:,.0f} | {cpu:.2f} | {n / cpu:,.0f} "
              f"| {why} |" for name, n, wall, median, cpu, why in rows]
    both = len(pool) / (clean_wall + language_wall)
    verdict = "meets" if both >= TARGET else "misses"
    return "\n".join([
        "## Stages 1+2: clean and language (one core)",
        "",
        f"Pool: {len(pool):,} instructions from bench/pool.py (perturbed seeds; {zh_share:.0%} of the rows kept "
        f"by language ID are Chinese), made in {pool_seconds:.1f} s. KenLM models (en, zh; order 3) trained from "
        f"data/lm/ in {train_seconds:.2f} s. Each stage's `run()` timed directly, process pinned to one CPU, "
        f"best of {REPEATS}. Language ID predicts each distinct head (first {language_config.lid_max_chars} "
        f"characters) once: {heads:,} of the {len(cleaned.kept):,} rows ({heads / max(len(cleaned.kept), 1):.0%}).",
        "",
        *table,
        "",
        f"Stages 1+2 together: {both:,.0f} rows/s (wall clock), which {verdict} the target of {TARGET:,} rows/s "
        f"on one core ({len(pool) / (clean_cpu + language_cpu):,.0f} rows/s by CPU time; the median run "
        f"{len(pool) / (clean_median + language_median):,.0f} rows/s).",
    ])


if __name__ == "__main__":
    print(run())
