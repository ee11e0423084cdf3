"""The engine against the scripted OpenAI-compatible server: cache, retries, reasoning, structured output, usage."""

from __future__ import annotations

import json
import sqlite3

import pytest

from bsa.pipeline.config import EndpointConfig
from bsa.pipeline.errors import ConfigError
from bsa.pipeline.llm import Engine, Request

VERDICT = {"type": "object", "required": ["verdict", "reason"],
           "properties": {"verdict": {"type": "string", "enum": ["Safe", "Unsafe"]}, "reason": {"type": "string"}}}


def endpoint(server, **options) -> EndpointConfig:
    settings = {"base_url": server.url, "model": "fake-model", "concurrency": 8, "timeout": 5.0, "max_retries": 3,
                "backoff_base": 0.001, "backoff_max": 0.01, **options}
    return EndpointConfig(**settings)


def ask(text: str, **options) -> Request:
    return Request("fake", [{"role": "user", "content": text}], **options)


@pytest.fixture
def engine_for(tmp_path):
    engines = []

    def make(server, cache: str | None = "cache.sqlite", **options) -> Engine:
        engines.append(Engine({"fake": endpoint(server, **options)}, tmp_path / cache if cache else None))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


def test_results_come_back_in_order_and_the_cache_answers_a_rerun(fake_server, engine_for):
    server = fake_server()
    requests = [ask(f"q{i}") for i in range(50)]
    first = engine_for(server).run(requests)
    assert [r.content for r in first] == [f"echo: q{i}" for i in range(50)]
    assert all(r.ok and not r.cached and r.attempts == 1 for r in first)
    again = engine_for(server).run(requests)  # a new engine on the same cache file: a rerun
    assert [r.content for r in again] == [r.content for r in first]
    assert all(r.cached for r in again) and sum(server.received.values()) == 50


def test_duplicates_are_sent_once_and_samples_are_distinct(fake_server, engine_for):
    server = fake_server()
    responses = engine_for(server).run([ask("same"), ask("same"), ask("same", sample=1), ask("same", sample=2)])
    assert server.received["same"] == 3
    assert [r.cached for r in responses] == [False, True, False, False]
    assert len({r.key for r in responses}) == 3


def test_a_fixed_seed_still_gives_each_sample_its_own_seed(fake_server, engine_for):
    server = fake_server()
    engine_for(server, seed=42).run([ask("k", sample=i) for i in range(3)])
    assert sorted(p["seed"] for p in server.payloads) == [42, 43, 44]


def test_parameters_are_part_of_the_cache_key(fake_server, engine_for):
    server = fake_server()
    engine = engine_for(server, temperature=0.7)
    engine.run([ask("p"), ask("p", params={"temperature": 0.0}), ask("p", params={"max_tokens": 5})])
    assert server.received["p"] == 3
    assert [p["temperature"] for p in server.payloads].count(0.7) == 2


@pytest.mark.parametrize(("directive", "source"), [
    ("[[field]]", "field"), ("[[reasoning]]", "field"), ("[[think]]", "think_tags"),
    ("[[open-think]]", "think_tags"), ("[[close-think]]", "think_tags"), ("", "none")])
def test_reasoning_is_kept_apart_from_the_answer(fake_server, engine_for, directive, source):
    text = f"why {directive}".strip()
    [response] = engine_for(fake_server()).run([ask(text)])
    assert response.reasoning_source == source
    assert "<think>" not in response.content and "</think>" not in response.content
    if source == "none":
        assert response.reasoning is None and response.content == f"echo: {text}"
    else:
        assert response.reasoning.startswith(f"thinking about {text}")
        assert response.content == ("" if directive == "[[open-think]]" else f"echo: {text}")


def test_elicited_reasoning_is_asked_for_and_labelled(fake_server, engine_for):
    server = fake_server()
    engine = engine_for(server, reasoning="elicit")
    [response] = engine.run([Request("fake", [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "why [[think]]"}], schema=None)])
    system = server.payloads[0]["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.") and "<think>" in system["content"]
    assert response.elicited and response.reasoning_source == "elicited" and response.content == "echo: why [[think]]"
    [plain] = engine.run([ask("plain question", elicit_reasoning=False)])
    assert not plain.elicited and server.payloads[-1]["messages"][0]["role"] == "user"


@pytest.mark.parametrize(("mode", "expected"), [
    ("json_object_schema", {"type": "json_object", "schema": VERDICT}),
    ("json_schema", {"type": "json_schema", "json_schema": {"name": "reply", "schema": VERDICT}}),
    ("none", None)])
def test_structured_output_modes_and_parsing(fake_server, engine_for, mode, expected):
    reply = {"role": "assistant", "content": 'Verdict follows. {"verdict": "Unsafe", "reason": "r"}'}
    server = fake_server(reply=lambda payload, seen: reply)
    [response] = engine_for(server, structured_output=mode).run([ask("judge this", schema=VERDICT)])
    assert server.payloads[0].get("response_format") == expected
    assert response.ok and response.parsed == {"verdict": "Unsafe", "reason": "r"}


def test_an_unparsable_reply_is_retried_then_parsed(fake_server, engine_for):
    def reply(payload, seen):
        return {"role": "assistant", "content": "not json" if seen < 3 else '{"verdict": "Safe", "reason": "ok"}'}

    server = fake_server(reply=reply)
    [response] = engine_for(server, parse_retries=2).run([ask("judge", schema=VERDICT)])
    assert response.ok and response.parsed["verdict"] == "Safe" and response.attempts == 3
    assert server.received["judge"] == 3


def test_a_reply_that_never_parses_is_a_failure_with_its_raw_text_and_is_not_cached(fake_server, engine_for):
    server = fake_server(reply=lambda payload, seen: {"role": "assistant", "content": "I refuse to use JSON."})
    engine = engine_for(server, parse_retries=1)
    [response] = engine.run([ask("judge", schema=VERDICT)])
    assert not response.ok and response.parsed is None
    assert response.error.startswith("unparsable") and response.raw == "I refuse to use JSON."
    assert server.received["judge"] == 2
    [failure] = engine.cache.failures()
    assert failure["key"] == response.key and failure["raw"] == "I refuse to use JSON."
    engine.run([ask("judge", schema=VERDICT)])  # not cached: asked again
    assert server.received["judge"] == 4
    assert engine.usage_since(None)["failures"] == {"unparsable": 2}


def test_client_errors_are_not_retried_but_server_errors_are(fake_server, engine_for):
    server = fake_server(faults=lambda payload, seen: "500" if seen == 1 else None)
    [response] = engine_for(server).run([ask("flaky")])
    assert response.ok and response.attempts == 2

    class WrongPath:  # a 404: the request itself is wrong, so retrying cannot help
        url = server.url.replace("/v1", "/nowhere")

    [rejected] = engine_for(WrongPath, cache="other.sqlite").run([ask("x")])
    assert not rejected.ok and rejected.error.startswith("http_404") and rejected.attempts == 1


def test_a_failure_after_all_retries_is_recorded_and_the_next_run_retries_it(fake_server, engine_for):
    server = fake_server(faults={"429": 1.0})
    engine = engine_for(server, max_retries=2)
    [failed] = engine.run([ask("busy")])
    assert not failed.ok and failed.error.startswith("http_429") and failed.attempts == 3
    assert server.received["busy"] == 3 and [f["key"] for f in engine.cache.failures()] == [failed.key]
    server.set_faults(None)
    [done] = engine.run([ask("busy")])
    assert done.ok and not done.cached and engine.cache.failures() == []


def test_usage_is_counted_per_tag_and_endpoint_with_cost(fake_server, engine_for):
    server = fake_server()
    engine = engine_for(server, price_per_million={"prompt": 1000.0, "completion": 2000.0})
    engine.run([ask("one two three", tag="judge")])
    snapshot = engine.usage_snapshot()
    engine.run([ask("four five"), ask("one two three", tag="judge")])
    usage = engine.usage_since(snapshot, tag="relevance")
    assert (usage["requests"], usage["cached"], usage["sent"], usage["failed"]) == (2, 1, 1, 0)
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (2, 3)  # "echo: four five"
    assert usage["cost_usd"] == pytest.approx((2 * 1000 + 3 * 2000) / 1e6)
    assert usage["by_tag"]["relevance"]["requests"] == 1 and usage["by_tag"]["judge"]["cached"] == 1
    assert usage["by_tag"]["relevance"]["cost_usd"] == usage["cost_usd"] and usage["by_tag"]["judge"]["cost_usd"] == 0
    assert usage["by_endpoint"]["fake"]["model"] == "fake-model"


def test_the_api_key_is_sent_but_never_stored(fake_server, engine_for, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", "sk-secret-123")
    server = fake_server(faults=lambda payload, seen: "500" if payload["messages"][0]["content"] == "b" else None)
    engine = engine_for(server, api_key_env="FAKE_LLM_KEY", max_retries=0)
    engine.run([ask("a"), ask("b")])
    assert server.authorizations == {"Bearer sk-secret-123": 2}
    engine.close()
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("cache.sqlite*"))
    assert stored and b"sk-secret-123" not in stored
    rows = sqlite3.connect(tmp_path / "cache.sqlite").execute("SELECT request FROM replies UNION ALL "
                                                             "SELECT request FROM failures").fetchall()
    assert len(rows) == 2 and all("sk-secret" not in row[0] for row in rows)


def test_a_missing_key_or_endpoint_is_a_clear_error(fake_server, engine_for, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    server = fake_server()
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        engine_for(server, api_key_env="NO_SUCH_KEY_VAR").run([ask("x")])
    with Engine({"bad": EndpointConfig(base_url="api.example.com/v1")}) as bad, \
            pytest.raises(ConfigError, match="not an http"):
        bad.run([Request("bad", [{"role": "user", "content": "x"}])])
    with pytest.raises(ConfigError, match="unknown LLM endpoint 'nope'"):
        engine_for(server).run([Request("nope", [{"role": "user", "content": "x"}])])
    assert sum(server.received.values()) == 0


def test_the_cache_holds_the_request_and_reply(fake_server, engine_for, tmp_path):
    engine_for(fake_server()).run([ask("store [[field]]")])
    request, content, reasoning = sqlite3.connect(tmp_path / "cache.sqlite").execute(
        "SELECT request, content, reasoning FROM replies").fetchone()
    assert json.loads(request)["messages"][-1]["content"] == "store [[field]]"
    assert (content, reasoning) == ("echo: store [[field]]", "thinking about store [[field]]")


def test_elicited_reasoning_drops_constrained_decoding_and_parses_after_the_think_block(fake_server, engine_for):
    reply = {"role": "assistant", "content": '<think>{"verdict": "Safe"} is a draft</think>{"verdict": "Unsafe", '
                                             '"reason": "final"}'}
    server = fake_server(reply=lambda payload, seen: reply)
    [response] = engine_for(server, reasoning="elicit").run([ask("judge", schema=VERDICT)])
    assert "response_format" not in server.payloads[0]
    assert response.parsed == {"verdict": "Unsafe", "reason": "final"} and response.reasoning_source == "elicited"


def test_reasoning_none_keeps_the_content_verbatim(fake_server, engine_for):
    [response] = engine_for(fake_server(), reasoning="none").run([ask("tags [[think]]")])
    assert response.content.startswith("<think>") and response.reasoning is None


def test_with_supports_n_the_samples_of_a_prompt_share_one_request(fake_server, engine_for):
    drawn = iter(range(100))
    server = fake_server(reply=lambda payload, seen: {"role": "assistant", "content": f"draw {next(drawn)}"})
    engine = engine_for(server, supports_n=True, seed=5)
    responses = engine.run([ask("k", sample=i) for i in range(3)] + [ask("other")])
    assert server.received == {"k": 1, "other": 1}
    [payload] = [p for p in server.payloads if p.get("n")]
    assert payload["n"] == 3 and payload["seed"] == 5
    assert len({r.content for r in responses[:3]}) == 3 and len({r.key for r in responses[:3]}) == 3
    assert all(r.cached for r in engine.run([ask("k", sample=i) for i in range(3)]))


def test_samples_a_server_ignoring_n_did_not_return_are_sent_alone(fake_server, engine_for):
    server = fake_server(honour_n=False)
    responses = engine_for(server, supports_n=True).run([ask("k", sample=i) for i in range(3)])
    assert all(r.ok for r in responses) and len({r.key for r in responses}) == 3
    assert server.received["k"] == 3 and [p.get("n") for p in server.payloads] == [3, None, None]


def test_a_fully_cached_rerun_needs_no_key(fake_server, engine_for, monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", "sk-1")
    server = fake_server()
    engine_for(server, api_key_env="FAKE_LLM_KEY").run([ask("a")])
    monkeypatch.delenv("FAKE_LLM_KEY")
    [again] = engine_for(server, api_key_env="FAKE_LLM_KEY").run([ask("a")])
    assert again.ok and again.cached and server.received["a"] == 1


def test_a_cache_of_another_layout_is_started_afresh(tmp_path):
    from bsa.pipeline.llm.cache import CachedReply, LLMCache

    with sqlite3.connect(tmp_path / "old.sqlite") as db:
        db.execute("CREATE TABLE replies (key TEXT PRIMARY KEY, usage TEXT)")
    cache = LLMCache(tmp_path / "old.sqlite")
    cache.put("k", "e", "{}", CachedReply("hello", usage={"prompt_tokens": 1, "completion_tokens": 2}))
    cache.flush()
    assert cache.get_many(["k", "absent"]) == {"k": CachedReply("hello", usage={"prompt_tokens": 1,
                                                                                "completion_tokens": 2})}
    cache.close()


def test_run_also_works_when_called_from_async_code(fake_server, engine_for):
    import asyncio

    engine = engine_for(fake_server())

    async def caller():
        return engine.run([ask("from a coroutine")])

    [response] = asyncio.run(caller())
    assert response.ok and response.content == "echo: from a coroutine"
    assert engine.run([ask("and again")])[0].ok  # the engine's own loop still serves plain calls


@pytest.mark.parametrize("fault", ["truncated", "drop", "malformed", "timeout", "429", "500"])
def test_each_kind_of_fault_is_retried(fake_server, engine_for, fault):
    server = fake_server(faults=lambda payload, seen: fault if seen == 1 else None, hang=2.0)
    engine = engine_for(server, timeout=0.5)
    [response] = engine.run([ask(f"survives {fault}")])
    assert response.ok and response.attempts == 2 and response.content == f"echo: survives {fault}"
    assert sum(engine.usage_since(None)["errors"].values()) == 1
