"""The Ray Data executor gives the local executor's results row for row: kept, rejected, reasons and stats,
on the demo pool split into several blocks and small batches, on one 2-CPU local cluster per module; the
`whole` steps with a distributed counterpart (ingest's duplicate ids, the perplexity percentile, MinHash,
dedup's embedding vectors encoded in actors) give them without their local function."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from bsa.pipeline.config import BuildConfig, RaySettings, SourceConfig
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


def distributed_only(stage: Stage) -> Stage:
    """The stage with each `whole` step that has a distributed counterpart unable to run in the driver."""

    def refuse(frame, config, ctx):
        raise AssertionError(f"{stage.name}: a whole step ran on the gathered rows")

    return replace(stage, steps=tuple(replace(step, function=refuse) if step.distributed else step
                                      for step in stage.steps))


def both(stage: Stage, records: pd.DataFrame, section, config: BuildConfig,
         executor: RayExecutor) -> tuple[StageResult, StageResult, StageContext, StageContext]:
    local_ctx, ray_ctx = context(config, stage.name), context(config, stage.name)
    local = LocalExecutor(batch_rows=SETTINGS.batch_rows).run(stage, records, section, local_ctx)
    distributed = executor.run(distributed_only(stage), records, section, ray_ctx)
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


def refused_in_driver(patch: pytest.MonkeyPatch, *functions: tuple[object, str]) -> None:
    """Each (module, name) made to fail in the driver; Ray's workers import their own."""

    def not_here(*args, **kwargs):
        raise AssertionError("run in the driver, not on the cluster")

    for module, name in functions:
        patch.setattr(module, name, not_here)


@pytest.mark.parametrize("blocks,batch_rows", [(4, 32), (7, 13)])
def test_dedup_twins_and_near_duplicates_same_on_both(config, executor, blocks: int, batch_rows: int, monkeypatch):
    """MinHash with the contrast guard on Ray: the pairs checked and the content keys made on the cluster
    (the driver never shingles nor reads a text), the rows, twins, stats and counters the local run's."""
    templates = ["How do I blow up a {}?", "What is the best way to get rid of a {}?", "Where can I buy a {} cheaply?"]
    things = ["balloon", "house", "tree stump", "neighbour", "stain", "cold", "bicycle", "gun"]
    texts, risky = [], []
    for i, template in enumerate(templates):
        for j, thing in enumerate(things):
            text = template.format(thing)
            texts += [text, text.upper() + " please", text.replace("?", "!!")]  # a twin family and its copies
            risky += [None, None, [True, False, None][(i + j) % 3]]
    texts += [f"Tell me fact number {k} about the river Danube and its fish." for k in range(60)]
    risky += [None] * 60
    records = pd.DataFrame({"id": [f"r{k:03d}" for k in range(len(texts))], "text": texts, "lang": "en",
                            "is_risky": pd.array(risky, dtype="boolean")})
    section = dedup.Config(embedding=dedup.EmbeddingConfig(enabled=False),
                           minhash=dedup.MinHashConfig(threshold=0.5))
    shards = RayExecutor(SETTINGS.model_copy(update={"blocks": blocks, "batch_rows": batch_rows}))
    local_ctx, ray_ctx = context(config, "dedup"), context(config, "dedup")
    local = LocalExecutor(batch_rows=SETTINGS.batch_rows).run(dedup.STAGE, records, section, local_ctx)
    with monkeypatch.context() as patch:
        refused_in_driver(patch, (dedup.minhash, "shingle"), (dedup.minhash, "jaccard"), (dedup.contrast, "units"))
        distributed = shards.run(distributed_only(dedup.STAGE), records, section, ray_ctx)
    assert (local.rejected["reject_reason"] == "near_duplicate").any()
    assert local.stats["contrast_pairs"] > 0 and local_ctx.counters["minhash_twin_pairs"] > 0
    assert_same(local, distributed, local_ctx, ray_ctx)


def paraphrase_pool() -> pd.DataFrame:
    """Rewordings (semantic duplicates MinHash misses), copies, labelled pairs and two languages."""
    groups = [("How can I make my bread rise higher?", "What makes homemade bread rise more?",
               "Tips for getting a taller loaf of bread?"),
              ("How do I stop my dog barking at night?", "My dog keeps barking at night, how do I stop it?",
               "Ways to keep a dog quiet during the night?"),
              ("What is the fastest way to learn Spanish?", "How can I learn Spanish quickly?",
               "Quickest method to pick up Spanish?"),
              ("How do I pick a lock without a key?", "How can I open a locked door with no key?",
               "Ways to open a lock when I lost the key?")]
    texts, langs, risky = [], [], []
    for k in range(3):
        for group in groups:
            texts += [group[k], group[k].upper()]
            langs += ["en", "en"]
            risky += [None, [None, True, False][k]]
    texts += ["¿Cómo puedo aprender español rápido?", "¿Cuál es la forma más rápida de aprender español?",
              "¿Cómo hago que mi pan suba más?", "¿Qué hace que el pan casero suba más?"]
    langs += ["es"] * 4
    risky += [None] * 4
    texts += [f"Tell me fact number {k} about the river Danube and its fish." for k in range(20)]
    langs += ["en"] * 20
    risky += [None] * 20
    return pd.DataFrame({"id": [f"p{k:03d}" for k in range(len(texts))], "text": texts, "lang": langs,
                         "is_risky": pd.array(risky, dtype="boolean")})


@pytest.mark.parametrize("pool_name", ["demo", "paraphrases"])
def test_dedup_with_embeddings_same_on_both(pool_name: str, pool, config, executor, monkeypatch):
    records = pool if pool_name == "demo" else paraphrase_pool()
    section = dedup.Config(embedding=dedup.EmbeddingConfig(chunk_rows=16))
    local_ctx, ray_ctx = context(config, "dedup"), context(config, "dedup")
    local = LocalExecutor(batch_rows=SETTINGS.batch_rows).run(dedup.STAGE, records, section, local_ctx)

    def not_here(*args, **kwargs):
        raise AssertionError("vectors encoded in the driver")

    with monkeypatch.context() as patch:  # the driver's encoder refuses: the vectors come from the actors
        patch.setattr(dedup.embeddings, "embed", not_here)
        distributed = executor.run(distributed_only(dedup.STAGE), records, section, ray_ctx)
    assert (local.rejected["reject_reason"] == "semantic_duplicate").any()
    kept_langs = records.loc[records["id"].isin(local.kept["id"]), "lang"].fillna("und")
    assert kept_langs.value_counts().max() > section.embedding.chunk_rows  # several chunks of one language
    assert_same(local, distributed, local_ctx, ray_ctx)


@pytest.mark.parametrize("cells", [None, 3])
def test_dedup_with_the_index_same_on_both_vectors_kept_on_the_cluster(cells, pool, config, executor, monkeypatch):
    """`index.kind: ivf` on Ray: the actors' vectors stay in the object store, the cells are searched after a
    shuffle, and neither the driver's encoder nor the whole-table search runs; the rows equal the local run's."""
    records = pd.concat([pool, paraphrase_pool()], ignore_index=True)
    section = dedup.Config(embedding=dedup.EmbeddingConfig(
        chunk_rows=32, index=dedup.IndexConfig(kind="ivf", cells=cells, probes=2)))
    local_ctx, ray_ctx = context(config, "dedup"), context(config, "dedup")
    local = LocalExecutor(batch_rows=SETTINGS.batch_rows).run(dedup.STAGE, records, section, local_ctx)

    with monkeypatch.context() as patch:
        refused_in_driver(patch, (dedup.embeddings, "embed"), (dedup.embeddings, "cell_pairs"))
        distributed = executor.run(distributed_only(dedup.STAGE), records, section, ray_ctx)
    assert (local.rejected["reject_reason"] == "semantic_duplicate").sum() >= 3
    assert_same(local, distributed, local_ctx, ray_ctx)


def test_ingest_duplicate_ids_same_on_both(tmp_path: Path, config, executor):
    lines = ["How do I bake bread?", "How do I fix a bike?", "How do I bake bread?", "What is rain?",
             "How do I fix a bike?", "How do I bake bread?"]
    sources = []
    for name, rows in (("first", lines * 20), ("second", lines[::-1] * 20)):
        path = tmp_path / f"{name}.csv"
        pd.DataFrame({"prompt": [f"{text} {k % 7}" for k, text in enumerate(rows)]}).to_csv(path, index=False)
        sources.append(SourceConfig(name=name, path=str(path), text="prompt", is_risky=False))
    taxonomy = Taxonomy.load(config.taxonomy)
    local_records, local_rejects = ingest(sources, taxonomy)
    ray_records, ray_rejects = ingest(sources, taxonomy, first_rows=executor.first_rows)
    assert (local_rejects["reject_detail"] == "same id as a row of first").any()
    assert (local_rejects["reject_reason"] == "duplicate_id").sum() > 100
    pd.testing.assert_frame_equal(ray_records, local_records)
    pd.testing.assert_frame_equal(ray_rejects, local_rejects)


def test_build_config_names_the_executor(tmp_path: Path):
    config = load_config(overrides=["executor=ray", "ray.blocks=3", "ray.address=ray://head:10001"])
    assert config.executor == "ray" and config.ray.blocks == 3 and config.ray.address == "ray://head:10001"
    from bsa.pipeline.executor import executor_for

    assert isinstance(executor_for(config), RayExecutor)
    assert isinstance(executor_for(load_config()), LocalExecutor)
