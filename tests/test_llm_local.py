"""End to end against the real embedded llama.cpp server (SmolLM2-135M): slow, so marked `llama`."""

from __future__ import annotations

import pytest

from pipeline.config import EndpointConfig, LocalServerConfig
from pipeline.llm import Engine, Request

pytestmark = pytest.mark.llama
VERDICT = {"type": "object", "required": ["verdict", "reason"], "additionalProperties": False,
           "properties": {"verdict": {"type": "string", "enum": ["Safe", "Unsafe"]},
                          "reason": {"type": "string", "maxLength": 40}}}


def test_plain_and_schema_completions_through_the_real_server(local_llm, tmp_path):
    config = EndpointConfig(base_url=local_llm.base_url, model="smollm2", concurrency=1, temperature=0.0)
    requests = [Request("m", [{"role": "user", "content": "Say hello."}], params={"max_tokens": 8}),
                Request("m", [{"role": "user", "content": "Is it safe to mix bleach and ammonia?"}],
                        schema=VERDICT, params={"max_tokens": 40})]
    with Engine({"m": config}, tmp_path / "cache.sqlite") as engine:
        plain, judged = engine.run(requests)
        assert plain.ok and plain.content and plain.usage["completion_tokens"] > 0
        assert judged.ok, judged.error
        assert judged.parsed["verdict"] in ("Safe", "Unsafe") and isinstance(judged.parsed["reason"], str)
        again = engine.run(requests)
        assert [r.cached for r in again] == [True, True] and again[1].parsed == judged.parsed


def test_the_engine_starts_and_stops_the_embedded_server(tmp_path):
    engine = Engine({"local": EndpointConfig(base_url="local", concurrency=1)}, tmp_path / "cache.sqlite",
                    local=LocalServerConfig())
    try:
        [reply] = engine.run([Request("local", [{"role": "user", "content": "Hi"}], params={"max_tokens": 4})])
        process = engine._local._process
        assert reply.ok and process.poll() is None
        assert engine.endpoint_model("local").endswith(".gguf")
    finally:
        engine.close()
    assert process.poll() is not None
    assert (tmp_path / "llm-local-server.log").stat().st_size > 0
