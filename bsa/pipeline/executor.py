"""Executors run a stage's steps; the runner keeps everything else (skipping, fingerprints, files, stats).

`LocalExecutor` runs in this process: a `per_batch` step gets the rows `batch_rows` at a time (in order),
a `whole` step gets them all. The batches' frames are joined in order, so the result is the one a single
batch would give. A distributed executor runs the same steps: `per_batch` ones as Ray Data's `map_batches`,
`whole` ones by their `distributed` counterpart where they offer one, else on the gathered rows
(bsa.pipeline.executor_ray). `executor_for` picks one from the config.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from bsa.pipeline.keys import first_rows
from bsa.pipeline.stage import Stage, StageContext, StageResult, split_rejects

BATCH_ROWS = 10_000  # rows a batch: numpy temporaries stay in cache, progress shows on large pools


class Executor(Protocol):
    def run(self, stage: Stage, records: pd.DataFrame, config: Any, ctx: StageContext) -> StageResult: ...

    def first_rows(self, keys: pd.Series) -> np.ndarray:
        """Each row's position of the earliest row holding the same key (ingest's duplicate ids)."""
        ...



class LocalExecutor:
    """Today's way: every step in this process, batch steps a batch at a time."""

    def __init__(self, batch_rows: int = BATCH_ROWS):
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1 (got {batch_rows})")
        self.batch_rows = batch_rows

    def run(self, stage: Stage, records: pd.DataFrame, config: Any, ctx: StageContext) -> StageResult:
        if stage.setup is not None:
            stage.setup(config, ctx)
        frame = records
        for step in stage.steps:
            frame = self._batched(step, frame, config, ctx) if step.per_batch else step.function(frame, config, ctx)
        kept, rejected = split_rejects(frame, stage.reject_columns)
        return StageResult(kept, rejected, dict(ctx.stats))

    first_rows = staticmethod(first_rows)

    def _batched(self, step: Any, frame: pd.DataFrame, config: Any, ctx: StageContext) -> pd.DataFrame:
        if len(frame) <= self.batch_rows:
            return step.function(frame, config, ctx)
        starts = range(0, len(frame), self.batch_rows)
        parts = [step.function(frame.iloc[start:start + self.batch_rows], config, ctx)
                 for start in tqdm(starts, desc=f"{ctx.name}: {step.name} ({self.batch_rows:,} rows a batch)",
                                   disable=None if ctx.show_progress else True, leave=False, dynamic_ncols=True)]
        return pd.concat(parts)


def executor_for(config: Any) -> Executor:
    """The executor a build config names (`executor: local` or `ray`; Ray is imported only when named)."""
    if config.executor == "ray":
        from bsa.pipeline.executor_ray import RayExecutor

        return RayExecutor(config.ray)
    return LocalExecutor()


def run_local(stage: Stage, records: pd.DataFrame, config: Any, ctx: StageContext,
              batch_rows: int = BATCH_ROWS) -> StageResult:
    """A stage on a frame, in this process (what the runner does, without files: for tests and notebooks)."""
    return LocalExecutor(batch_rows).run(stage, records, config, ctx)
