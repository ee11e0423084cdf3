"""MinHash's candidate search split for rows spread over shards (datatrove / NeMo Curator style), giving
exactly `minhash.candidate_pairs`' pairs, in `_seq` terms (a row's position in the stage's input).

1. `band_rows`, per batch: each row's signature (bsa.text.minhash, row by row), its LSH band keys and its
   whole-signature key, one record per (row, band), tagged with a coarse partition of the band key.
2. A shuffle groups the records by partition; `partition_pairs` finds the pairs inside one partition with
   numpy (one sort, not one call per bucket). Every copy of a signature shares all its band keys, hence its
   partition, so "a repeated signature pairs with its earliest copy only, the later copies leave the bands"
   is decided inside a partition as `candidate_pairs` decides it over all rows.
3. The driver joins and deduplicates the pairs (`unique_pairs`).
4. The exact check, on the cluster: each pair belongs to a partition (`pair_partition`); `shingle_records` sends
   each row's shingles to the partitions of the pairs it is in, where `partition_similarity` scores them
   (a broadcast join: the pairs, ordered by partition, and each row's partitions are put in the object store
   once; each task reads its own slice). The driver keeps
   only the pairs and one connected-components pass over them.
"""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd

from bsa.text import minhash

MAX_BUCKET = inspect.signature(minhash.candidate_pairs).parameters["max_bucket"].default
PART, BAND, KEY, FULL, SEQ, SHINGLES = "part", "band", "key", "full", "_seq", "shingles"


def band_rows(texts: list[str], langs: list[str | None] | None, seqs: np.ndarray, *, num_perm: int, ngram: int,
              char_ngram: int, seed: int, bands: int, rows: int, partitions: int) -> pd.DataFrame:
    """One record per (row, band): partition, band, band key, whole-signature key and the row's `_seq`."""
    sigs = minhash.signatures(minhash.shingle(texts, langs, ngram=ngram, char_ngram=char_ngram), num_perm, seed)
    keys, full = minhash.band_keys(sigs, bands, rows)
    return pd.DataFrame({PART: (keys.ravel() % np.uint64(partitions)).astype(np.int64),
                         BAND: np.tile(np.arange(bands, dtype=np.int16), len(seqs)),
                         KEY: keys.ravel(), FULL: np.repeat(full, bands),
                         SEQ: np.repeat(np.asarray(seqs, dtype=np.int64), bands)})


def partition_pairs(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The candidate pairs (a < b, as `_seq`) of one partition's records: equal whole signatures pair with
    their earliest copy (found in band 0, where every copy is), then each band's buckets of the rows left."""
    order = np.argsort(np.asarray(group[SEQ], dtype=np.int64), kind="stable")
    band, key = np.asarray(group[BAND])[order], np.asarray(group[KEY], dtype=np.uint64)[order]
    full, seq = np.asarray(group[FULL], dtype=np.uint64)[order], np.asarray(group[SEQ], dtype=np.int64)[order]
    parts = []
    for b in np.unique(band).tolist():
        at = np.flatnonzero(band == b)  # ascending `_seq`
        if b == 0:
            parts.append(seq[at][minhash.bucket_pairs(full[at], max_bucket=1)])
        _, first = np.unique(full[at], return_index=True)  # the earliest copy of each signature
        distinct = at[np.sort(first)]
        parts.append(seq[distinct][minhash.bucket_pairs(key[distinct], MAX_BUCKET)])
    pairs = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
    return {"a": pairs[:, 0].astype(np.int64), "b": pairs[:, 1].astype(np.int64)}


def unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(pairs, 2) sorted and distinct, the smaller `_seq` first."""
    return minhash.distinct_pairs(np.stack([np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)], axis=1))


def estimate(sigs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The signature estimate of each pair's Jaccard similarity (`near_duplicates` without `verify`)."""
    return (sigs[pairs[:, 0]] == sigs[pairs[:, 1]]).mean(axis=1)


def pair_partition(pairs: np.ndarray, partitions: int) -> np.ndarray:
    """Each pair's partition for the check: the sum of its rows' `_seq` modulo `partitions` (a row copied a
    thousand times pairs with its earliest copy a thousand times: by the first row alone, one partition
    would get them all)."""
    return (pairs[:, 0] + pairs[:, 1]) % partitions


def by_partition(pairs: np.ndarray, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs ordered by `pair_partition`, and where each partition's start (partitions + 1 bounds), so a
    partition's task takes its own slice instead of scanning every pair."""
    part = pair_partition(pairs, partitions)
    order = np.argsort(part, kind="stable")
    return pairs[order], np.searchsorted(part[order], np.arange(partitions + 1))


def destinations(pairs: np.ndarray, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each row's shingles must go for `partition_similarity`: (rows, partitions), sorted by row, one
    entry per distinct (row, partition); a pair's partition is `pair_partition`'s."""
    part = pair_partition(pairs, partitions)
    codes = np.unique(np.concatenate([pairs[:, 0], pairs[:, 1]]) * partitions + np.concatenate([part, part]))
    return codes // partitions, codes % partitions


def shingle_records(texts: list[str], langs: list[str | None] | None, seqs: np.ndarray, rows: np.ndarray,
                    parts: np.ndarray, *, ngram: int, char_ngram: int) -> pd.DataFrame:
    """One record per (row of a batch, partition it is sent to by `destinations`' `rows` and `parts`): the
    partition, the row's `_seq` and its shingle hashes (uint32 bytes)."""
    seqs = np.asarray(seqs, dtype=np.int64)
    lo, hi = np.searchsorted(rows, seqs, "left"), np.searchsorted(rows, seqs, "right")
    wanted = np.flatnonzero(hi > lo)
    shingles = minhash.shingle([texts[i] for i in wanted.tolist()],
                               None if langs is None else [langs[i] for i in wanted.tolist()],
                               ngram=ngram, char_ngram=char_ngram)
    counts = (hi - lo)[wanted]
    owner = np.repeat(np.arange(len(wanted)), counts)
    blobs = [shingles.hashes[shingles.offsets[i]:shingles.offsets[i + 1]].tobytes() for i in owner.tolist()]
    return pd.DataFrame({PART: parts[np.repeat(lo[wanted], counts) + minhash.ranks(counts)].astype(np.int64),
                         SEQ: seqs[wanted][owner], SHINGLES: pd.Series(blobs, dtype=object)})


def partition_similarity(group: dict[str, np.ndarray], pairs: np.ndarray, bounds: np.ndarray, verify: bool,
                         num_perm: int, seed: int) -> dict[str, np.ndarray]:
    """The similarity of the pairs of one partition (`pairs`, `bounds`: `by_partition`'s), from the shingles
    its records carry (`destinations`): exact Jaccard with `verify`, else the signature estimate, as
    `minhash.near_duplicates` decides."""
    seqs, first = np.unique(np.asarray(group[SEQ], dtype=np.int64), return_index=True)
    blobs = [np.frombuffer(group[SHINGLES][at], dtype=np.uint32) for at in first.tolist()]
    sizes = np.array([len(blob) for blob in blobs], dtype=np.int64)
    shingles = minhash.Shingles(np.concatenate([np.zeros(0, np.uint32), *blobs]),
                                np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
    part = int(group[PART][0])
    mine = pairs[bounds[part]:bounds[part + 1]]
    local = np.searchsorted(seqs, mine)
    similarity = (minhash.jaccard(shingles, local) if verify
                  else estimate(minhash.signatures(shingles, num_perm, seed), local))
    return {"a": mine[:, 0], "b": mine[:, 1], "similarity": similarity.astype(np.float64)}
