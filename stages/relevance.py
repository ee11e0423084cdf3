"""Stage 'relevance' (placeholder: being implemented)."""

from __future__ import annotations

import pandas as pd

from pipeline.config import Section
from pipeline.stage import StageContext, StageResult


class Config(Section):
    pass


def run(records: pd.DataFrame, config: Config, ctx: StageContext) -> StageResult:
    return StageResult(records)
