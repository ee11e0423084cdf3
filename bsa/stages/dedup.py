"""Stage 'dedup': near duplicates by MinHash LSH, then semantic duplicates by sentence embeddings.

1. MinHash (stages/minhash.py): word n-grams (character n-grams for CJK rows) of the normalised text,
   datasketch-compatible signatures computed with numpy, LSH bands and rows derived from the threshold,
   candidate pairs checked by the exact Jaccard similarity of their shingle sets.
2. Embeddings (stages/embeddings.py), on the rows MinHash kept, one language at a time: all-MiniLM-L6-v2
   for English, the multilingual Universal Sentence Encoder for the others (config `models`), pairs at or
   above the model's cosine threshold found block by block (never an n x n matrix).

Each pass joins its pairs into clusters (connected components) and keeps one representative per cluster:
the row EARLIEST IN INPUT ORDER, so the order of the configured sources sets which copy survives.

With `keep_contrast_pairs` (default) contrast pairs, what over-sensitivity items are made of, are never
joined, directly or through a chain of duplicates: a pair of rows labelled one risky and one safe; and,
where a label is unknown, a minimal pair whose aligned tokens differ in a content word (bsa/text/contrast.py:
"How do I blow up a balloon?" / "... a house?"), a contrast twin. Pairs differing only in casing,
punctuation, spacing, function words or a polite phrase are near duplicates, and embedding pairs that share
little wording (rewordings) semantic duplicates, as before. The relevance stage merges twins whose labels
turn out to agree (`twin_duplicate`) and marks the others confirmed.

Items with images (bsa.multimodal.fields) are duplicates only when their images are the same too: the same
bytes, for rendered typography the same rendered text, for photos a perceptual hash within
`image.phash_threshold` bits (bsa/multimodal/dedup.py); a text pair whose images differ (the same question
about two pictures) is never joined, nor an item with an image and one without.

Columns added to kept and rejected rows:
- `minhash_cluster`: id of the row's MinHash representative (its own id when it has no near duplicate).
- `embed_cluster`: id of the row finally kept for it after the embedding pass (None when that is off).
- `contrast_twins`: on kept rows, a JSON list of the kept rows it was kept apart from as a contrast pair
  (labels differing, or a contrast twin), else None.
- `image_cluster`: id of the earliest row holding the same image (its own id when none does; None without
  an image).
Rejected rows also get `duplicate_of`, the id of the kept row, and reason `near_duplicate` (MinHash, detail
with the Jaccard similarity to its representative) or `semantic_duplicate` (embeddings, with the cosine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from bsa.multimodal import fields as mm
from bsa.multimodal.dedup import same_images
from bsa.pipeline.config import Section
from bsa.pipeline.stage import Stage, StageContext, reject, whole
from bsa.text import contrast, embeddings, minhash
from bsa.text.clusters import constrained_representatives, representatives


class MinHashConfig(Section):
    enabled: bool = True
    num_perm: int = Field(128, ge=8, le=1024)
    threshold: float = Field(0.7, gt=0.0, le=1.0)  # Jaccard similarity of shingle sets
    ngram: int = Field(1, ge=1)  # words per shingle (1 suits short instructions: see docs/dedup.md)
    char_ngram: int = Field(2, ge=1)  # characters per shingle for CJK text
    seed: int = 1
    verify: bool = True  # check LSH candidates by exact Jaccard (else by the signature estimate)
    # weight of missed pairs against false candidates when choosing bands x rows; the exact check removes
    # false candidates, so the default trades more candidates for fewer misses
    false_negative_weight: float = Field(0.9, gt=0.0, lt=1.0)


class EmbeddingModel(Section):
    name: str
    threshold: float = Field(gt=0.0, le=1.0)  # cosine similarity

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if not embeddings.is_known_model(name):
            raise ValueError(f"unknown embedding model '{name}': use one of {', '.join(embeddings.PACKAGED_MODELS)} "
                             "or the path of a local sentence-transformers model directory")
        return name


class EmbeddingConfig(Section):
    enabled: bool = True
    # `onnx`: the model exported once to ONNX (kept in <build>/models) and run by ONNX Runtime, same vectors;
    # `torch`: sentence-transformers itself
    backend: Literal["torch", "onnx"] = "torch"
    # ONNX only: candidates by int8 weights at threshold - margin, then their rows at full precision
    prefilter_margin: float | None = Field(None, gt=0.0, lt=1.0)
    batch_size: int = Field(32, ge=1)  # MiniLM on 2 CPU cores: 32 ran about a fifth faster than 64, 128 slower
    block_rows: int = Field(2048, ge=1)  # rows scored against the rest at a time
    models: dict[str, EmbeddingModel] = {  # by language code; `default` for every other language
        "en": EmbeddingModel(name=embeddings.MINILM, threshold=0.82),
        "default": EmbeddingModel(name=embeddings.USE_MULTILINGUAL, threshold=0.85),
    }

    @field_validator("models")
    @classmethod
    def _has_default(cls, models: dict[str, EmbeddingModel]) -> dict[str, EmbeddingModel]:
        if "default" not in models:
            raise ValueError("models needs a 'default' entry (used for languages not listed)")
        return models

    def model_for(self, lang: str | None) -> EmbeddingModel:
        return self.models.get(lang or "default", self.models["default"])


class ImageConfig(Section):
    enabled: bool = True  # off: images are ignored and items compared by their text alone
    phash_threshold: int = Field(6, ge=0, le=64)  # bits between two photos' pHashes for the same image
    hash_size: int = Field(8, ge=4, le=16)  # pHash of hash_size**2 bits


class Config(Section):
    minhash: MinHashConfig = MinHashConfig()
    image: ImageConfig = ImageConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    # never join two rows whose known `is_risky` labels differ, nor, where a label is unknown, contrast twins
    keep_contrast_pairs: bool = True
    # a pair differing in a content word is a twin when at least this share of the longer text is aligned
    # with the other; below it, a rewording (joined)
    twin_min_shared: float = Field(contrast.MIN_TEMPLATE_SHARE, ge=0.0, le=1.0)


def risk_codes(records: pd.DataFrame) -> np.ndarray:
    """`is_risky` as 1 (risky), 0 (safe) or -1 (unknown)."""
    if "is_risky" not in records.columns:
        return np.full(len(records), -1, dtype=np.int8)
    risky = records["is_risky"].astype("boolean")
    return np.where(risky.isna(), -1, risky.fillna(False).astype(int)).astype(np.int8)


NO_PAIRS = np.zeros((0, 2), dtype=np.int64)


@dataclass
class ContrastGuard:
    """Keeps contrast pairs apart while the passes join duplicates: a pair whose known labels differ and,
    where a label is unknown, a contrast twin (bsa.text.contrast). Each pass joins its other pairs strongest
    first, never across a pair kept apart (in this pass or an earlier one) nor across two known labels."""

    texts: list[str]  # every row of the stage
    risk: np.ndarray  # per row: 1 risky, 0 safe, -1 unknown (`risk_codes`); a representative's: its cluster's
    min_shared: float
    apart: list[np.ndarray] = field(default_factory=list)  # pairs of rows kept apart so far
    rows: np.ndarray | None = None  # the (ascending) rows a later pass sees, by position; None: every row
    follow: np.ndarray | None = None  # each row's representative after the earlier pass

    def within(self, rows: np.ndarray, follow: np.ndarray) -> ContrastGuard:
        """The guard of a later pass over `rows`, the representatives of an earlier pass (`follow`: each row's)."""
        risk = self.risk.copy()
        np.maximum.at(risk, follow, self.risk)  # a cluster's known label is its representative's
        return replace(self, risk=risk, rows=rows, follow=follow)

    def pairs(self) -> np.ndarray:
        """Every pair kept apart, as pairs of the rows kept for them (after the last pass that ran)."""
        pairs = np.concatenate([NO_PAIRS, *self.apart])
        return self.follow[pairs] if self.follow is not None else pairs

    def cluster(self, positions: np.ndarray, pairs: np.ndarray, similarity: np.ndarray, ctx: StageContext,
                name: str) -> np.ndarray:
        """The representative of each position of a pass, as a position, given the pass's duplicate `pairs`
        (of positions) and their similarities."""
        rows = positions if self.rows is None else self.rows[positions]
        found = rows[pairs] if len(pairs) else NO_PAIRS
        left, right = self.risk[found[:, 0]], self.risk[found[:, 1]]
        known = (left >= 0) & (right >= 0)
        kinds = np.full(len(found), -1, dtype=np.int8)
        kinds[~known] = contrast.classify(self.texts, found[~known], self.min_shared)
        differ, twin = known & (left != right), kinds == contrast.KINDS.index("contrast")
        self.apart.append(found[differ | twin])
        ctx.count(f"{name}_contrast_pairs_kept_apart", int(differ.sum()))
        ctx.count(f"{name}_twin_pairs", int(twin.sum()))
        ctx.count(f"{name}_reworded_pairs", int((kinds == contrast.KINDS.index("reworded")).sum()))
        join = np.flatnonzero(~(differ | twin))
        join = join[np.argsort(-similarity[join], kind="stable")]
        apart = self.pairs()
        apart = np.searchsorted(rows, apart[np.isin(apart, rows).all(axis=1)])
        local, skipped = constrained_representatives(len(rows), pairs[join], apart, self.risk[rows])
        ctx.count(f"{name}_pairs_left_apart_in_chains", skipped)
        return local


def same_image_only(pairs: np.ndarray, similarity: np.ndarray,
                    images: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (and their similarities) whose rows hold the same image, or both none (`images`: each row's
    image cluster, -1 without an image; None: no row has one)."""
    if images is None or not len(pairs):
        return pairs, similarity
    same = images[pairs[:, 0]] == images[pairs[:, 1]]
    return pairs[same], similarity[same]


def image_clusters(records: pd.DataFrame, config: ImageConfig, ctx: StageContext) -> tuple[np.ndarray | None, dict]:
    """Each row's image cluster (its earliest row with the same image; -1 without an image) and how each
    pair of the same image was found; (None, {}) when no row has an image or the check is off."""
    if not config.enabled or mm.IMAGE_SHA256 not in records.columns or records[mm.IMAGE_SHA256].isna().all():
        return None, {}
    found = same_images(records, config.phash_threshold, config.hash_size)
    clusters = representatives(len(records), found.pairs)
    clusters[records[mm.IMAGE_SHA256].isna().to_numpy()] = -1
    for how in found.how:
        ctx.count(f"image_pairs_{how.split(' distance')[0].replace(' ', '_').lower()}")
    return clusters, {tuple(pair): how for pair, how in zip(found.pairs.tolist(), found.how, strict=True)}


def minhash_pass(texts: list[str], langs: list[str | None] | None, config: MinHashConfig, ctx: StageContext,
                 guard: ContrastGuard | None = None,
                 images: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's MinHash representative and its Jaccard similarity to it (1 for representatives)."""
    found = minhash.near_duplicates(texts, langs, num_perm=config.num_perm, threshold=config.threshold,
                                    ngram=config.ngram, char_ngram=config.char_ngram, seed=config.seed,
                                    verify=config.verify, false_negative_weight=config.false_negative_weight)
    everyone = np.arange(len(texts))
    pairs, pair_similarity = same_image_only(found.pairs, found.similarity, images)
    rep = (guard.cluster(everyone, pairs, pair_similarity, ctx, "minhash") if guard
           else representatives(len(texts), pairs))
    moved = np.flatnonzero(rep != everyone)
    similarity = np.ones(len(texts))
    similarity[moved] = minhash.jaccard(found.shingles, np.stack([rep[moved], moved], axis=1))
    ctx.count("minhash_candidate_pairs", found.candidates)
    ctx.count("minhash_pairs", len(pairs))
    ctx.log.info("minhash: %d bands x %d rows, %d candidate pairs, %d verified, %d rows in clusters",
                 found.bands, found.rows, found.candidates, len(found.pairs), len(moved))
    return rep, similarity


def embedding_pass(texts: list[str], langs: list[str | None], config: EmbeddingConfig, ctx: StageContext,
                   guard: ContrastGuard | None = None,
                   images: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's semantic representative (within its language) and the cosine similarity to it."""
    rep = np.arange(len(texts))
    similarity = np.ones(len(texts))
    by_lang = pd.Series(range(len(texts))).groupby(pd.Series(langs, dtype=object).fillna("und"), sort=True)
    for lang, rows in by_lang:
        index = rows.to_numpy()
        model = config.model_for(str(lang))
        vectors, pairs, cosines = embeddings.pairs_of(
            [texts[i] for i in index], model.name, model.threshold, batch_size=config.batch_size,
            block_rows=config.block_rows, backend=config.backend, cache_dir=str(ctx.config.build_path / "models"),
            prefilter_margin=config.prefilter_margin)
        pairs, cosines = same_image_only(pairs, cosines, images[index] if images is not None else None)
        local = (guard.cluster(index, pairs, cosines, ctx, "embedding") if guard
                 else representatives(len(index), pairs))
        rep[index] = index[local]
        similarity[index] = np.einsum("ij,ij->i", vectors, vectors[local])
        ctx.count("embedding_pairs", len(pairs))
        ctx.log.info("embeddings (%s, %s, cosine >= %s): %d rows, %d pairs", lang, model.name, model.threshold,
                     len(index), len(pairs))
    return rep, similarity


def find_duplicates(records: pd.DataFrame, config: Config, ctx: StageContext) -> pd.DataFrame:
    """All rows at once: near duplicates, then semantic ones among the rows MinHash kept."""
    n = len(records)
    ids = records["id"].astype(str).to_numpy()
    texts = records["text"].fillna("").astype(str).tolist()
    langs = records["lang"].tolist() if "lang" in records.columns else [None] * n
    guard = ContrastGuard(texts, risk_codes(records), config.twin_min_shared) if config.keep_contrast_pairs else None
    images, image_how = image_clusters(records, config.image, ctx)
    near, jaccard = (minhash_pass(texts, langs, config.minhash, ctx, guard, images) if config.minhash.enabled and n
                     else (np.arange(n), np.ones(n)))
    kept = np.flatnonzero(near == np.arange(n))
    final = near.copy()
    cosine = np.ones(n)
    if config.embedding.enabled and len(kept):
        semantic, cosine_kept = embedding_pass([texts[i] for i in kept], [langs[i] for i in kept],
                                               config.embedding, ctx, guard.within(kept, near) if guard else None,
                                               images[kept] if images is not None else None)
        final[kept] = kept[semantic]
        cosine[kept] = cosine_kept
        final = final[near]  # a near duplicate follows its representative
    frame = records.copy()
    frame["minhash_cluster"] = ids[near]
    frame["embed_cluster"] = ids[final] if config.embedding.enabled else None
    frame["image_cluster"] = [ids[c] if c >= 0 else None for c in images] if images is not None else None
    reasons = pd.Series(None, index=frame.index, dtype=object)
    details = pd.Series("", index=frame.index, dtype=object)
    for i in np.flatnonzero(final != np.arange(n)):
        if near[i] != i:
            reasons.iat[i] = "near_duplicate"
            details.iat[i] = f"Jaccard {jaccard[i]:.2f} with {ids[near[i]]}" + (
                f", itself a semantic duplicate of {ids[final[i]]}" if final[i] != near[i] else "")
        else:
            reasons.iat[i] = "semantic_duplicate"
            details.iat[i] = f"cosine {cosine[i]:.3f} with {ids[final[i]]}"
        if images is not None and images[i] >= 0:
            pair = (int(min(i, final[i])), int(max(i, final[i])))
            details.iat[i] += f"; same image ({image_how.get(pair, 'through other rows of its image cluster')})"
    frame = reject(frame, reasons, details)
    frame["duplicate_of"] = pd.Series(ids[final], index=frame.index, dtype=object).where(reasons.notna(), None)
    twins = final[np.concatenate([NO_PAIRS, *guard.apart])] if guard else NO_PAIRS
    frame[contrast.TWINS] = twin_lists(ids, np.unique(np.sort(twins, axis=1), axis=0))
    clusters = pd.Series(final).value_counts()
    ctx.report({"duplicate_clusters": int((clusters > 1).sum()), "largest_cluster": int(clusters.max()) if n else 0,
                "contrast_pairs": len(np.unique(np.sort(twins, axis=1), axis=0))})
    return frame


def twin_lists(ids: np.ndarray, pairs: np.ndarray) -> list[str | None]:
    """Each row's contrast twins (the other row of each pair it is in) as a JSON list of ids, else None."""
    partners: list[list[str]] = [[] for _ in ids]
    for a, b in pairs.tolist():
        partners[a].append(ids[b])
        partners[b].append(ids[a])
    return [json.dumps(sorted(p)) if p else None for p in partners]


STAGE = Stage("dedup", Config, (whole(find_duplicates),), needs=("id", "text"),
              adds=("minhash_cluster", "embed_cluster", "image_cluster", contrast.TWINS),
              reject_columns=("duplicate_of",))
