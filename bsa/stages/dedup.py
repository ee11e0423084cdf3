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
where a label is unknown, a pair whose content words differ (bsa/text/contrast.py: "How do I blow up a
balloon?" / "... a house?"), a contrast twin. Pairs differing only in casing, punctuation, spacing, word
order, function words or a polite phrase are near duplicates, and embedding pairs that share little wording
(rewordings) semantic duplicates. The relevance stage merges twins whose labels
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
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from bsa.multimodal import fields as mm
from bsa.multimodal.dedup import same_images
from bsa.pipeline.config import Section
from bsa.pipeline.stage import Stage, StageContext, reject, whole
from bsa.text import contrast, embeddings, minhash, minhash_shards
from bsa.text.clusters import constrained_representatives, mixes_labels, representatives


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


class IndexConfig(Section):
    """How the embedding pass finds pairs: `exact` scores every pair (block by block); `ivf`, an inverted-file
    index (embeddings.cell_pairs), scores pairs only within k-means cells (seeded): approximate (a pair whose
    rows share no cell is missed; docs/dedup.md measures how many), for pools whose exact search is too slow."""

    kind: Literal["exact", "ivf"] = "exact"
    cells: int | None = Field(None, ge=1)  # default: the square root of the rows of a language
    probes: int = Field(2, ge=1)  # the cells of its nearest centroids each row goes into
    seed: int = 0

    def search(self) -> embeddings.Search:
        if self.kind == "exact":
            return embeddings.similar_pairs
        return partial(embeddings.cell_pairs, cells=self.cells, probes=self.probes, seed=self.seed)


class EmbeddingConfig(Section):
    enabled: bool = True
    # `onnx`: the model exported once to ONNX (kept in <build>/models) and run by ONNX Runtime, same vectors;
    # `torch`: sentence-transformers itself
    backend: Literal["torch", "onnx"] = "torch"
    # ONNX only: candidates by int8 weights at threshold - margin, then their rows at full precision
    prefilter_margin: float | None = Field(None, gt=0.0, lt=1.0)
    batch_size: int = Field(32, ge=1)  # MiniLM on 2 CPU cores: 32 ran about a fifth faster than 64, 128 slower
    block_rows: int = Field(2048, ge=1)  # rows scored against the rest at a time
    # rows of one language per encode call, in input order: every executor encodes the same chunks, so the
    # same vectors (an encoder's vectors may depend on the rows batched together); on Ray, one actor call each
    chunk_rows: int = Field(8192, ge=1)
    index: IndexConfig = IndexConfig()
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
TEXT_COLUMNS = ("text", "lang")  # what MinHash reads of a row
CONTENT_KEY = "_content_key"  # on a cluster: a row's `contrast.content_hashes`
Searched = tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]  # pairs, cosines, rows -> vectors


@dataclass
class ContrastGuard:
    """Keeps contrast pairs apart while the passes join duplicates: a pair whose known labels differ and,
    where a label is unknown, a contrast twin (bsa.text.contrast). Each pass joins its other pairs strongest
    first, never across a pair kept apart (in this pass or an earlier one) nor across two known labels."""

    texts: Sequence[str] | None  # every row of the stage (None: only `keys` are known; no rewordings asked)
    risk: np.ndarray  # per row: 1 risky, 0 safe, -1 unknown (`risk_codes`); a representative's: its cluster's
    min_shared: float
    apart: list[np.ndarray] = field(default_factory=list)  # pairs of rows kept apart so far
    rows: np.ndarray | None = None  # the (ascending) rows a later pass sees, by position; None: every row
    follow: np.ndarray | None = None  # each row's representative after the earlier pass
    keys: np.ndarray | None = None  # every row's `contrast.content_hashes`, when made elsewhere (on a cluster)

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
                name: str, rewordings: bool) -> np.ndarray:
        """The representative of each position of a pass, as a position, given the pass's duplicate `pairs`
        (of positions) and their similarities. With `rewordings`, pairs whose content differs are aligned and
        those sharing little wording joined (paraphrases); without, every such pair is kept apart (MinHash's
        pairs share most of their words: a content difference there is a twin)."""
        rows = positions if self.rows is None else self.rows[positions]
        found = rows[pairs] if len(pairs) else NO_PAIRS
        left, right = self.risk[found[:, 0]], self.risk[found[:, 1]]
        known = (left >= 0) & (right >= 0)
        kinds = np.full(len(found), -1, dtype=np.int8)
        kinds[~known] = contrast.classify(self.texts, found[~known], self.min_shared, rewordings, self.keys)
        differ, twin = known & (left != right), kinds == contrast.KINDS.index("contrast")
        self.apart.append(found[differ | twin])
        ctx.count(f"{name}_contrast_pairs_kept_apart", int(differ.sum()))
        ctx.count(f"{name}_twin_pairs", int(twin.sum()))
        ctx.count(f"{name}_reworded_pairs", int((kinds == contrast.KINDS.index("reworded")).sum()))
        join = np.flatnonzero(~(differ | twin))
        local = representatives(len(rows), pairs[join])
        apart = self.pairs()
        apart = np.searchsorted(rows, apart[np.isin(apart, rows).all(axis=1)])
        if not (local[apart[:, 0]] == local[apart[:, 1]]).any() and not mixes_labels(local, self.risk[rows]):
            # no cluster of all the joins holds a pair kept apart or two known labels: none would be skipped
            ctx.count(f"{name}_pairs_left_apart_in_chains", 0)
            return local
        join = join[np.argsort(-similarity[join], kind="stable")]
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
    return minhash_clusters(len(texts), found, ctx, guard, images)


def minhash_clusters(n: int, found: minhash.NearDuplicates, ctx: StageContext, guard: ContrastGuard | None = None,
                     images: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each of n rows' representative given MinHash's verified pairs, and its Jaccard similarity to it."""
    everyone = np.arange(n)
    pairs, pair_similarity = same_image_only(found.pairs, found.similarity, images)
    rep = (guard.cluster(everyone, pairs, pair_similarity, ctx, "minhash", rewordings=False) if guard
           else representatives(n, pairs))
    moved = np.flatnonzero(rep != everyone)
    similarity = np.ones(n)
    similarity[moved] = found.jaccard_of(np.stack([rep[moved], moved], axis=1))
    ctx.count("minhash_candidate_pairs", found.candidates)
    ctx.count("minhash_pairs", len(pairs))
    ctx.log.info("minhash: %d bands x %d rows, %d candidate pairs, %d verified, %d rows in clusters",
                 found.bands, found.rows, found.candidates, len(found.pairs), len(moved))
    return rep, similarity


def language_groups(langs: list[str | None]) -> list[tuple[str, np.ndarray]]:
    """The rows of each language (missing: `und`), languages sorted, rows in input order."""
    by_lang = pd.Series(range(len(langs))).groupby(pd.Series(langs, dtype=object).fillna("und"), sort=True)
    return [(str(lang), rows.to_numpy()) for lang, rows in by_lang]


def embedding_pass(texts: list[str], langs: list[str | None], config: EmbeddingConfig, ctx: StageContext,
                   guard: ContrastGuard | None = None, images: np.ndarray | None = None,
                   vectors: dict[str, np.ndarray] | None = None,
                   searched: dict[str, Searched] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's semantic representative (within its language) and the cosine similarity to it (1 for the
    rows kept); `vectors`: each language's vectors (of its rows, in order) when computed elsewhere, else
    encoded here; `searched`: each language's pairs, cosines and vectors when the search ran elsewhere."""
    rep = np.arange(len(texts))
    similarity = np.ones(len(texts))
    for lang, index in language_groups(langs):
        model = config.model_for(lang)
        if searched is not None:
            pairs, cosines, vectors_of = searched[lang]
        else:
            lang_vectors, pairs, cosines = embeddings.pairs_of(
                [texts[i] for i in index], model.name, model.threshold, batch_size=config.batch_size,
                block_rows=config.block_rows, backend=config.backend, cache_dir=encoder_cache(ctx),
                prefilter_margin=config.prefilter_margin, chunk_rows=config.chunk_rows,
                vectors=vectors[lang] if vectors is not None else None, search=config.index.search())
            vectors_of = lang_vectors.__getitem__
        pairs, cosines = same_image_only(pairs, cosines, images[index] if images is not None else None)
        local = (guard.cluster(index, pairs, cosines, ctx, "embedding", rewordings=True) if guard
                 else representatives(len(index), pairs))
        rep[index] = index[local]
        moved = np.flatnonzero(local != np.arange(len(index)))
        if len(moved):
            similarity[index[moved]] = np.einsum("ij,ij->i", vectors_of(moved), vectors_of(local[moved]))
        ctx.count("embedding_pairs", len(pairs))
        ctx.log.info("embeddings (%s, %s, cosine >= %s): %d rows, %d pairs", lang, model.name, model.threshold,
                     len(index), len(pairs))
    return rep, similarity


def encoder_cache(ctx: StageContext) -> str:
    return str(ctx.config.build_path / "models")


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
    return mark(records, *semantic_marks(ids, texts, langs, near, jaccard, config, ctx, guard, images, image_how))


def semantic_marks(ids: np.ndarray, texts: list[str], langs: list[str | None], near: np.ndarray, jaccard: np.ndarray,
                   config: Config, ctx: StageContext, guard: ContrastGuard | None, images: np.ndarray | None = None,
                   image_how: dict | None = None, vectors: dict[str, np.ndarray] | None = None,
                   searched: dict[str, Searched] | None = None) -> tuple:
    """After the MinHash pass (each row's representative `near`, its Jaccard similarity to it), the embedding
    pass among the rows MinHash kept (`vectors`, `searched`: see `embedding_pass`), the stage's figures, and what `mark`
    needs after the rows."""
    n = len(ids)
    kept = np.flatnonzero(near == np.arange(n))
    final = near.copy()
    cosine = np.ones(n)
    if config.embedding.enabled and len(kept):
        semantic, cosine_kept = embedding_pass([texts[i] for i in kept], [langs[i] for i in kept],
                                               config.embedding, ctx, guard.within(kept, near) if guard else None,
                                               images[kept] if images is not None else None, vectors, searched)
        final[kept] = kept[semantic]
        cosine[kept] = cosine_kept
        final = final[near]  # a near duplicate follows its representative
    reasons, details = duplicate_reasons(ids, near, final, jaccard, cosine, images, image_how or {})
    twins = kept_apart(final, guard)
    report_clusters(final, twins, n, ctx)
    return (ids[near], ids[final] if config.embedding.enabled else None,
            [ids[c] if c >= 0 else None for c in images] if images is not None else None,
            reasons, details, ids[final], twin_lists(ids, twins))


def duplicate_reasons(ids: np.ndarray, near: np.ndarray, final: np.ndarray, jaccard: np.ndarray, cosine: np.ndarray,
                      images: np.ndarray | None, image_how: dict) -> tuple[np.ndarray, np.ndarray]:
    """Each row's reject reason (None when kept) and its detail, from its representatives and similarities."""
    reasons = np.full(len(ids), None, dtype=object)
    details = np.full(len(ids), "", dtype=object)
    for i in np.flatnonzero(final != np.arange(len(ids))):
        if near[i] != i:
            reasons[i] = "near_duplicate"
            details[i] = f"Jaccard {jaccard[i]:.2f} with {ids[near[i]]}" + (
                f", itself a semantic duplicate of {ids[final[i]]}" if final[i] != near[i] else "")
        else:
            reasons[i] = "semantic_duplicate"
            details[i] = f"cosine {cosine[i]:.3f} with {ids[final[i]]}"
        if images is not None and images[i] >= 0:
            pair = (int(min(i, final[i])), int(max(i, final[i])))
            details[i] += f"; same image ({image_how.get(pair, 'through other rows of its image cluster')})"
    return reasons, details


def report_clusters(final: np.ndarray, twins: np.ndarray, n: int, ctx: StageContext) -> None:
    """The stage's figures from the final representative of every row in a cluster (`final`: of all n rows,
    or of some rows holding every cluster of two rows or more) and the contrast pairs kept."""
    clusters = pd.Series(final).value_counts()
    ctx.report({"duplicate_clusters": int((clusters > 1).sum()),
                "largest_cluster": max(int(clusters.max()) if len(clusters) else 0, 1 if n else 0),
                "contrast_pairs": len(twins)})


def mark(records: pd.DataFrame, minhash_cluster: object, embed_cluster: object, image_cluster: object,
         reasons: np.ndarray, details: np.ndarray, duplicate_of: np.ndarray, twins: list[str | None]) -> pd.DataFrame:
    """The rows with their clusters, reasons and twins (row by row: any batch of rows, given theirs)."""
    frame = records.copy()
    frame["minhash_cluster"] = minhash_cluster
    frame["embed_cluster"] = embed_cluster
    frame["image_cluster"] = image_cluster
    reasons = pd.Series(reasons, index=frame.index, dtype=object)
    frame = reject(frame, reasons, pd.Series(details, index=frame.index, dtype=object))
    frame["duplicate_of"] = pd.Series(duplicate_of, index=frame.index, dtype=object).where(reasons.notna(), None)
    frame[contrast.TWINS] = twins
    return frame


def kept_apart(final: np.ndarray, guard: ContrastGuard | None) -> np.ndarray:
    """The distinct pairs of representatives (by `final`) that the contrast guard kept apart."""
    twins = final[np.concatenate([NO_PAIRS, *guard.apart])] if guard else NO_PAIRS
    return minhash.distinct_pairs(twins)


def twin_lists(ids: np.ndarray, pairs: np.ndarray) -> list[str | None]:
    """Each row's contrast twins (the other row of each pair it is in) as a JSON list of ids, else None."""
    partners: list[list[str]] = [[] for _ in ids]
    for a, b in pairs.tolist():
        partners[a].append(ids[b])
        partners[b].append(ids[a])
    return [json.dumps(sorted(p)) if p else None for p in partners]


def find_duplicates_shards(rows, config: Config, ctx: StageContext):
    """`find_duplicates` on rows spread over a cluster (bsa.pipeline.executor_ray.Shards). MinHash: signatures
    and band keys per batch, a shuffle on a coarse partition of the band key giving the candidate pairs
    (bsa.text.minhash_shards); the exact Jaccard check on the cluster too (each row's shingles sent to its
    pairs' partitions, `shard_similarity`), as are the contrast guard's content keys; in the driver, one
    connected-components pass over the verified pairs (under the guard) picks each cluster's earliest row,
    from the pairs and each paired row's id, label and content key. With the embedding pass, the driver
    gathers the id, text, language and label of every row, the vectors of the rows MinHash kept are encoded in a pool of actors (the same
    chunks as locally: `chunk_rows` of one language per call) and the blockwise search and the clustering run
    in the driver with the local code; with `index.kind: ivf` the vectors stay on the cluster and only the
    pairs come back (`actor_search`). A map then marks every shard. None (the gathered rows, in the driver)
    with images or the int8 prefilter: see docs/scale.md."""
    semantic = config.embedding
    if not config.minhash.enabled or mm.IMAGE_SHA256 in rows.dtypes or (semantic.enabled and any(
            embeddings.can_prefilter(model.name, semantic.backend, semantic.prefilter_margin)
            for model in semantic.models.values())):
        return None
    n = rows.count()
    if not n:
        return None
    settings = config.minhash
    bands, per_band = minhash.bands_and_rows(settings.threshold, settings.num_perm,
                                             1 - settings.false_negative_weight, settings.false_negative_weight)
    found = rows.shuffle(_band_records, minhash_shards.partition_pairs, settings, bands, per_band, rows.partitions,
                         reads=TEXT_COLUMNS)
    candidates = minhash_shards.unique_pairs(found.get("a", []), found.get("b", []))
    involved = np.unique(candidates)
    pairs = np.searchsorted(involved, candidates)
    similarity = shard_similarity(rows, candidates, settings, settings.verify)
    verified = similarity >= settings.threshold
    known = similarity if settings.verify else None  # exact Jaccard: reused for the rows joined directly
    found = minhash.NearDuplicates(pairs[verified], similarity[verified], len(candidates), bands, per_band,
                                   lambda local: shard_jaccard(rows, involved[local], settings, candidates, known))
    if semantic.enabled:
        everyone = rows.columns([column for column in ("id", "text", "lang", "is_risky") if column in rows.dtypes])
        at = np.searchsorted(everyone[minhash_shards.SEQ].to_numpy(), involved)  # the positions of `involved`
        some = everyone.iloc[at].reset_index(drop=True)
        texts, keys = some["text"].fillna("").astype(str).tolist(), None
    else:  # the content keys made where the rows lie: no text comes to the driver
        some = rows.map(_content_keys, rows.share(involved)).columns(
            [*(column for column in ("id", "is_risky") if column in rows.dtypes), CONTENT_KEY])
        texts, keys = None, some[CONTENT_KEY].to_numpy(dtype=np.uint64)
    guard = (ContrastGuard(texts, risk_codes(some), config.twin_min_shared, keys=keys) if config.keep_contrast_pairs
             else None)
    near, jaccard = minhash_clusters(len(involved), found, ctx, guard)
    if semantic.enabled:
        return rows.map(_mark_rows, semantic_shards(rows, everyone, at, near, jaccard, guard, config, ctx))
    ids = some["id"].astype(str).to_numpy()
    reasons, details = duplicate_reasons(ids, near, near, jaccard, np.ones(len(ids)), None, {})
    twins = kept_apart(near, guard)
    report_clusters(near, twins, n, ctx)
    marks = pd.DataFrame({"minhash_cluster": ids[near], "reason": reasons, "detail": details,
                          "twins": twin_lists(ids, twins)}, index=involved)
    return rows.map(_mark_shard, marks)


MARKS = ("minhash_cluster", "embed_cluster", "image_cluster", "reason", "detail", "duplicate_of", "twins")


def semantic_shards(rows, everyone: pd.DataFrame, involved: np.ndarray, near: np.ndarray, jaccard: np.ndarray,
                    guard: ContrastGuard | None, config: Config, ctx: StageContext) -> pd.DataFrame:
    """Every row's marks (`MARKS`, by `_seq`) after the embedding pass, given every row's id, text, language
    and label (`everyone`, in input order) and the MinHash pass over the rows of its candidate pairs (at the
    positions `involved`)."""
    n = len(everyone)
    ids = everyone["id"].astype(str).to_numpy()
    texts = everyone["text"].fillna("").astype(str).tolist()
    langs = everyone["lang"].tolist() if "lang" in everyone.columns else [None] * n
    near_all, jaccard_all = np.arange(n), np.ones(n)
    near_all[involved], jaccard_all[involved] = involved[near], jaccard
    if guard is not None:  # the same guard over every row, with the pairs the MinHash pass kept apart
        guard = replace(ContrastGuard(texts, risk_codes(everyone), config.twin_min_shared),
                        apart=[involved[pairs] for pairs in guard.apart])
    kept = np.flatnonzero(near_all == np.arange(n))
    kept_texts, kept_langs = [texts[i] for i in kept], [langs[i] for i in kept]
    if config.embedding.index.kind == "ivf":  # the vectors stay on the cluster
        searched = actor_search(rows, kept_texts, kept_langs, config.embedding, ctx)
        values = semantic_marks(ids, texts, langs, near_all, jaccard_all, config, ctx, guard, searched=searched)
    else:
        vectors = actor_vectors(rows, kept_texts, kept_langs, config.embedding, ctx)
        values = semantic_marks(ids, texts, langs, near_all, jaccard_all, config, ctx, guard, vectors=vectors)
    return pd.DataFrame({name: value for name, value in zip(MARKS, values, strict=True) if value is not None},
                        index=everyone[minhash_shards.SEQ].to_numpy())


def encoded_chunks(rows, texts: list[str], langs: list[str | None], config: EmbeddingConfig,
                   ctx: StageContext) -> tuple[list[tuple[str, int]], Any]:
    """The rows encoded in a pool of actors, one chunk of `chunk_rows` rows of one language per call
    (`embeddings.chunks`, as locally; each actor loads each model once), left on the cluster
    (`Shards.on_actors_kept`); with each chunk's language and first row among that language's rows."""
    chunks = [(lang, config.model_for(lang).name, index[part].tolist(), part.start)
              for lang, index in language_groups(langs) for part in embeddings.chunks(len(index), config.chunk_rows)]
    for name in {name for _, name, _, _ in chunks}:  # an ONNX export made once, before the actors read it
        embeddings.prepare(name, config.backend, encoder_cache(ctx))
    encoded = rows.on_actors_kept(_encode_chunk, [(name, [texts[i] for i in part]) for _, name, part, _ in chunks],
                                  config, encoder_cache(ctx))
    return [(lang, start) for lang, _, _, start in chunks], encoded


def actor_vectors(rows, texts: list[str], langs: list[str | None], config: EmbeddingConfig,
                  ctx: StageContext) -> dict[str, np.ndarray]:
    """Each language's vectors (`embedding_pass`), from `encoded_chunks`, gathered in the driver."""
    chunks, encoded = encoded_chunks(rows, texts, langs, config, ctx)
    by_lang: dict[str, list[np.ndarray]] = {}
    for at, result in encoded.frame().sort_values("at")[["at", "result"]].itertuples(index=False):
        by_lang.setdefault(chunks[at][0], []).append(pickle.loads(result))
    return {lang: np.concatenate(parts) for lang, parts in by_lang.items()}


def actor_search(rows, texts: list[str], langs: list[str | None], config: EmbeddingConfig,
                 ctx: StageContext) -> dict[str, Searched]:
    """`embedding_pass`'s search with `index.kind: ivf`, the vectors kept on the cluster: the chunks encoded by
    the actors (`encoded_chunks`) stay in the object store; per language, the training rows' vectors come
    to the driver for k-means (`embeddings.kmeans`), each chunk's rows are put in their cells where the chunk
    lies, a shuffle on the cell brings each cell's rows together for the exact search inside it, and only the
    pairs, and later the vectors of the rows joined, come back: `embeddings.cell_pairs`, spread out."""
    chunks, encoded = encoded_chunks(rows, texts, langs, config, ctx)
    searched = {}
    for lang, index in language_groups(langs):
        starts = {at: start for at, (chunk_lang, start) in enumerate(chunks) if chunk_lang == lang}
        threshold = config.model_for(lang).threshold
        cells = embeddings.cell_count(len(index), config.index.cells)

        def vectors_of(positions: np.ndarray, starts: dict[int, int] = starts) -> np.ndarray:
            wanted, back = np.unique(positions, return_inverse=True)
            found = encoded.frame(_chunk_rows, starts, wanted)
            return np.stack(found.sort_values("row")["vector"].map(_vector).tolist())[back]

        if cells <= config.index.probes:  # as `cell_pairs`: the exact search
            pairs, cosines = embeddings.similar_pairs(vectors_of(np.arange(len(index))), threshold, config.block_rows)
        else:
            rng, training = embeddings.training_rows(len(index), config.index.seed)
            centroids = embeddings.kmeans(vectors_of(training), cells, rng)
            found = encoded.shuffle(_chunk_cells, partial(_cell_pairs, threshold=threshold,
                                                          block_rows=config.block_rows),
                                    starts, centroids, config.index.probes, config.block_rows, encoded.partitions)
            pairs, cosines = embeddings.first_cell_pairs(
                *((found["cell"].to_numpy(), np.stack([found["a"], found["b"]], axis=1), found["cosine"].to_numpy())
                  if len(found) else (np.zeros(0, np.int64), NO_PAIRS, np.zeros(0, np.float32))))
        searched[lang] = (pairs, cosines, vectors_of)
    return searched


def _vector(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.float32)


def _chunk_rows(batch: pd.DataFrame, starts: dict[int, int], wanted: np.ndarray) -> pd.DataFrame:
    """The vectors of the `wanted` rows (positions among a language's rows) held by a batch of encoded chunks."""
    rows, vectors = [], []
    for at, result in zip(batch["at"].tolist(), batch["result"].tolist(), strict=True):
        if at in starts:
            chunk = pickle.loads(result)
            lo = np.searchsorted(wanted, starts[at])
            hi = np.searchsorted(wanted, starts[at] + len(chunk))
            rows += wanted[lo:hi].tolist()
            vectors += [chunk[row - starts[at]].tobytes() for row in wanted[lo:hi].tolist()]
    return pd.DataFrame({"row": pd.Series(rows, dtype=np.int64), "vector": pd.Series(vectors, dtype=object)})


def _chunk_cells(batch: pd.DataFrame, starts: dict[int, int], centroids: np.ndarray, probes: int,
                 block_rows: int, partitions: int) -> pd.DataFrame:
    """A record per (row, cell) of the chunks in a batch: the cells of each row's `probes` nearest centroids,
    tagged with a partition of the cell for the shuffle, and the row's vector."""
    frames = []
    for at, result in zip(batch["at"].tolist(), batch["result"].tolist(), strict=True):
        if at in starts:
            chunk = pickle.loads(result)
            cells = embeddings.nearest_cells(chunk, centroids, probes, block_rows).ravel()
            rows = np.repeat(np.arange(len(chunk)), probes)
            frames.append(pd.DataFrame({"part": cells % partitions, "cell": cells, "row": starts[at] + rows,
                                        "vector": [chunk[row].tobytes() for row in rows.tolist()]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {"part": pd.Series(dtype=np.int64), "cell": pd.Series(dtype=np.int64), "row": pd.Series(dtype=np.int64),
         "vector": pd.Series(dtype=object)})


def _cell_pairs(group: dict[str, np.ndarray], threshold: float, block_rows: int) -> dict[str, np.ndarray]:
    """The pairs of every cell in one partition, searched exactly within each cell (`embeddings.search_cell`)."""
    cells, rows = np.asarray(group["cell"], dtype=np.int64), np.asarray(group["row"], dtype=np.int64)
    found = [embeddings.search_cell(cell, rows[records], np.stack([_vector(group["vector"][r]) for r in records]),
                                    threshold, block_rows)
             for cell, records in embeddings.cell_records(cells, rows)]
    if not found:
        return {"cell": np.zeros(0, np.int64), "a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64),
                "cosine": np.zeros(0, np.float32)}
    cell, pairs, cosines = (np.concatenate(parts) for parts in zip(*found, strict=True))
    return {"cell": cell, "a": pairs[:, 0], "b": pairs[:, 1], "cosine": cosines}


def _encode_chunk(chunk: tuple[str, list[str]], config: EmbeddingConfig, cache_dir: str) -> np.ndarray:
    name, texts = chunk
    return embeddings.embed(texts, name, config.batch_size, config.backend, cache_dir)


def _mark_rows(batch: pd.DataFrame, marks: pd.DataFrame) -> pd.DataFrame:
    """A batch marked as `find_duplicates` marks it, given every row's marks (`semantic_shards`)."""
    found = marks.loc[batch[minhash_shards.SEQ].to_numpy()]
    values = [found[name].to_numpy() if name in found.columns else None for name in MARKS]
    return mark(batch, *values[:-1], list(values[-1]))


def shard_similarity(rows, pairs: np.ndarray, settings: MinHashConfig, verify: bool = True) -> np.ndarray:
    """The similarity of each pair of rows (by `_seq`, the smaller first) on the cluster: each row's shingles
    sent to its pairs' partitions, scored there (bsa.text.minhash_shards, step 4); exact Jaccard, or with
    `verify` off the signature estimate."""
    if not len(pairs):
        return np.zeros(0)
    partitions = rows.partitions
    at, parts = minhash_shards.destinations(pairs, partitions)
    ordered, bounds = minhash_shards.by_partition(pairs, partitions)
    found = rows.shuffle(_shingle_records, minhash_shards.partition_similarity, settings, rows.share(at),
                         rows.share(parts), group_args=(rows.share(ordered), bounds, verify, settings.num_perm,
                                                         settings.seed), reads=TEXT_COLUMNS)
    if len(found) != len(pairs):
        raise RuntimeError(f"dedup on Ray: {len(found)} pairs scored of {len(pairs)} sent")
    similarity = np.empty(len(pairs))
    similarity[np.lexsort((pairs[:, 1], pairs[:, 0]))] = found["similarity"].to_numpy()[
        np.lexsort((found["b"].to_numpy(), found["a"].to_numpy()))]
    return similarity


def shard_jaccard(rows, pairs: np.ndarray, settings: MinHashConfig, scored: np.ndarray,
                  similarity: np.ndarray | None) -> np.ndarray:
    """The exact Jaccard similarity of each pair (by `_seq`, the smaller first): looked up among the `scored`
    pairs (sorted, distinct) when their `similarity` is exact, the others scored on the cluster."""
    out, left = np.zeros(len(pairs)), np.arange(len(pairs))
    if similarity is not None and len(scored) and len(pairs):
        size = int(max(scored.max(), pairs.max())) + 1
        codes, wanted = minhash.pair_codes(scored, size), minhash.pair_codes(pairs, size)
        at = np.minimum(np.searchsorted(codes, wanted), len(codes) - 1)
        hit = codes[at] == wanted
        out[hit], left = similarity[at[hit]], np.flatnonzero(~hit)
    out[left] = shard_similarity(rows, pairs[left], settings)
    return out


def _shingle_records(batch: pd.DataFrame, settings: MinHashConfig, rows: np.ndarray,
                     parts: np.ndarray) -> pd.DataFrame:
    return minhash_shards.shingle_records(batch["text"].fillna("").astype(str).tolist(),
                                          batch["lang"].tolist() if "lang" in batch.columns else None,
                                          batch[minhash_shards.SEQ].to_numpy(), rows, parts,
                                          ngram=settings.ngram, char_ngram=settings.char_ngram)


def _content_keys(batch: pd.DataFrame, involved: np.ndarray) -> pd.DataFrame:
    """The rows of a batch in `involved`, with their `CONTENT_KEY`."""
    some = batch[np.isin(batch[minhash_shards.SEQ].to_numpy(), involved)]
    return some.assign(**{CONTENT_KEY: contrast.content_hashes(some["text"].fillna("").astype(str).tolist())})


def _band_records(batch: pd.DataFrame, settings: MinHashConfig, bands: int, per_band: int,
                  partitions: int) -> pd.DataFrame:
    return minhash_shards.band_rows(batch["text"].fillna("").astype(str).tolist(),
                                    batch["lang"].tolist() if "lang" in batch.columns else None,
                                    batch[minhash_shards.SEQ].to_numpy(), num_perm=settings.num_perm,
                                    ngram=settings.ngram, char_ngram=settings.char_ngram, seed=settings.seed,
                                    bands=bands, rows=per_band, partitions=partitions)


def _mark_shard(batch: pd.DataFrame, marks: pd.DataFrame) -> pd.DataFrame:
    """A batch marked as `find_duplicates` marks it, given the rows in a cluster (`marks`, by `_seq`)."""
    ids = batch["id"].astype(str).to_numpy()
    seqs = batch[minhash_shards.SEQ].to_numpy()
    at = np.flatnonzero(np.isin(seqs, marks.index.to_numpy()))
    found = marks.loc[seqs[at]]
    cluster, reasons = ids.copy().astype(object), np.full(len(batch), None, dtype=object)
    details, twins = np.full(len(batch), "", dtype=object), np.full(len(batch), None, dtype=object)
    cluster[at], reasons[at] = found["minhash_cluster"].to_numpy(), found["reason"].to_numpy()
    details[at], twins[at] = found["detail"].to_numpy(), found["twins"].to_numpy()
    return mark(batch, cluster, None, None, reasons, details, cluster, list(twins))


STAGE = Stage("dedup", Config, (whole(find_duplicates, distributed=find_duplicates_shards),), needs=("id", "text"),
              adds=("minhash_cluster", "embed_cluster", "image_cluster", contrast.TWINS),
              reject_columns=("duplicate_of",))
