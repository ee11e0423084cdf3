"""One module per stage. Each defines `Config` (a config Section) and `run(records, config, ctx) -> StageResult`."""

# no `from __future__ import annotations` here: it would bind `stages.annotations` to the __future__ feature,
# so `from stages import annotations` would not import the stage of that name
import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import BuildConfig, Section

STAGE_NAMES = ["clean", "language", "relevance", "dedup", "annotations", "synthesis", "difficulty"]


def stage_module(name: str) -> ModuleType:
    """The module implementing a stage (imported on demand: heavy libraries load only when used)."""
    if name not in STAGE_NAMES:
        raise ConfigError(f"unknown stage '{name}' (known: {', '.join(STAGE_NAMES)})")
    return importlib.import_module(f"stages.{name}")


def stage_config(name: str, config: "BuildConfig") -> "Section":
    """The validated config section of a stage."""
    from pydantic import ValidationError

    from pipeline.config import format_validation_error

    try:
        return stage_module(name).Config.model_validate(config.section(name))
    except ValidationError as err:
        raise ConfigError(format_validation_error(config.config_path, err, prefix=name)) from err
