"""Past one machine: a Ray cluster of two nodes (two raylets, each with its own object store and one CPU,
started here as `ray start` starts them on two machines; Ray's own `ray.cluster_utils.Cluster`). The executor
joins it by its address, its batches run on both nodes, and clean, language and dedup (MinHash, then the
embedding vectors encoded by actors) give the local executor's rows, reasons, stats and counters."""

from __future__ import annotations

import pytest

from bsa.pipeline.config import RaySettings
from bsa.stages import clean, dedup, language
from tests.test_executor_ray import assert_same, both, config, pool  # noqa: F401 (fixtures)

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'bsa-builder[ray]')")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from bsa.pipeline.executor_ray import RayExecutor  # noqa: E402


@pytest.fixture(scope="module")
def two_nodes():
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_stages_on_two_nodes_give_the_local_results(two_nodes, pool, config):  # noqa: F811
    executor = RayExecutor(RaySettings(address=two_nodes.address, blocks=6, batch_rows=16, actors=2))
    try:
        kept, seen = pool, set()
        for stage in (clean.STAGE, language.STAGE, dedup.STAGE):
            local, distributed, local_ctx, ray_ctx = both(stage, kept, stage.settings(config), config, executor)
            assert_same(local, distributed, local_ctx, ray_ctx)
            if any(step.per_batch for step in stage.steps):
                assert len(executor.nodes) == 2, f"{stage.name}: its batches ran on {executor.nodes} only"
            seen.update(executor.nodes)
            kept = local.kept
        assert "embedding_pairs" in local_ctx.counters  # the embedding pass ran (on the actors, on Ray)
        assert {node["NodeID"] for node in ray.nodes() if node["Alive"]} == seen
    finally:
        executor.close()
