"""`make bench`: run every bench/bench_*.py and write bench/results.md with the machine and date.

Each bench module has `run() -> str` returning a Markdown section with its own measured figures. A section
is kept in bench/sections/<name>.md (stamped with its machine and date), so `run_all.py dedup` reruns one
bench and results.md still holds the others.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}, {platform.system()}"


def write_section(name: str, run: Callable[[], str]) -> None:
    """Run one bench, keep its section in bench/sections/<name>.md (stamped), rewrite results.md."""
    sections_dir = HERE / "sections"
    sections_dir.mkdir(exist_ok=True)
    started = time.perf_counter()
    body = run().strip()
    stamp = f"_Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; took {time.perf_counter() - started:.0f} s._"
    (sections_dir / f"{name}.md").write_text(f"{body}\n\n{stamp}\n", encoding="utf-8")
    parts = ["# Benchmarks\n\nWritten by `make bench` (bench/run_all.py). Each section says where and when it ran."]
    parts += [p.read_text(encoding="utf-8") for p in sorted(sections_dir.glob("*.md"))]
    out = HERE / "results.md"
    out.write_text("\n\n".join(parts), encoding="utf-8")
    print(f"wrote {out}")


def main(names: list[str]) -> None:
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if names and name not in names:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"running {path.name} ...", flush=True)
        write_section(name, module.run)

if __name__ == "__main__":
    main(sys.argv[1:])
