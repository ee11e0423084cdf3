"""Ingest and the seven stages of a build, one module each. Each module declares its contract as `STAGE`
(bsa.pipeline.stage.Stage): name, config class, the columns it needs and adds, the config fields naming
endpoints, and its steps, per batch or over all rows."""

# no `from __future__ import annotations` here: it would bind `bsa.stages.annotations` to the __future__
# feature, so `from bsa.stages import annotations` would not import the stage of that name
from bsa.stages import annotations, clean, dedup, difficulty, language, relevance, synthesis
from bsa.stages.ingest import ingest

STAGES = {stage.name: stage for stage in (clean.STAGE, language.STAGE, dedup.STAGE, relevance.STAGE,
                                          annotations.STAGE, synthesis.STAGE, difficulty.STAGE)}

__all__ = ["STAGES", "ingest"]
