"""The approximate embedding search (an inverted-file index, embeddings.cell_pairs): every pair it returns is
an exact pair, with the exact search's cosine; it is reproducible; it finds nearly every pair of a clustered
pool; and the dedup stage runs with it. Recall on real prompts is measured in the bench (docs/dedup.md)."""

from __future__ import annotations

import numpy as np

from bsa.stages import dedup
from bsa.text.embeddings import cell_pairs, similar_pairs
from tests.test_dedup import DISTINCT, records, run


def clustered(rows: int, groups: int, spread: float, seed: int = 3) -> np.ndarray:
    """Unit vectors around `groups` random directions (a pool of topics, each with near copies)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, 64))
    vectors = centres[rng.integers(groups, size=rows)] + spread * rng.normal(size=(rows, 64))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, pairs.tolist()))


def test_every_pair_found_is_an_exact_pair_with_its_cosine():
    vectors = clustered(3000, 40, 0.35)
    exact, exact_cosines = similar_pairs(vectors, 0.8)
    found, cosines = cell_pairs(vectors, 0.8, cells=30, probes=2, seed=1)
    assert len(found) and as_set(found) <= as_set(exact)
    assert (found[:, 0] < found[:, 1]).all() and len(as_set(found)) == len(found)  # i < j, each pair once
    score = dict(zip(map(tuple, exact.tolist()), exact_cosines.tolist(), strict=True))
    assert np.allclose(cosines, [score[pair] for pair in map(tuple, found.tolist())], atol=1e-5)
    assert len(found) / len(exact) > 0.95  # pairs of one topic share their topic's cells


def test_the_same_seed_gives_the_same_pairs_and_more_probes_find_more():
    vectors = clustered(2000, 25, 0.5)
    first, _ = cell_pairs(vectors, 0.7, cells=40, probes=1, seed=5)
    again, _ = cell_pairs(vectors, 0.7, cells=40, probes=1, seed=5)
    wider, _ = cell_pairs(vectors, 0.7, cells=40, probes=3, seed=5)
    exact, _ = similar_pairs(vectors, 0.7)
    assert np.array_equal(first, again)
    assert as_set(first) < as_set(wider) <= as_set(exact)


def test_few_cells_is_the_exact_search():
    vectors = clustered(500, 5, 0.4)
    exact, _ = similar_pairs(vectors, 0.8)
    found, _ = cell_pairs(vectors, 0.8, cells=2, probes=2)
    assert np.array_equal(found, exact)


def test_the_stage_runs_with_the_index():
    texts = DISTINCT + ["How can I get rid of a wasp nest in my garden?",
                        "What is the best way to remove a wasps nest from my garden?"]  # cosine 0.92
    exact_kept, _ = run(records(texts))
    ivf_kept, ivf_rejected = run(records(texts), embedding={"index": {"kind": "ivf", "cells": 3, "probes": 2}})
    assert ivf_kept["id"].tolist() == exact_kept["id"].tolist()
    assert list(ivf_rejected["reject_reason"]) == ["semantic_duplicate"]  # the wasp pair, in a shared cell
    assert dedup.Config.model_validate({"embedding": {"index": {"kind": "ivf"}}}).embedding.index.probes == 2
