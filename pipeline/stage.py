"""What a stage sees and returns. A stage never opens files, builds a client or prints: it asks its context."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd
from tqdm.auto import tqdm

from pipeline.config import BuildConfig
from pipeline.io import file_sha256, read_table
from pipeline.prompts import PromptLoader
from pipeline.records import REJECT_DETAIL, REJECT_REASON
from pipeline.taxonomy import Taxonomy

if TYPE_CHECKING:
    from pipeline.llm import Engine

T = TypeVar("T")


@dataclass
class StageResult:
    """Rows kept, rows rejected (each with `reject_reason` and optional `reject_detail`), extra stats."""

    kept: pd.DataFrame
    rejected: pd.DataFrame = field(default_factory=pd.DataFrame)
    stats: dict[str, Any] = field(default_factory=dict)


def split_by_reason(frame: pd.DataFrame, reasons: pd.Series, details: pd.Series | None = None) -> StageResult:
    """Keep rows whose reason is None/NA; reject the others with that reason (and detail)."""
    dropped = reasons.notna()
    rejected = frame[dropped].copy()
    rejected[REJECT_REASON] = reasons[dropped].astype(str)
    rejected[REJECT_DETAIL] = details[dropped].astype(str) if details is not None else ""
    return StageResult(frame[~dropped].copy(), rejected)


@dataclass
class StageContext:
    """Everything a stage may use: config, taxonomy, prompts, the LLM engine, progress and counters."""

    name: str
    config: BuildConfig
    taxonomy: Taxonomy
    prompts: PromptLoader
    engine_factory: Callable[[], Engine] | None = None
    show_progress: bool = True
    resources: dict[str, str] = field(default_factory=dict)  # path -> sha256 of every file read
    counters: Counter = field(default_factory=Counter)

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

    def progress(self, items: Iterable[T], total: int | None = None, desc: str | None = None) -> Iterator[T]:
        """A progress bar over `items` (shown on a terminal only)."""
        return iter(tqdm(items, total=total, desc=desc or self.name, disable=None if self.show_progress else True,
                         leave=False, dynamic_ncols=True))

    def resource(self, path: str | Path) -> Path:
        """Declare a file the stage depends on (a model, a word list): its hash joins the fingerprint."""
        path = Path(path)
        self.resources[str(path)] = file_sha256(path)
        return path

    def read_table(self, path: str | Path) -> pd.DataFrame:
        """Read a side table (annotations, ...) through the framework, declared as a resource."""
        frame, _ = read_table(self.resource(path))
        return frame

    def count(self, key: str, amount: int = 1) -> None:
        """Add to a named counter reported in the stage's stats."""
        self.counters[key] += amount
