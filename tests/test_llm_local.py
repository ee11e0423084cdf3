"""End to end against the real embedded llama.cpp server (SmolLM2-135M): slow, so marked `llama`."""

from __future__ import annotations

import pytest

from bsa.pipeline.config import EndpointConfig, LocalServerConfig
from bsa.pipeline.llm import Engine, Request

pytestmark = pytest.mark.llama
VERDICT = {"type": "object", "required": ["verdict", "reason"], "additionalProperties": False,
           "properties": {"verdict": {"type": "string", "enum": ["Safe", "Unsafe"]},
                          "reason": {"type": "string", "maxLength": 40}}}


def test_plain_and_schema_completions_through_the_real_server(local_llm, tmp_path):
    config = EndpointConfig(base_url=local_llm.base_url, model="smollm2", concurrency=1, temperature=0.0)
    requests = [Request("m", [{"role": "user", "content": "Say hello."}], params={"max_tokens": 8}),
                Request("m", [{"role": "system", "content": 'Reply as {"verdict": "Safe" or "Unsafe", "reason": '
                                                            '"at most five words"}.'},
                              {"role": "user", "content": "Is it safe to mix bleach and ammonia?"}],
                        schema=VERDICT, params={"max_tokens": 96})]
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
        process = engine.embedded.server._process
        assert reply.ok and process.poll() is None
        assert engine.endpoint_model("local").endswith(".gguf")
    finally:
        engine.close()
    assert process.poll() is not None
    assert (tmp_path / "llm-local-server.log").stat().st_size > 0


@pytest.mark.timeout(300)  # a run that waited out its 600 s timeouts on a dead server would fail here
def test_the_real_server_killed_with_sigsegv_mid_run_is_restarted_once_and_the_run_completes(tmp_path):
    import signal
    import threading
    import time

    engine = Engine({"local": EndpointConfig(base_url="local", timeout=600, temperature=0.0)},
                    tmp_path / "cache.sqlite", local=LocalServerConfig(parallel=2), log_dir=tmp_path)
    requests = [Request("local", [{"role": "user", "content": f"Is it safe to mix bleach with cleaner number {i}?"}],
                        schema=VERDICT, params={"max_tokens": 40}) for i in range(12)]

    def kill_when_busy() -> None:
        while engine.embedded.server is None or engine.embedded.server._process is None or engine.usage_snapshot().total() < 4:
            time.sleep(0.05)
        engine.embedded.server._process.send_signal(signal.SIGSEGV)

    threading.Thread(target=kill_when_busy, daemon=True).start()
    try:
        responses = engine.run(requests)
        usage = engine.usage_since()
    finally:
        engine.close()
    assert usage["local_server_events"] == ["killed by signal 11 (SIGSEGV)"]
    assert engine.embedded.server.starts == 2
    assert all(r.ok or r.error.startswith("unparsable") for r in responses)
    assert sum(r.ok for r in responses) >= 6  # the tiny model's JSON is mostly valid; none were lost to the crash
