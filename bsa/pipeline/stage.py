"""The stage contract, and what a stage sees while it runs. A stage never opens build files, builds a client or
prints: it declares what it needs and adds, and asks its context for the rest.

A stage is a `Stage`: its name, config class, the columns it needs and adds, the config fields that name LLM
endpoints, and its steps. Every step maps a frame to a frame and is declared `per_batch` (row by row: any
split of the rows into batches gives the same result, so an executor may run it batch by batch, in parallel,
on any machine) or `whole` (it needs all rows at once: clustering, a percentile, planning). A `whole` step may
offer a `distributed` counterpart, the same result computed on rows spread over a cluster (bsa.pipeline.
executor_ray.Shards: an aggregate then a map, a shuffle): a distributed executor uses it, the local one never
does. A step rejects a row by giving it a reason (`reject`); the executor splits kept from rejected rows after
the last step.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bsa.pipeline.config import BuildConfig, Section, load_config, validate_section
from bsa.pipeline.errors import ConfigError
from bsa.pipeline.io import file_sha256, read_table
from bsa.pipeline.layout import StagePaths, stage_paths
from bsa.pipeline.prompts import PromptLoader
from bsa.pipeline.records import REJECT_DETAIL, REJECT_REASON
from bsa.pipeline.taxonomy import Taxonomy

if TYPE_CHECKING:
    from bsa.pipeline.llm import Engine

StepFunction = Callable[[pd.DataFrame, Any, "StageContext"], pd.DataFrame]
# (rows spread over a cluster: bsa.pipeline.executor_ray.Shards, config, ctx) -> Shards, or None when the
# step must run on the gathered rows for this config after all (images, say)
DistributedFunction = Callable[[Any, Any, "StageContext"], Any]


@dataclass(frozen=True)
class Step:
    """One step of a stage: `function(frame, config, ctx) -> frame`."""

    function: StepFunction
    per_batch: bool  # True: row by row (any batching gives the same rows); False: needs every row at once
    loads_models: bool = False  # loads models (fastText, KenLM, encoders): run in long-lived workers
    distributed: DistributedFunction | None = None  # a `whole` step's counterpart on a cluster (same result)

    @property
    def name(self) -> str:
        return self.function.__name__


def per_batch(function: StepFunction, loads_models: bool = False) -> Step:
    """A step that works row by row: an executor may give it the rows in batches (`loads_models`: in
    long-lived workers, so each loads its models once)."""
    return Step(function, per_batch=True, loads_models=loads_models)


def whole(function: StepFunction, distributed: DistributedFunction | None = None) -> Step:
    """A step that needs all rows at once (duplicates across rows, a percentile, a plan over the pool);
    `distributed`: the same step on rows spread over a cluster, for distributed executors."""
    return Step(function, per_batch=False, distributed=distributed)


@dataclass(frozen=True)
class Stage:
    """A stage's declared contract; the runner and the executors need nothing else to run it."""

    name: str
    config: type[Section]
    steps: tuple[Step, ...]
    needs: tuple[str, ...] = ()  # columns the input must hold
    adds: tuple[str, ...] = ()  # columns the kept rows gain
    reject_columns: tuple[str, ...] = ()  # columns only rejected rows carry (e.g. dedup's `duplicate_of`)
    replaces_rows: bool = False  # the output rows are new ones (synthesis writes items from seeds)
    endpoints: tuple[str, ...] = ()  # config fields naming endpoints; `models.endpoint` looks inside a list
    setup: Callable[[Any, StageContext], None] | None = None  # once a run, before the steps (train a model, ...)

    def settings(self, config: BuildConfig) -> Section:
        """The stage's validated config section (ConfigError naming file and key)."""
        return validate_section(config, self.name, self.config)

    def endpoint_names(self, section: Section) -> list[str]:
        """The endpoints a section names through the declared fields, in declaration order."""
        names: list[str] = []
        for path in self.endpoints:
            values: list[Any] = [section]
            for part in path.split("."):
                values = [item for value in values for item in _items(getattr(value, part, None))]
            names += [value for value in values if isinstance(value, str) and value not in names]
        return names

    @property
    def modules(self) -> list[str]:
        """The modules holding the stage's code (the fingerprint follows what they import)."""
        functions = [step.function for step in self.steps] + ([self.setup] if self.setup else [])
        return sorted({self.config.__module__, *(function.__module__ for function in functions)})


def _items(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


@dataclass
class StageResult:
    """Rows kept, rows rejected (each with `reject_reason` and optional `reject_detail`), extra stats."""

    kept: pd.DataFrame
    rejected: pd.DataFrame = field(default_factory=pd.DataFrame)
    stats: dict[str, Any] = field(default_factory=dict)


def reject(frame: pd.DataFrame, reasons: pd.Series, details: pd.Series | None = None) -> pd.DataFrame:
    """`frame` with rows whose reason is set marked rejected; a row keeps the first reason it was given."""
    out = frame.copy()
    none = pd.Series(None, index=out.index, dtype=object)
    current = out[REJECT_REASON].astype(object) if REJECT_REASON in out.columns else none.copy()
    detail = out[REJECT_DETAIL].astype(object) if REJECT_DETAIL in out.columns else none.copy()
    reasons = reasons.reindex(out.index)
    new = reasons.notna() & current.isna()
    current[new] = reasons[new]
    detail[new] = details.reindex(out.index)[new] if details is not None else ""
    out[REJECT_REASON], out[REJECT_DETAIL] = current, detail
    return out


def split_rejects(frame: pd.DataFrame, reject_columns: Iterable[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, rejected) of a marked frame: kept rows lose the reject columns; rejected rows carry the reason,
    its detail (as text) and then the stage's reject-only columns."""
    if REJECT_REASON not in frame.columns:
        frame = reject(frame, pd.Series(None, index=frame.index, dtype=object))
    extra = [column for column in reject_columns if column in frame.columns]
    dropped = frame[REJECT_REASON].notna()
    data = [column for column in frame.columns if column not in (REJECT_REASON, REJECT_DETAIL, *extra)]
    rejected = frame.loc[dropped, data].copy()
    rejected[REJECT_REASON] = frame.loc[dropped, REJECT_REASON].astype(str)
    rejected[REJECT_DETAIL] = frame.loc[dropped, REJECT_DETAIL].astype(str)
    for column in extra:
        rejected[column] = frame.loc[dropped, column]
    return frame.loc[~dropped, data].copy(), rejected


@dataclass
class StageContext:
    """Everything a stage may use: config, taxonomy, prompts, the LLM engine, progress, counters and stats."""

    name: str
    config: BuildConfig
    taxonomy: Taxonomy
    prompts: PromptLoader
    engine_factory: Callable[[], Engine] | None = None
    show_progress: bool = True
    resources: dict[str, str] = field(default_factory=dict)  # path -> sha256 of every file read
    counters: Counter = field(default_factory=Counter)
    stats: dict[str, Any] = field(default_factory=dict)  # a stage's own figures, beside the runner's

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"bsa.{self.name}")

    @property
    def llm(self) -> Engine:
        """The shared LLM engine (created, and the local server started, on first use)."""
        if self.engine_factory is None:
            raise RuntimeError(f"stage {self.name}: no LLM engine available in this context")
        return self.engine_factory()

    @property
    def lang(self) -> str:
        return self.config.lang

    @property
    def seed(self) -> int:
        return self.config.seed

    def paths_of(self, stage: str) -> StagePaths:
        """Where a stage of this build writes (for stages that read what earlier ones rejected)."""
        return stage_paths(self.config, stage)

    def resource(self, path: str | Path) -> Path:
        """Declare a file the stage depends on (a model, a word list): its hash joins the fingerprint."""
        path = Path(path)
        if str(path) not in self.resources:
            self.resources[str(path)] = file_sha256(path)
        return path

    def read_table(self, path: str | Path) -> pd.DataFrame:
        """Read a side table (annotations, ...) through the framework, declared as a resource."""
        frame, _ = read_table(self.resource(path))
        return frame

    def count(self, key: str, amount: int = 1) -> None:
        """Add to a named counter reported in the stage's stats (counters of batches add up)."""
        self.counters[key] += amount

    def report(self, figures: Mapping[str, Any]) -> None:
        """Figures of the stage's own for its stats file (from a `whole` step: batches cannot merge them)."""
        self.stats.update(figures)


# (sources, taxonomy, resources, first_rows=...) -> (records with a `_line` column, rejected rows); the sha256 of
# every file the sources point at (images) is added to `resources` (path -> sha256); `first_rows` (keyword, the
# executor's: bsa.pipeline.executor.first_rows) gives each row the position of the earliest row of its key
IngestFunction = Callable[..., tuple[pd.DataFrame, pd.DataFrame]]


@dataclass(frozen=True)
class Registry:
    """What a project hands the framework: its stages, its ingest and its other config sections."""

    stages: Mapping[str, Stage]
    ingest: IngestFunction
    sections: Mapping[str, type[Section]] = field(default_factory=dict)  # release:, eval:, ...
    input_columns: tuple[str, ...] = ()  # what ingest gives every record

    def stage(self, name: str) -> Stage:
        if name not in self.stages:
            raise ConfigError(f"unknown stage '{name}' (known: {', '.join(self.stages)})")
        return self.stages[name]

    def load_config(self, path: str | Path | None = None, overrides: list[str] | None = None) -> BuildConfig:
        """The config validated whole (bsa.pipeline.config.load_config) against this registry."""
        return load_config(path, overrides, stages=self.stages, sections=self.sections,
                           input_columns=self.input_columns)
