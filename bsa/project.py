"""The project assembled for the framework: its stages and ingest (bsa.stages) and its other config
sections (`release:`, `review:`, `croissant:`, `eval:`), so that a config is validated whole before anything runs."""

from __future__ import annotations

from pathlib import Path

from bsa.eval.config import Config as EvalConfig
from bsa.pipeline.config import BuildConfig
from bsa.pipeline.records import CORE_FIELDS
from bsa.pipeline.stage import Registry
from bsa.release.config import Config as ReleaseConfig
from bsa.release.config import ReviewConfig
from bsa.release.croissant.config import Config as CroissantConfig
from bsa.stages import STAGES, ingest

PROJECT = Registry(stages=STAGES, ingest=ingest,
                   sections={"release": ReleaseConfig, "review": ReviewConfig, "croissant": CroissantConfig,
                             "eval": EvalConfig},
                   input_columns=tuple(CORE_FIELDS))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> BuildConfig:
    """A build config validated whole: stages, order, endpoints and every section."""
    return PROJECT.load_config(path, overrides)
