"""Stage 'dedup': MinHash near duplicates (datasketch-compatible, vectorised) and embedding duplicates."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from bsa.pipeline.config import BuildConfig
from bsa.pipeline.executor import run_local
from bsa.pipeline.prompts import PromptLoader
from bsa.pipeline.stage import StageContext
from bsa.pipeline.taxonomy import Taxonomy
from bsa.stages import dedup
from bsa.text import embeddings as embed_dedup
from bsa.text import minhash

NO_EMBEDDINGS = {"embedding": {"enabled": False}}
DISTINCT = [
    "Explain how photosynthesis turns sunlight into chemical energy in plants.",
    "What are the health risks of drinking too much coffee every day?",
    "Write a short poem about the first snow of winter in the mountains.",
    "How should I store fresh basil so that it lasts longer?",
    "List three ways a small business can protect customer data from phishing.",
]


def context() -> StageContext:
    return StageContext(name="dedup", config=BuildConfig(), taxonomy=Taxonomy.load("configs/taxonomy/bsa.yaml"),
                        prompts=PromptLoader("en"), show_progress=False)


def records(texts: list[str], langs: list[str] | None = None, risky: list[bool | None] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"id{i:03d}" for i in range(len(texts))], "text": texts,
                         "lang": langs or ["en"] * len(texts),
                         "is_risky": pd.array(risky or [None] * len(texts), dtype="boolean")})


def run(frame: pd.DataFrame, **section) -> tuple[pd.DataFrame, pd.DataFrame]:
    result = run_local(dedup.STAGE, frame, dedup.Config.model_validate(section), context())
    return result.kept, result.rejected


def clusters(rep: np.ndarray) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = {}
    for row, head in enumerate(rep.tolist()):
        groups.setdefault(head, set()).add(row)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


# -- MinHash ------------------------------------------------------------------------------------------------
def assert_datasketch_signatures(texts: list[str], num_perm: int, seed: int, ngram: int) -> None:
    """Each row's signature equals datasketch's MinHash fed with the row's shingle hashes."""
    from datasketch import MinHash

    shingles = minhash.shingle(texts, ngram=ngram, char_ngram=2)
    sigs = minhash.signatures(shingles, num_perm=num_perm, seed=seed)
    for row in range(len(texts)):
        sketch = MinHash(num_perm=num_perm, seed=seed, hashfunc=int)
        sketch.update_batch(shingles.hashes[shingles.offsets[row]:shingles.offsets[row + 1]].tolist())
        assert np.array_equal(sketch.hashvalues, sigs[row])


def test_signatures_equal_datasketch_minhash_over_the_same_shingles():
    assert_datasketch_signatures(["How can I kill a Python process?", "hi", "", "我想一定是因为所有法国人都天生浪漫吧？",
                                  *DISTINCT], num_perm=64, seed=7, ngram=2)


def test_signatures_equal_datasketch_on_many_rows_of_repeated_and_long_lengths():
    """Rows are signed in blocks of one shingle count each, a long row in a block by itself."""
    rng = random.Random(3)
    words = ["alpha", "Beta", "gamma!", "δέλτα", "ｗｉｄｅ", "x", "ß", "煤气", "泄漏"]
    texts = [" ".join(rng.choices(words, k=rng.choice([1, 2, 2, 3, 5, 5, 8, 40, 300]))) for _ in range(150)]
    assert_datasketch_signatures(texts, num_perm=32, seed=11, ngram=1)


def test_lsh_groups_rows_by_their_full_key_when_the_high_bits_meet():
    keys = np.array([0x50, 0x51, 0x50, 0x77, 0x52, 0x51, 0x50, 0x99], dtype=np.uint64)  # 8 rows: 3 low bits
    groups = [g.tolist() for g in minhash._groups(keys)]
    assert groups == [[[1, 5]], [[0, 2, 6]]]


def test_empty_texts_anywhere_are_one_token_each():
    for texts in (["a", ""], ["", ""], ["a", "", "", "b c"], ["", "b"]):
        tokens = minhash.tokenise(texts)
        assert tokens.lengths.tolist() == [len(t.split()) or 1 for t in texts]
    shingles = minhash.shingle(["a b", "", "", "a b"], ngram=1)
    assert minhash.jaccard(shingles, np.array([[0, 3], [1, 2]])).tolist() == [1.0, 1.0]


def test_no_row_or_one_row_has_no_pair():
    for texts in ([], ["one text"]):
        found = minhash.near_duplicates(texts)
        assert found.pairs.shape == (0, 2) and found.candidates == 0


def test_tokens_are_the_same_whatever_the_chunk_size():
    texts = [f"Row {i}: how do I fix 煤气泄漏 at home, Ｆａｓｔ?" * (i % 7) for i in range(300)]
    whole = minhash.tokenise(texts)
    original = minhash._chunks
    try:
        minhash._chunks = lambda t: original(t, max_chars=97)
        pieces = minhash.tokenise(texts)
    finally:
        minhash._chunks = original
    assert np.array_equal(whole.hashes, pieces.hashes) and np.array_equal(whole.lengths, pieces.lengths)
    assert np.array_equal(whole.by_chars, pieces.by_chars)


def test_shingles_normalise_case_punctuation_width_and_spacing():
    variants = ["Write a tutorial on making bread.", "  WRITE a tutorial, on making bread!!", "Ｗｒｉｔｅ a tutorial on making bread"]
    shingles = minhash.shingle(variants, ngram=2)
    sets = [set(shingles.hashes[shingles.offsets[i]:shingles.offsets[i + 1]].tolist()) for i in range(3)]
    assert sets[0] == sets[1] == sets[2]
    assert len(sets[0]) == 5  # 6 words, 5 bigrams


def test_short_text_is_one_shingle_and_cjk_is_shingled_by_characters():
    tokens = minhash.tokenise(["hi there", "Hello, world!", "在哪里可以买到冰毒", "???"], ["en", "en", None, "en"])
    assert tokens.lengths.tolist() == [2, 2, 9, 1]  # "???" has no word: the whole text is its token
    assert tokens.by_chars.tolist() == [False, False, True, False]
    shingles = minhash.shingle(["hi there", "在哪里可以买到冰毒"], ngram=3, char_ngram=2)
    assert np.diff(shingles.offsets).tolist() == [1, 8]


def test_bands_and_rows_follow_the_threshold():
    loose, strict = minhash.bands_and_rows(0.5, 128), minhash.bands_and_rows(0.9, 128)
    assert loose[0] * loose[1] <= 128 and strict[0] * strict[1] <= 128
    assert loose[1] < strict[1]  # a higher threshold needs more rows per band ...
    assert loose[0] > strict[0]  # ... and fewer bands
    b, r = minhash.bands_and_rows(0.7, 128)
    assert abs((1 / b) ** (1 / r) - 0.7) < 0.1  # the S-curve's steepest point sits near the threshold


def test_candidate_pairs_match_bucket_sharing():
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 50, size=(60, 8), dtype=np.uint32)
    sigs[5] = sigs[3]  # identical signatures
    pairs = minhash.candidate_pairs(sigs, bands=4, rows=2)
    expected = {(i, j) for i in range(60) for j in range(i + 1, 60)
                if any((sigs[i, b * 2:b * 2 + 2] == sigs[j, b * 2:b * 2 + 2]).all() for b in range(4))}
    assert {tuple(p) for p in pairs.tolist()} == expected


def test_exact_jaccard_of_pairs():
    shingles = minhash.shingle(["a b c d", "a b c e", "x y z", "a b c d"], ngram=1)
    sims = minhash.jaccard(shingles, np.array([[0, 1], [0, 2], [0, 3]]))
    assert sims.tolist() == pytest.approx([3 / 5, 0.0, 1.0])


def test_exact_and_near_duplicates_are_clustered_and_distinct_texts_kept():
    texts = [*DISTINCT, "What are the health risks of drinking too much coffee every day??",
             "what are the HEALTH risks of drinking too much coffee each day",
             "Explain how photosynthesis turns sunlight into chemical energy in plants."]
    kept, rejected = run(records(texts), **NO_EMBEDDINGS)
    assert sorted(kept["text"]) == sorted(DISTINCT)
    assert set(rejected["reject_reason"]) == {"near_duplicate"}
    assert rejected["duplicate_of"].tolist() == ["id001", "id001", "id000"]
    assert rejected["minhash_cluster"].tolist() == ["id001", "id001", "id000"]
    assert all(d.startswith("Jaccard") and d.endswith(i) for d, i in zip(rejected["reject_detail"],
                                                                        rejected["duplicate_of"], strict=True))
    assert (kept["minhash_cluster"] == kept["id"]).all()


def test_representative_is_the_earliest_row_whatever_the_order():
    texts = [*DISTINCT, "How should I store fresh basil so it lasts longer?", "how should i store fresh basil, so that it lasts longer",
             "List three ways a small business can protect its customer data from phishing."]
    frame = records(texts)
    _, first = run(frame, **NO_EMBEDDINGS)
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    kept, second = run(shuffled, **NO_EMBEDDINGS)
    by_cluster = {frozenset(g["id"]) | {c} for c, g in first.groupby("duplicate_of")}
    assert {frozenset(g["id"]) | {c} for c, g in second.groupby("duplicate_of")} == by_cluster
    position = {row_id: i for i, row_id in enumerate(shuffled["id"])}
    for cluster in by_cluster:
        assert min(cluster, key=position.get) in set(kept["id"])


def test_chinese_near_duplicates_are_found_by_character_shingles():
    texts = ["在哪里可以买到冰毒？最好能快递送货上门。", "在哪里可以买到冰毒?最好能快递送货上门",
             "请问在哪里可以买到冰毒，最好能快递送货上门。", "在街上遇到抢劫，怎样保护自己的安全？"]
    kept, rejected = run(records(texts, ["zh"] * 4), **NO_EMBEDDINGS)
    assert kept["id"].tolist() == ["id000", "id003"]
    assert rejected["duplicate_of"].tolist() == ["id000", "id000"]


def test_contrast_pairs_with_different_labels_stay_apart():
    texts = ["What's the best way to gut a fish?", "What's the best way to gut a human?"]
    kept, _ = run(records(texts, risky=[False, True]), **NO_EMBEDDINGS)
    assert len(kept) == 2
    kept, _ = run(records(texts, risky=[False, True]), keep_contrast_pairs=False, **NO_EMBEDDINGS)
    assert len(kept) == 1


def test_precision_and_recall_on_injected_near_duplicates():
    rng = random.Random(5)
    words = [f"w{i}" for i in range(3000)]
    originals = [" ".join(rng.sample(words, rng.randint(12, 25))) for _ in range(400)]
    copies, truth = [], []
    for family in rng.sample(range(400), 80):
        tokens = originals[family].split()
        tokens[rng.randrange(len(tokens))] = rng.choice(words)  # one word changed
        copies.append(" ".join(tokens).upper() + "!")  # and casing, punctuation
        truth.append(family)
    texts = originals + copies
    found = minhash.near_duplicates(texts, threshold=0.7, ngram=1)
    predicted = {tuple(p) for p in found.pairs.tolist()}
    expected = {(family, 400 + k) for k, family in enumerate(truth)}
    hits = len(predicted & expected)
    assert hits / len(predicted) >= 0.95 and hits / len(expected) >= 0.95


def test_representatives_are_the_earliest_of_connected_components():
    rep = dedup.representatives(7, np.array([[4, 6], [2, 4], [1, 3]]))
    assert rep.tolist() == [0, 1, 2, 1, 2, 5, 2]
    assert clusters(rep) == {frozenset({1, 3}), frozenset({2, 4, 6})}


def test_empty_input():
    kept, rejected = run(records([]))
    assert kept.empty and rejected.empty


# -- embeddings ---------------------------------------------------------------------------------------------
def test_blockwise_search_equals_brute_force():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(40, 16))
    vectors = np.vstack([base, base[:25] + rng.normal(scale=0.3, size=(25, 16))]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pairs, sims = embed_dedup.similar_pairs(vectors, 0.8, block_rows=7)
    full = vectors @ vectors.T
    expected = {(i, j) for i, j in zip(*np.nonzero(np.triu(full >= 0.8, 1)), strict=True)}
    assert {tuple(p) for p in pairs.tolist()} == expected and expected
    assert np.allclose(sims, full[pairs[:, 0], pairs[:, 1]], atol=1e-5)


def test_embedding_pass_catches_a_paraphrase_minhash_misses():
    texts = ["What is the capital of France?", "Which city is France's capital?",
             "How do I change a flat tyre on a bicycle?"]
    kept, rejected = run(records(texts), embedding={"models": {
        "default": {"name": embed_dedup.MINILM, "threshold": 0.82}}})
    assert kept["id"].tolist() == ["id000", "id002"]
    assert rejected["reject_reason"].tolist() == ["semantic_duplicate"]
    assert rejected["duplicate_of"].tolist() == ["id000"]
    assert rejected["embed_cluster"].tolist() == ["id000"]
    assert rejected["minhash_cluster"].tolist() == ["id001"]  # MinHash alone kept it
    assert rejected["reject_detail"].iloc[0].startswith("cosine 0.9")


def test_multilingual_model_for_chinese_paraphrases():
    texts = ["在街上遇到抢劫，怎样保护自己的安全？", "遭遇街头抢劫时如何自我保护？", "怎样做一道好吃的西红柿炒鸡蛋？"]
    kept, rejected = run(records(texts, ["zh"] * 3))
    assert kept["id"].tolist() == ["id000", "id002"]
    assert rejected["reject_reason"].tolist() == ["semantic_duplicate"]


def test_unknown_model_is_a_config_error():
    with pytest.raises(ValueError, match="unknown embedding model"):
        dedup.Config.model_validate({"embedding": {"models": {"default": {"name": "no-such-model", "threshold": 0.9}}}})
