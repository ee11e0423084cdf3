"""MinHash near-duplicate search, vectorised with numpy: shingle -> hash -> signatures -> LSH bands -> pairs.

The signatures are exactly datasketch's `MinHash` (scheme `affine32`, its permutations for the same seed)
fed with our 32-bit shingle hashes, so a row's signature equals
`MinHash(num_perm, seed, hashfunc=int).update_batch(shingle_hashes)`. What differs is how they are computed:
every shingle of a chunk of rows is hashed and permuted in one numpy expression instead of one
Python call per shingle, and LSH banding groups equal band keys with a sort instead of a Python dict.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np

from bsa.text.charclass import CJK, HANGUL
from bsa.text.onnx_encoder import usable_cores

_WORD = re.compile(r"\w")
_CJK = re.compile(f"[{CJK}{HANGUL}]")  # shingled by characters
CJK_LANGS = ("zh", "ja", "ko")
CJK_SHARE = 0.3  # a text whose word characters are at least this share CJK is shingled by characters
_PAD = np.uint64(0x9E3779B97F4A7C15)  # stands in for the missing tokens of a text shorter than n
_MIX = np.uint64(0x100000001B3)
_POLY = np.uint64(0x100000001B3)  # odd, so invertible modulo 2**64
_POLY_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_KIND_SEPARATOR, _KIND_WORD, _KIND_CJK = 0, 1, 2
_MASK32 = np.uint64(0xFFFFFFFF)
_CHUNK_CELLS = 1 << 18  # shingles x permutations computed at once (1 MiB of uint32: stays in cache)


@dataclass(frozen=True)
class Shingles:
    """The 32-bit shingle hashes of every row, flat, with `offsets[i]:offsets[i+1]` belonging to row i."""

    hashes: np.ndarray  # uint32
    offsets: np.ndarray  # int64, len(rows) + 1

    @property
    def rows(self) -> int:
        return len(self.offsets) - 1

    def take(self, rows: np.ndarray) -> Shingles:
        """The shingles of the given rows, in that order."""
        sizes = np.diff(self.offsets)[rows]
        flat = np.repeat(self.offsets[rows], sizes) + ranks(sizes)
        return Shingles(self.hashes[flat], np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))

    def unique_per_row(self) -> Shingles:
        """The same rows with each row's shingles sorted and deduplicated (sets, for exact Jaccard)."""
        row = np.repeat(np.arange(self.rows, dtype=np.uint64), np.diff(self.offsets))
        keys = _sorted_unique((row << np.uint64(32)) | self.hashes.astype(np.uint64))
        counts = np.bincount((keys >> np.uint64(32)).astype(np.int64), minlength=self.rows)
        return Shingles((keys & _MASK32).astype(np.uint32), np.concatenate([[0], np.cumsum(counts)]))


def _sorted_unique(keys: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (a sort and a mask: several times faster than np.unique's hash table here)."""
    keys = np.sort(keys)
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys


# -- shingling ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tokens:
    """Every row's token hashes, flat, `lengths[i]` of them for row i."""

    hashes: np.ndarray  # uint64, one per token
    lengths: np.ndarray  # int64, tokens per row
    by_chars: np.ndarray  # bool, rows whose n-grams are character n-grams (CJK)


@lru_cache(maxsize=1 << 16)
def _char_class(point: int) -> tuple[int, int]:
    """(folded code point, class) of a character: NFKC then case-folded (when that gives one character);
    class 1 for a word character, 2 for a CJK character (a token by itself), 0 for a separator."""
    char = chr(point)
    folded = unicodedata.normalize("NFKC", char).casefold()
    if len(folded) == 1:
        char = folded
    kind = _KIND_CJK if _CJK.match(char) else _KIND_WORD if _WORD.match(char) else _KIND_SEPARATOR
    return ord(char), kind


_FOLD = np.zeros(0, dtype=np.uint64)  # by code point: the folded code point of a token character, 0 elsewhere
_KIND = np.zeros(0, dtype=np.int8)  # by code point: its class
_KNOWN = np.zeros(0, dtype=bool)  # by code point: the two entries above are filled in
_TABLES_LOCK = threading.Lock()  # chunks are tokenised on several threads


def _char_tables(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables indexed by code point, filled in for every point met so far in this process: the
    folded code point of a token character (0 for a separator, so it adds nothing to a token's hash) and
    the class."""
    global _FOLD, _KIND, _KNOWN
    present = np.flatnonzero(np.bincount(points))
    with _TABLES_LOCK:
        if len(present) and present[-1] >= len(_KNOWN):
            size = int(present[-1]) + 1
            _FOLD, _KIND, _KNOWN = (np.concatenate([table, np.zeros(size - len(table), dtype=table.dtype)])
                                    for table in (_FOLD, _KIND, _KNOWN))
        for point in present[~_KNOWN[present]].tolist():
            folded, kind = _char_class(point)
            _FOLD[point], _KIND[point], _KNOWN[point] = folded if kind != _KIND_SEPARATOR else 0, kind, True
        return _FOLD, _KIND


def _tokenise_chunk(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token hashes, row of each token, whether each token is a CJK character) for a few texts.

    The texts are joined and handled as one array of code points: a token is a run of word characters
    or a single CJK character, hashed as a polynomial over its folded code points (by prefix sums).
    """
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    points = np.frombuffer(" ".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    fold, kind = _char_tables(points)
    kinds = kind[points]
    word, cjk = kinds == _KIND_WORD, kinds == _KIND_CJK
    edges = np.diff(word.view(np.int8), prepend=np.int8(0), append=np.int8(0))  # +1 a word starts, -1 it ended
    starts = np.flatnonzero((edges[:-1] == 1) | cjk)
    single = cjk[starts]
    ends = starts + 1  # a CJK character; a word ends where its run of word characters does
    ends[~single] = np.flatnonzero(edges == -1)
    powers, inverse = _powers(len(points))  # _POLY ** position, _POLY ** -position
    prefix = np.empty(len(points) + 1, dtype=np.uint64)
    prefix[0] = 0
    np.cumsum(fold[points] * powers, out=prefix[1:])  # separators fold to 0
    hashes = _fmix64((prefix[ends] - prefix[starts]) * inverse[starts] + (ends - starts).astype(np.uint64))
    # at each point, how many rows start there (empty texts share a start; one may start past the last point)
    new_rows = np.bincount((np.cumsum(lengths + 1) - (lengths + 1))[1:], minlength=len(points) + 1)
    return hashes, np.cumsum(new_rows)[starts], single


_POWERS: list[tuple[np.ndarray, np.ndarray]] = []  # the longest tables made so far (one entry)


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """_POLY ** k and _POLY ** -k (mod 2**64) for k < n; computed once for the largest n (a cumprod cannot
    be vectorised, and every chunk of text would repeat it), then sliced."""
    if not _POWERS or len(_POWERS[0][0]) < n:
        size = max(n, 1 << 16)
        _POWERS[:] = [(np.cumprod(np.full(size, _POLY, dtype=np.uint64)) * _POLY_INV,
                       np.cumprod(np.full(size, _POLY_INV, dtype=np.uint64)) * _POLY)]
    powers, inverse = _POWERS[0]
    return powers[:n], inverse[:n]


def _chunks(texts: Sequence[str], max_chars: int = 1 << 19) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges of about `max_chars` characters (at least one row; a few MiB of arrays per
    chunk stay in the CPU's cache: 20% faster than 4M characters at once)."""
    offsets = np.concatenate([[0], np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1)])
    return _row_chunks(offsets, max_chars)


def tokenise(texts: Sequence[str], langs: Sequence[str | None] | None = None) -> Tokens:
    """Normalised tokens (NFKC, case-folded, punctuation dropped): words, and each CJK character alone.

    A row is CJK when `lang` is a CJK code or CJK characters make up at least `CJK_SHARE` of its
    tokens. A text without word characters is one token: itself, normalised and stripped.
    """
    chunks = list(_chunks(texts))
    done = _in_threads(lambda chunk: _tokenise_chunk(texts[chunk[0]:chunk[1]]), chunks)
    parts = [(hashes, rows + lo, cjk) for (lo, _), (hashes, rows, cjk) in zip(chunks, done, strict=True)]
    hashes = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.uint64)
    rows = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    cjk = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, dtype=bool)
    lengths = np.bincount(rows, minlength=len(texts)).astype(np.int64)
    cjk_tokens = np.bincount(rows, weights=cjk, minlength=len(texts))
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        whole = [unicodedata.normalize("NFKC", texts[i]).casefold().strip() for i in empty]
        hashes = np.insert(hashes, (np.cumsum(lengths) - lengths)[empty], _blake64(whole))
        lengths[empty] = 1
    tagged = np.zeros(len(texts), dtype=bool)
    if langs is not None:
        cjk_lang = {lang: isinstance(lang, str) and lang.lower().startswith(CJK_LANGS) for lang in set(langs)}
        tagged = np.fromiter(map(cjk_lang.__getitem__, langs), dtype=bool, count=len(texts))
    return Tokens(hashes, lengths, tagged | ((cjk_tokens > 0) & (cjk_tokens >= CJK_SHARE * lengths)))


def _blake64(values: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash of each string (blake2b, independent of Python's hash seed)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(v.encode("utf-8"), digest_size=8).digest(), "little")
                        for v in values), dtype=np.uint64, count=len(values))


def _fmix64(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def shingle(texts: Sequence[str], langs: Sequence[str | None] | None = None, ngram: int = 3,
            char_ngram: int = 3) -> Shingles:
    """Hash the word n-grams (character n-grams for CJK) of each text; a text shorter than n is one shingle."""
    toks = tokenise(texts, langs)
    flat = toks.hashes
    n = np.where(toks.by_chars, char_ngram, ngram).astype(np.int64)
    windows = np.maximum(toks.lengths - n + 1, 1)
    starts = np.cumsum(toks.lengths) - toks.lengths
    first = np.repeat(starts, windows) + ranks(windows)
    hashed = _fmix64(flat[first])  # every window has its first token (a row has one token at least)
    n_of, end = np.repeat(n, windows), np.repeat(starts + toks.lengths, windows)
    for k in range(1, int(n.max(initial=1))):
        at = np.flatnonzero(k < n_of)  # the windows at least k + 1 tokens long
        position = first[at] + k
        token = np.where(position < end[at], flat[np.minimum(position, len(flat) - 1)], _PAD)
        hashed[at] = _fmix64(hashed[at] * _MIX + token)
    folded = ((hashed >> np.uint64(32)) ^ hashed) & _MASK32
    return Shingles(folded.astype(np.uint32), np.concatenate([[0], np.cumsum(windows)]).astype(np.int64))


def ranks(sizes: np.ndarray) -> np.ndarray:
    """0, 1, ..., size-1 for each size, concatenated."""
    total = int(sizes.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)


# -- signatures ---------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b) for this seed."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return a.astype(np.uint32), b.astype(np.uint32)


def signatures(shingles: Shingles, num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """(rows, num_perm) uint32 MinHash signatures, min over each row's permuted shingle hashes.

    Rows are taken by their number of shingles L: a block of rows with L shingles each is permuted into one
    reused (rows, L, num_perm) buffer of about `_CHUNK_CELLS` cells and reduced along L, so the minimum runs
    over contiguous rows of num_perm values (a `minimum.reduceat` per row cost a call per row and
    permutation, 1.5x the time).
    """
    a, b = permutations(num_perm, seed)
    out = np.empty((shingles.rows, num_perm), dtype=np.uint32)
    mixed = _fmix32(shingles.hashes)
    sizes = np.diff(shingles.offsets)
    order = np.argsort(sizes, kind="stable")
    bounds = np.flatnonzero(np.diff(sizes[order], prepend=-1, append=-1))
    blocks = []  # (rows, their shingle count)
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        length = int(sizes[order[lo]])
        per_block = max(1, _CHUNK_CELLS // (num_perm * max(length, 1)))
        blocks += [(order[start:min(start + per_block, hi)], length) for start in range(lo, hi, per_block)]
    threads = min(usable_cores(), len(blocks))

    def sign(part: list[tuple[np.ndarray, int]]) -> None:
        buffer = np.empty(max(_CHUNK_CELLS, num_perm * int(sizes.max(initial=1))), dtype=np.uint32)
        for rows, length in part:
            if length == 0:  # no shingle (not made by `shingle`): datasketch's empty signature
                out[rows] = np.uint32(0xFFFFFFFF)
                continue
            permuted = buffer[:len(rows) * length * num_perm].reshape(len(rows), length, num_perm)
            np.multiply(mixed[shingles.offsets[rows][:, None] + np.arange(length)][:, :, None], a, out=permuted)
            permuted += b
            out[rows] = permuted.min(axis=1)

    _in_threads(sign, [blocks[k::threads] for k in range(threads)])
    return out


def _in_threads(work: Callable, items: list) -> list:
    """`[work(item) for item in items]` on one thread per usable core (numpy releases the GIL in its loops)."""
    if usable_cores() < 2 or len(items) < 2:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(usable_cores(), len(items))) as pool:
        return list(pool.map(work, items))


def _row_chunks(offsets: np.ndarray, max_items: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges holding about `max_items` items each (at least one row)."""
    rows, lo = len(offsets) - 1, 0
    while lo < rows:
        hi = int(np.searchsorted(offsets, offsets[lo] + max_items, side="right")) - 1
        hi = min(rows, max(hi, lo + 1))
        yield lo, hi
        lo = hi


# -- LSH ----------------------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def bands_and_rows(threshold: float, num_perm: int, false_positive_weight: float = 0.5,
                   false_negative_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows per band) minimising datasketch's weighted false positive and negative areas."""
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(threshold, num_perm, false_positive_weight, false_negative_weight)
    return int(bands), int(rows)


def _band_keys(band: np.ndarray) -> np.ndarray:
    """One 64-bit key per (row, band) for a (..., r) block of signatures: its last axis is hashed away."""
    key = np.zeros(band.shape[:-1], dtype=np.uint64)
    for column in np.moveaxis(band, -1, 0).copy():  # one contiguous copy: each column read without a stride
        key = key * _MIX + column
    return _fmix64(key)


def _groups(keys: np.ndarray) -> list[np.ndarray]:
    """Row indices sharing a key, as one (groups, size) matrix per group size (size >= 2), members sorted.

    The row index replaces the key's low bits and the whole is sorted (a sort of numbers is 2x faster than
    an argsort); rows whose remaining high bits meet are then grouped again by their full key."""
    if len(keys) < 2:
        return []
    bits = np.uint64((len(keys) - 1).bit_length())
    low = (np.uint64(1) << bits) - np.uint64(1)
    packed = np.sort((keys & ~low) | np.arange(len(keys), dtype=np.uint64))
    high = packed >> bits
    meets = high[1:] == high[:-1]
    grouped = np.concatenate([[False], meets]) | np.concatenate([meets, [False]])
    rows = (packed[grouped] & low).astype(np.int64)
    if not len(rows):
        return []
    return [np.sort(rows[members], axis=1) for members in _groups_by_argsort(keys[rows])]


def _groups_by_argsort(keys: np.ndarray) -> list[np.ndarray]:
    """Like `_groups`, by an argsort of the keys (members unsorted)."""
    order = np.argsort(keys)
    ordered = keys[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    sizes = np.diff(np.append(starts, len(keys)))
    return [order[starts[sizes == size][:, None] + np.arange(size)] for size in np.unique(sizes[sizes > 1])]


def _pairs_within(members: np.ndarray, max_bucket: int) -> np.ndarray:
    """(pairs, 2) of every two members of each group; a group above `max_bucket` pairs with its first only."""
    size = members.shape[1]
    if size > max_bucket:
        left, right = np.repeat(members[:, :1], size - 1, axis=1), members[:, 1:]
    else:
        i, j = np.triu_indices(size, 1)
        left, right = members[:, i], members[:, j]
    return np.stack([left.ravel(), right.ravel()], axis=1)


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int, max_bucket: int = 64) -> np.ndarray:
    """Unique (i < j) pairs of rows that share at least one LSH band. Rows with equal signatures are
    paired with the first of them only, so a text repeated a thousand times costs a thousand pairs."""
    keys = _band_keys(sigs[:, :bands * rows].reshape(len(sigs), bands, rows))  # (rows, bands)
    full = _band_keys(np.concatenate([keys, sigs[:, bands * rows:]], axis=1))  # the whole signature's key
    parts = []
    distinct = np.ones(len(sigs), dtype=bool)
    for members in _groups(full):
        parts.append(_pairs_within(members, max_bucket=1))
        distinct[members[:, 1:].ravel()] = False
    index = np.flatnonzero(distinct)
    keys = np.ascontiguousarray(keys[index].T)  # band-major: each band's keys contiguous
    for band in range(bands):
        parts += [index[_pairs_within(members, max_bucket)] for members in _groups(keys[band])]
    if not parts:
        return np.zeros((0, 2), dtype=np.int64)
    return distinct_pairs(np.concatenate(parts))


def distinct_pairs(pairs: np.ndarray) -> np.ndarray:
    """(pairs, 2) int64, each pair once, the smaller row first, sorted; each pair coded as one integer for the
    sort (np.unique(axis=0) sorts rows as opaque records: 9x slower on 3 million pairs, 2026-12-07)."""
    if not len(pairs):
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(np.asarray(pairs, dtype=np.int64), axis=1)
    n = int(pairs.max()) + 1
    codes = _sorted_unique(pair_codes(pairs, n))
    return np.stack([codes // np.uint64(n), codes % np.uint64(n)], axis=1).astype(np.int64)


def pair_codes(pairs: np.ndarray, n: int) -> np.ndarray:
    """Each pair of rows (below n) as one uint64, in the pairs' lexicographic order."""
    return pairs[:, 0].astype(np.uint64) * np.uint64(n) + pairs[:, 1].astype(np.uint64)


# -- verification -------------------------------------------------------------------------------------------
def jaccard(shingles: Shingles, pairs: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of each pair of rows."""
    involved, local = np.unique(pairs, return_inverse=True)
    sets = shingles.take(involved).unique_per_row()
    local = local.reshape(pairs.shape)
    sizes = np.diff(sets.offsets)
    parts = [_jaccard_chunk(sets, local[lo:lo + chunk], sizes) for lo in range(0, len(local), chunk)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float64)


def _jaccard_chunk(sets: Shingles, pairs: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    left, right = sizes[pairs[:, 0]], sizes[pairs[:, 1]]
    lengths = np.stack([left, right], axis=1).ravel()
    starts = sets.offsets[pairs.ravel()]
    values = sets.hashes[np.repeat(starts, lengths) + ranks(lengths)]
    owner = np.repeat(np.arange(len(pairs), dtype=np.uint64), left + right)
    # each row's set is sorted: the keys are runs of sorted values, which a stable sort (timsort) merges
    keys = np.sort((owner << np.uint64(32)) | values.astype(np.uint64), kind="stable")
    shared = keys[1:][keys[1:] == keys[:-1]] >> np.uint64(32)
    inter = np.bincount(shared.astype(np.int64), minlength=len(pairs))
    union = left + right - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


@dataclass(frozen=True)
class NearDuplicates:
    """Verified pairs of rows (i < j), their similarity, how many candidates LSH proposed, and the exact
    Jaccard similarity of any pairs of the rows (`jaccard_of(pairs)`)."""

    pairs: np.ndarray
    similarity: np.ndarray
    candidates: int
    bands: int
    rows: int
    jaccard_of: Callable[[np.ndarray], np.ndarray]


def near_duplicates(texts: Sequence[str], langs: Sequence[str | None] | None = None, *, num_perm: int = 128,
                    threshold: float = 0.7, ngram: int = 1, char_ngram: int = 2, seed: int = 1,
                    verify: bool = True, false_negative_weight: float = 0.9) -> NearDuplicates:
    """Pairs of texts whose shingle sets are at least `threshold` similar: LSH proposes, Jaccard verifies.

    With `verify` the exact Jaccard of the shingle sets decides; without it, the signature estimate.
    Bands and rows minimise datasketch's false positive and negative areas weighted 1 - w and w.
    """
    shingles = shingle(texts, langs, ngram=ngram, char_ngram=char_ngram)
    sigs = signatures(shingles, num_perm=num_perm, seed=seed)
    bands, rows = bands_and_rows(threshold, num_perm, 1 - false_negative_weight, false_negative_weight)
    candidates = candidate_pairs(sigs, bands, rows)
    if verify:
        similarity = jaccard(shingles, candidates)
    else:
        similarity = (sigs[candidates[:, 0]] == sigs[candidates[:, 1]]).mean(axis=1)
    keep = similarity >= threshold
    return NearDuplicates(candidates[keep], similarity[keep], len(candidates), bands, rows, partial(jaccard, shingles))


# -- pieces for a search spread over shards (bsa.text.minhash_shards) ------------------------------------
def band_keys(sigs: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, bands) LSH band keys of signatures and each row's whole-signature key, as `candidate_pairs`
    computes them."""
    keys = _band_keys(sigs[:, :bands * rows].reshape(len(sigs), bands, rows))
    return keys, _band_keys(np.concatenate([keys, sigs[:, bands * rows:]], axis=1))


def bucket_pairs(keys: np.ndarray, max_bucket: int = 64) -> np.ndarray:
    """(pairs, 2) of row indices sharing a key, as `candidate_pairs` pairs a band's buckets (a bucket above
    `max_bucket` rows pairs with its first row only); not deduplicated."""
    parts = [_pairs_within(members, max_bucket) for members in _groups(keys)]
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
