"""The Ray Data executor gives the local executor's results row for row: kept, rejected, reasons and stats,
on the demo pool split into several blocks and small batches, on one 2-CPU local cluster per module."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from bsa.pipeline.config import BuildConfig, RaySettings
from bsa.pipeline.executor import LocalExecutor
from bsa.pipeline.prompts import PromptLoader
from bsa.pipeline.runner import _arrow_safe
from bsa.pipeline.stage import Stage, StageContext, StageResult
from bsa.pipeline.taxonomy import Taxonomy
from bsa.project import load_config
from bsa.stages import clean, dedup, language
from bsa.stages.ingest import ingest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'bsa-builder[ray]')")

from bsa.pipeline.executor_ray import RayExecutor  # noqa: E402

SETTINGS = RaySettings(num_cpus=2, blocks=4, batch_rows=32)


@pytest.fixture(scope="module")
def executor():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield RayExecutor(SETTINGS)
    ray.shutdown()


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> BuildConfig:
    config = load_config(overrides=[f"build_dir={tmp_path_factory.mktemp('build')}"])
    language.train_models(language.STAGE.settings(config), config.build_dir)
    return config


@pytest.fixture(scope="module")
def pool(config: BuildConfig) -> pd.DataFrame:
    records, _ = ingest(config.sources, Taxonomy.load(config.taxonomy))
    return records.drop(columns=["_line"])


def context(config: BuildConfig, name: str) -> StageContext:
    return StageContext(name, config, Taxonomy.load(config.taxonomy), PromptLoader("en"), show_progress=False)


def both(stage: Stage, records: pd.DataFrame, section, config: BuildConfig,
         executor: RayExecutor) -> tuple[StageResult, StageResult, StageContext, StageContext]:
    local_ctx, ray_ctx = context(config, stage.name), context(config, stage.name)
    local = LocalExecutor(batch_rows=SETTINGS.batch_rows).run(stage, records, section, local_ctx)
    distributed = executor.run(stage, records, section, ray_ctx)
    return local, distributed, local_ctx, ray_ctx


def as_written(frame: pd.DataFrame) -> pa.Table:
    """A result as the runner writes it (Parquet holds a missing value as null, whatever pandas called it)."""
    return pa.Table.from_pandas(_arrow_safe(frame), preserve_index=False)


def assert_same(local: StageResult, distributed: StageResult, local_ctx: StageContext,
                ray_ctx: StageContext) -> None:
    for mine, theirs in ((local.kept, distributed.kept), (local.rejected, distributed.rejected)):
        mine, theirs = as_written(mine), as_written(theirs)
        assert mine.column_names == theirs.column_names
        assert theirs.cast(mine.schema).equals(mine)  # string and large_string hold the same Parquet column
    assert distributed.stats == local.stats
    assert ray_ctx.counters == local_ctx.counters
    assert ray_ctx.resources == local_ctx.resources


def test_clean_same_on_both(pool, config, executor):
    local, distributed, *ctxs = both(clean.STAGE, pool, clean.STAGE.settings(config), config, executor)
    assert len(local.rejected) > 0 and len(local.kept) > 0
    assert_same(local, distributed, *ctxs)


def test_language_same_on_both(pool, config, executor):
    kept = LocalExecutor().run(clean.STAGE, pool, clean.STAGE.settings(config),
                                               context(config, "clean")).kept
    section = language.STAGE.settings(config).model_copy(update={"max_perplexity_percentile": 95.0})
    local, distributed, local_ctx, ray_ctx = both(language.STAGE, kept, section, config, executor)
    assert set(local.rejected["reject_reason"]) >= {"wrong_language", "high_perplexity"}
    assert local_ctx.counters and local_ctx.resources  # the workers' counters and models came back
    assert_same(local, distributed, local_ctx, ray_ctx)


def test_dedup_minhash_same_on_both(pool, config, executor):
    section = dedup.Config(embedding=dedup.EmbeddingConfig(enabled=False))
    local, distributed, *ctxs = both(dedup.STAGE, pool, section, config, executor)
    assert (local.rejected["reject_reason"] == "near_duplicate").any()
    assert_same(local, distributed, *ctxs)


def test_build_config_names_the_executor(tmp_path: Path):
    config = load_config(overrides=["executor=ray", "ray.blocks=3", "ray.address=ray://head:10001"])
    assert config.executor == "ray" and config.ray.blocks == 3 and config.ray.address == "ray://head:10001"
    from bsa.pipeline.executor import executor_for

    assert isinstance(executor_for(config), RayExecutor)
    assert isinstance(executor_for(load_config()), LocalExecutor)
