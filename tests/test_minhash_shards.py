"""MinHash's candidate search split over shards (bsa.text.minhash_shards) gives `candidate_pairs`' pairs exactly,
and its check of the pairs `jaccard`'s similarities (or the signature estimate), whatever the number of
partitions; the earliest row of each key is found the same way (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bsa.pipeline.keys import first_rows
from bsa.text import minhash, minhash_shards

SETTINGS = {"num_perm": 64, "ngram": 1, "char_ngram": 2, "seed": 3}


def pool(rows: int = 600, seed: int = 0) -> list[str]:
    """Texts with exact copies, near duplicates and one large bucket (a word repeated on its own)."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(rows // 2)]
    texts += [texts[int(i)] for i in rng.integers(0, len(texts), rows // 4)]  # exact copies
    texts += [texts[int(i)] + " extra" for i in rng.integers(0, len(texts), rows // 4 - 80)]  # near duplicates
    texts += ["same"] * 80  # a bucket above max_bucket
    return [texts[int(i)] for i in rng.permutation(len(texts))]


@pytest.mark.parametrize("partitions,shards", [(1, 1), (3, 4), (7, 9)])
def test_shards_give_the_pairs_of_candidate_pairs(partitions: int, shards: int):
    texts = pool()
    bands, rows = minhash.bands_and_rows(0.5, SETTINGS["num_perm"], 0.1, 0.9)
    sigs = minhash.signatures(minhash.shingle(texts, ngram=1, char_ngram=2), SETTINGS["num_perm"], SETTINGS["seed"])
    expected = minhash.candidate_pairs(sigs, bands, rows)
    bounds = np.linspace(0, len(texts), shards + 1).astype(int)
    records = pd.concat([minhash_shards.band_rows(texts[lo:hi], None, np.arange(lo, hi), bands=bands, rows=rows,
                                                  partitions=partitions, **SETTINGS)
                         for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)])
    found = [minhash_shards.partition_pairs({c: g[c].to_numpy() for c in g.columns})
             for _, g in records.sample(frac=1, random_state=1).groupby("part")]  # any order within a partition
    pairs = minhash_shards.unique_pairs(np.concatenate([f["a"] for f in found]), np.concatenate([f["b"] for f in found]))
    assert len(expected) > 100
    np.testing.assert_array_equal(pairs, expected)


def shuffled(records: pd.DataFrame):
    """The records of each partition as a shuffle hands them over: numpy columns, in any order."""
    for _, group in records.sample(frac=1, random_state=2).groupby(minhash_shards.PART):
        yield {column: group[column].to_numpy() for column in group.columns}


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("partitions,shards", [(1, 1), (3, 4), (7, 9)])
def test_pairs_checked_on_shards_score_as_in_one_place(partitions: int, shards: int, verify: bool):
    texts, rng = pool(), np.random.default_rng(partitions)
    langs = [["en", "zh", None][k % 3] for k in range(len(texts))]
    pairs = minhash.distinct_pairs(rng.integers(0, len(texts), (900, 2)))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    shingles = minhash.shingle(texts, langs, ngram=SETTINGS["ngram"], char_ngram=SETTINGS["char_ngram"])
    expected = (minhash.jaccard(shingles, pairs) if verify else minhash_shards.estimate(
        minhash.signatures(shingles, SETTINGS["num_perm"], SETTINGS["seed"]), pairs))
    rows, parts = minhash_shards.destinations(pairs, partitions)
    bounds = np.linspace(0, len(texts), shards + 1).astype(int)
    records = pd.concat([minhash_shards.shingle_records(texts[lo:hi], langs[lo:hi], np.arange(lo, hi), rows, parts,
                                                        ngram=SETTINGS["ngram"], char_ngram=SETTINGS["char_ngram"])
                         for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)])
    assert len(records) == len(rows) and set(records[minhash_shards.SEQ]) == set(pairs.ravel().tolist())
    ordered, bounds = minhash_shards.by_partition(pairs, partitions)
    found = pd.DataFrame([row for group in shuffled(records) for row in zip(*minhash_shards.partition_similarity(
        group, ordered, bounds, verify, SETTINGS["num_perm"], SETTINGS["seed"]).values(), strict=True)],
                         columns=["a", "b", "similarity"])
    scored = found.set_index(["a", "b"])["similarity"]
    assert len(found) == len(pairs)
    np.testing.assert_array_equal(scored.loc[list(map(tuple, pairs.tolist()))].to_numpy(), expected)
    assert 0 < (expected == 1).sum() < len(expected)  # copies and others


def test_distinct_pairs_sorts_and_deduplicates():
    pairs = np.array([[5, 2], [2, 5], [1, 9], [0, 3], [9, 1], [3, 3]])
    assert minhash.distinct_pairs(pairs).tolist() == [[0, 3], [1, 9], [2, 5], [3, 3]]
    assert minhash.distinct_pairs(np.zeros((0, 2))).shape == (0, 2)


def test_first_rows_points_at_the_earliest_row_of_each_key():
    keys = pd.Series(["b", "a", "b", None, "c", None, "a"], dtype=object)
    assert first_rows(keys).tolist() == [0, 1, 0, 3, 4, 3, 1]
    assert first_rows(pd.Series([], dtype=object)).tolist() == []


class InProcessShards:
    """What dedup's check asks of `executor_ray.Shards` (partitions, share, shuffle), run in this process on
    batches of a frame: the shuffle's records grouped by partition, as Ray groups them."""

    def __init__(self, frame: pd.DataFrame, partitions: int, batch_rows: int):
        self.frame, self.partitions, self.batch_rows = frame, partitions, batch_rows

    def share(self, value):
        return value

    def shuffle(self, explode, group, *args, group_args=(), reads=None):
        frame = self.frame if reads is None else self.frame[[*reads, minhash_shards.SEQ]]
        batches = [frame.iloc[lo:lo + self.batch_rows] for lo in range(0, len(self.frame), self.batch_rows)]
        records = pd.concat([explode(batch, *args) for batch in batches], ignore_index=True)
        return pd.DataFrame([row for columns in shuffled(records)
                             for row in zip(*group(columns, *group_args).values(), strict=True)],
                            columns=["a", "b", "similarity"])


def test_a_chain_joined_row_is_scored_on_the_shards_the_others_looked_up():
    from bsa.stages import dedup

    texts = pool()
    settings = dedup.MinHashConfig(ngram=1, char_ngram=2)
    rows = InProcessShards(pd.DataFrame({"text": texts, "lang": "en", minhash_shards.SEQ: np.arange(len(texts))}),
                           partitions=3, batch_rows=37)
    pairs = minhash.distinct_pairs(np.random.default_rng(5).integers(0, len(texts), (400, 2)))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    expected = minhash.jaccard(minhash.shingle(texts, ["en"] * len(texts), ngram=1, char_ngram=2), pairs)
    scored = pairs[::2]  # half already scored: looked up; the rest scored by a shuffle
    found = dedup.shard_jaccard(rows, pairs, settings, scored, expected[::2])
    np.testing.assert_array_equal(found, expected)
    # scored pairs whose similarity is an estimate are not looked up: every pair scored on the shards
    assert np.array_equal(dedup.shard_jaccard(rows, pairs, settings, scored, None), expected)
