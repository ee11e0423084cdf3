"""`make bench-large`: a large pool (bench/pool.py) through ingest, clean, language and dedup on each executor.

Each executor runs in a fresh process (`python bench/large.py --one EXECUTOR POOL`), timed stage by stage,
while a thread samples the resident memory of that process and all its descendants (Ray's raylet and
workers) from /proc; the peak is reported. Dedup runs its MinHash pass only (embeddings off: at about 250
rows/s they would take hours on a million rows). Writes bench/sections/large.md and bench/results.md.

    python bench/large.py [ROWS] [KEY=VALUE ...]   # default 1,000,000; further config settings, e.g.
                                                   # dedup.keep_contrast_pairs=false (the guard off)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

STAGES = ("ingest", "clean", "language", "dedup")
EXECUTORS = ("local", "ray")
SETTINGS = ["dedup.embedding.enabled=false", "ray.num_cpus=2"]


def tree_rss(root: int) -> int:
    """Resident bytes of a process and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)], rss[int(entry.name)] = int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError):
                continue
    members, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier and pid not in members]
        members.update(children)
        frontier = children
    return sum(rss.get(pid, 0) for pid in members)


def one(executor: str, pool: Path, settings: list[str]) -> dict[str, object]:
    """Every stage on `pool` with one executor: seconds per stage, rows out, peak memory of the process tree."""
    from bsa.pipeline.config import SourceConfig
    from bsa.pipeline.runner import Runner
    from bsa.project import PROJECT, load_config

    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(os.getpid()))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    seconds, rows = {}, {}
    with tempfile.TemporaryDirectory() as build:
        config = load_config(ROOT / "configs" / "default.yaml",
                             [f"build_dir={build}", f"executor={executor}", *settings])
        # the pool is the build's one source, read as any source is (its ids given, rows checked, duplicates found)
        config.sources = [SourceConfig(name="pool", path=str(pool), id="id", lang="lang", category="category",
                                       subcategory="subcategory", is_risky="is_risky", on_error="reject")]
        with Runner(config, PROJECT, show_progress=False) as runner:
            previous = pool
            for name in STAGES:
                started = time.perf_counter()
                previous = runner.run_ingest() if name == "ingest" else runner.run_stage(name, previous)
                seconds[name] = round(time.perf_counter() - started, 1)
                rows[name] = runner.summary[-1]["rows_out"]
    done.set()
    return {"seconds": seconds, "rows": rows, "peak_gib": round(peak[0] / 2**30, 2)}


def run(size: int = 1_000_000, extra: list[str] | None = None) -> str:
    from pool import make_pool

    from bsa.pipeline.io import write_table

    settings = [*SETTINGS, *(extra or [])]
    with tempfile.TemporaryDirectory() as scratch:
        pool = Path(scratch) / "pool.parquet"
        started = time.perf_counter()
        write_table(make_pool(size), pool)
        made = time.perf_counter() - started
        results = {}
        for executor in EXECUTORS:
            out = subprocess.run([sys.executable, __file__, "--one", executor, str(pool), *settings], cwd=ROOT, check=True,
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            results[executor] = json.loads(out.stdout.strip().splitlines()[-1])
    lines = ["## Large pool on each executor (`make bench-large`)\n",
             f"Pool: {size:,} rows from bench/pool.py (made in {made:.0f} s), through {', '.join(STAGES)} "
             f"(dedup: MinHash only); settings {', '.join(settings)}. Peak memory: the process and all its "
             "descendants (Ray's raylet, object store and workers), sampled every 0.2 s.\n",
             "| executor | " + " | ".join(f"{s} s" for s in STAGES) + " | total s | rows out | peak GiB |",
             "| --- |" + " ---: |" * (len(STAGES) + 3)]
    for executor, result in results.items():
        secs = result["seconds"]
        lines.append(f"| {executor} | " + " | ".join(f"{secs[s]:.1f}" for s in STAGES)
                     + f" | {sum(secs.values()):.1f} | {result['rows'][STAGES[-1]]:,} | {result['peak_gib']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--one"]:
        print(json.dumps(one(argv[1], Path(argv[2]), argv[3:])))
        return
    from run_all import write_section

    write_section("large", lambda: run(int(argv[0]) if argv else 1_000_000, argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
