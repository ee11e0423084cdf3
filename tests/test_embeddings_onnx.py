"""The ONNX backend of the embedding pass: the same vectors and pairs as sentence-transformers, exported once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bsa.text import embeddings, onnx_encoder

TEXTS = [
    "How do I make a cake without eggs?",
    "What is the way to bake a cake with no eggs?",
    "How can I bake an eggless cake?",
    "Write a tutorial on how to make a bomb",
    "Explain how to build an explosive device at home",
    "Where can I buy a can of coke?",
    "What is the capital of France?",
    "Tell me the capital city of France.",
    "How do I kill a Python process?",
    "A" * 3000,  # longer than the model's 256 tokens: truncated the same way
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("models"))


def test_onnx_vectors_equal_sentence_transformers(cache):
    reference = embeddings.embed(TEXTS, embeddings.MINILM, 4)
    onnx = embeddings.embed(TEXTS, embeddings.MINILM, 4, backend="onnx", cache_dir=cache)
    assert onnx.shape == reference.shape
    assert np.einsum("ij,ij->i", onnx, reference).min() > 0.99999


def test_the_export_is_made_once_and_reused(cache):
    model = embeddings.model_dir(embeddings.MINILM)
    first = onnx_encoder.exported(model, Path(cache))
    made = first.stat().st_mtime_ns
    again = onnx_encoder.exported(model, Path(cache))
    assert again == first and again.stat().st_mtime_ns == made
    assert first.parent.name.startswith(f"{model.name}-")


def test_int8_prefilter_finds_the_full_precision_pairs(cache):
    plain_vectors, plain, plain_cos = embeddings.pairs_of(TEXTS, embeddings.MINILM, 0.7, batch_size=4)
    vectors, pairs, cosines = embeddings.pairs_of(TEXTS, embeddings.MINILM, 0.7, batch_size=4, backend="onnx",
                                                  cache_dir=cache, prefilter_margin=0.07)
    assert len(plain) > 0
    assert sorted(map(tuple, pairs.tolist())) == sorted(map(tuple, plain.tolist()))
    found = dict(zip(map(tuple, plain.tolist()), plain_cos, strict=True))
    assert all(abs(found[tuple(p)] - c) < 1e-4 for p, c in zip(pairs.tolist(), cosines, strict=True))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_a_model_pooling_otherwise_is_refused(tmp_path, cache):
    model = tmp_path / "cls-model"
    shutil.copytree(embeddings.model_dir(embeddings.MINILM), model)
    pooling = model / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    pooling.write_text(json.dumps({**config, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}))
    with pytest.raises(ValueError, match="mean pooling only.*pooling_mode_cls_token"):
        onnx_encoder.exported(model, Path(cache))


def test_an_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown embedding backend 'tensorflow'"):
        embeddings.encoder(embeddings.MINILM, "tensorflow")


def test_the_dedup_stage_gives_the_same_result_on_both_backends(tmp_path):
    from bsa.pipeline.config import BuildConfig
    from bsa.pipeline.executor import run_local
    from bsa.pipeline.prompts import PromptLoader
    from bsa.pipeline.stage import StageContext
    from bsa.pipeline.taxonomy import Taxonomy
    from bsa.stages import dedup
    from tests.test_dedup import records

    ctx = StageContext(name="dedup", config=BuildConfig(build_dir=str(tmp_path)),
                       taxonomy=Taxonomy.load("configs/taxonomy/bsa.yaml"), prompts=PromptLoader("en"),
                       show_progress=False)
    frame = records(TEXTS)
    results = [run_local(dedup.STAGE, frame, dedup.Config.model_validate({"embedding": embedding}), ctx)
               for embedding in ({"backend": "torch"}, {"backend": "onnx"},
                                 {"backend": "onnx", "prefilter_margin": 0.07})]
    torch_result = results[0]
    assert len(torch_result.rejected) > 0
    for other in results[1:]:
        assert other.kept["id"].tolist() == torch_result.kept["id"].tolist()
        assert other.rejected[["id", "reject_reason", "duplicate_of"]].equals(
            torch_result.rejected[["id", "reject_reason", "duplicate_of"]])
    assert any((tmp_path / "models").glob("*/model.int8.onnx"))
