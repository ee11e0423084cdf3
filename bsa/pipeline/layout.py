"""The build directory's layout: where ingest and each stage of the configured order write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bsa.pipeline.config import BuildConfig

INGEST = "ingest"


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


def manifest_path(config: BuildConfig) -> Path:
    return config.build_path / "manifest.json"
