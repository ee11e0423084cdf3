"""Which images of a frame are the same image: the dedup stage joins two items only when their images are.

- every image: the same bytes (fields.IMAGE_SHA256);
- rendered typography (fields.RENDER_SPEC): the same rendered text, normalised (bsa.pipeline.records.
  normalize_text), whatever the layout or size: perceptual hashes put cards of different text 5 to 10 bits
  apart and the same text at another size 6 to 7, so they cannot tell cards apart;
- photos and other images not rendered here (unless their style is typography, which only the bytes
  compare): a perceptual hash (imagehash's pHash, 64 bits by default) within `threshold` bits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import imagehash
import numpy as np
import pandas as pd
from PIL import Image

from bsa.multimodal import fields as mm
from bsa.pipeline.records import normalize_text

NO_PAIRS = np.zeros((0, 2), dtype=np.int64)


@dataclass(frozen=True)
class ImagePairs:
    """Pairs of rows (positions, first < second) holding the same image, and how each was found."""

    pairs: np.ndarray
    how: list[str]  # per pair: "same bytes", "same rendered text" or "pHash distance N"


def _groups(keys: list[object]) -> np.ndarray:
    """Pairs (first row of a key, each later row of it) of rows sharing a non-empty key."""
    first: dict[object, int] = {}
    pairs = []
    for row, key in enumerate(keys):
        if key is None:
            continue
        if key in first:
            pairs.append((first[key], row))
        else:
            first[key] = row
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _value(frame: pd.DataFrame, column: str) -> list[object]:
    if column not in frame.columns:
        return [None] * len(frame)
    return [None if v is None or (isinstance(v, float) and v != v) or v == "" else v for v in frame[column]]


def perceptual_hashes(paths: list[str], hash_size: int = 8) -> np.ndarray:
    """pHash of each image as rows of bits (hash_size**2 of them)."""
    bits = np.zeros((len(paths), hash_size * hash_size), dtype=bool)
    for row, path in enumerate(paths):
        with Image.open(path) as image:
            bits[row] = imagehash.phash(image, hash_size=hash_size).hash.ravel()
    return bits


def close_hashes(bits: np.ndarray, threshold: int, block_rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of hashes at most `threshold` bits apart, and their distances, block by block."""
    packed = np.packbits(bits, axis=1)
    found, distances = [], []
    for start in range(0, len(packed), block_rows):
        block = packed[start:start + block_rows]
        apart = np.bitwise_count(block[:, None, :] ^ packed[None, :, :]).sum(axis=2)
        rows, cols = np.nonzero(apart <= threshold)
        rows = rows + start
        upper = rows < cols
        found.append(np.stack([rows[upper], cols[upper]], axis=1))
        distances.append(apart[rows[upper] - start, cols[upper]])
    if not found:
        return NO_PAIRS, np.zeros(0, dtype=np.int64)
    return np.concatenate(found), np.concatenate(distances)


def same_images(records: pd.DataFrame, threshold: int, hash_size: int = 8) -> ImagePairs:
    """Every pair of rows whose images count as the same (the module's three rules)."""
    digests = _value(records, mm.IMAGE_SHA256)
    specs = _value(records, mm.RENDER_SPEC)
    styles = _value(records, mm.IMAGE_STYLE)
    paths = _value(records, mm.IMAGE)
    texts = [normalize_text(json.loads(s)["text"]) if s else None for s in specs]
    photo = [i for i, (s, p, st) in enumerate(zip(specs, paths, styles, strict=True))
             if s is None and p is not None and st != "typography"]
    parts: list[tuple[np.ndarray, list[str]]] = []
    exact = _groups(digests)
    parts.append((exact, ["same bytes"] * len(exact)))
    rendered = _groups(texts)
    parts.append((rendered, ["same rendered text"] * len(rendered)))
    if photo and threshold >= 0:
        local, distance = close_hashes(perceptual_hashes([paths[i] for i in photo], hash_size), threshold)
        index = np.array(photo, dtype=np.int64)
        parts.append((index[local] if len(local) else NO_PAIRS, [f"pHash distance {d}" for d in distance]))
    seen: dict[tuple[int, int], str] = {}
    for pairs, how in parts:  # the first rule that finds a pair names it
        for (a, b), note in zip(pairs.tolist(), how, strict=True):
            seen.setdefault((min(a, b), max(a, b)), note)
    ordered = sorted(seen)
    return ImagePairs(np.array(ordered, dtype=np.int64).reshape(-1, 2), [seen[p] for p in ordered])
