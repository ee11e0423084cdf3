"""An endpoint's pool of servers (base_url + replicas): load spread, failover when one dies, one cache."""

from __future__ import annotations

import threading
import time

import pytest
import yaml

from bsa.pipeline.config import EndpointConfig, ReplicaConfig
from bsa.pipeline.errors import ConfigError, EndpointDown
from bsa.pipeline.llm import Engine, Request
from bsa.pipeline.llm.cache_key import endpoint_result_settings
from bsa.project import load_config
from tests.fake_openai import scripted_message

FAST = {"timeout": 2.0, "max_retries": 4, "backoff_base": 0.005, "backoff_max": 0.02, "cool_off": 0.5,
        "cool_off_after": 2, "down_after": 0.3}


def pool(first: str, *others: str, concurrency: int = 4, **settings) -> EndpointConfig:
    return EndpointConfig(base_url=first, model="fake", concurrency=concurrency,
                          replicas=[ReplicaConfig(base_url=url) for url in others], **{**FAST, **settings})


def asks(n: int, start: int = 0) -> list[Request]:
    return [Request("fake", [{"role": "user", "content": f"request {i:04d}"}]) for i in range(start, start + n)]


def dead_url(fake_server) -> str:
    """The URL of a server that has stopped: its port refuses connections."""
    server = fake_server()
    server.stop()
    return server.url


def test_load_is_spread_across_replicas_by_their_concurrency(fake_server, tmp_path):
    a, b = fake_server(latency=0.02), fake_server(latency=0.02)
    config = pool(a.url, b.url, concurrency=4)
    with Engine({"fake": config}, tmp_path / "cache.sqlite") as engine:
        responses = engine.run(asks(200))
        usage = engine.usage_since(None)
    assert all(r.ok for r in responses)
    assert [r.content for r in responses] == [f"echo: request {i:04d}" for i in range(200)]
    sent_a, sent_b = sum(a.received.values()), sum(b.received.values())
    assert sent_a + sent_b == 200 and min(sent_a, sent_b) >= 60  # equal concurrency: about half each
    assert usage["replicas"]["fake"] == {a.url: {"sent": sent_a, "errors": 0}, b.url: {"sent": sent_b, "errors": 0}}


def test_a_replica_with_more_concurrency_takes_more(fake_server, tmp_path):
    a, b = fake_server(latency=0.02), fake_server(latency=0.02)
    config = EndpointConfig(base_url=a.url, model="fake", concurrency=1,
                            replicas=[ReplicaConfig(base_url=b.url, concurrency=6)], **FAST)
    with Engine({"fake": config}) as engine:
        assert all(r.ok for r in engine.run(asks(140)))
    assert sum(b.received.values()) > 3 * sum(a.received.values()) > 0


def test_a_replica_killed_mid_batch_loses_nothing_and_is_reported(fake_server, tmp_path):
    calls = {"n": 0}
    lock = threading.Lock()
    victim = None

    def reply(payload, seen):  # the victim stops itself after 30 replies, with requests still in flight
        with lock:
            calls["n"] += 1
            if calls["n"] == 30:
                threading.Thread(target=victim.stop, daemon=True).start()
        return scripted_message(payload, seen)

    victim = fake_server(reply=reply, latency=0.01)
    survivor = fake_server(latency=0.01)
    config = pool(victim.url, survivor.url, concurrency=4, cool_off=60.0)
    texts = [f"request {i:04d}" for i in range(300)]
    with Engine({"fake": config}, tmp_path / "cache.sqlite") as engine:
        responses = engine.run(asks(300))
        usage = engine.usage_since(None)
        status = engine.replica_status("fake")
    assert all(r.ok for r in responses), [r.error for r in responses if not r.ok][:3]
    assert [r.content for r in responses] == [f"echo: {t}" for t in texts]
    answered = victim.answered + survivor.answered
    assert set(answered) == set(texts)  # every request answered by one of them
    assert sum(survivor.answered.values()) > sum(victim.answered.values())
    assert usage["replicas"]["fake"][victim.url]["errors"] > 0
    assert usage["replicas"]["fake"][survivor.url]["errors"] == 0
    assert status[survivor.url] == "live" and status[victim.url] != "live"
    assert usage["failed"] == 0 and usage["requests"] == 300


def test_every_replica_down_stops_fast_naming_each(fake_server, tmp_path):
    first, second = dead_url(fake_server), dead_url(fake_server)
    config = pool(first, second, cool_off=0.05, down_after=0.1, backoff_base=0.05, max_retries=6)
    started = time.monotonic()
    with Engine({"fake": config}) as engine, pytest.raises(EndpointDown) as caught:
        engine.run(asks(20))
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "every replica is down" in message and first in message and second in message
    assert "connections are refused" in message


def test_the_cache_does_not_know_the_replicas(fake_server, tmp_path):
    a, b = fake_server(), fake_server()
    cache = tmp_path / "cache.sqlite"
    with Engine({"fake": pool(a.url)}, cache) as engine:
        single = engine.run(asks(30))
    with Engine({"fake": pool(a.url, b.url)}, cache) as engine:
        pooled = engine.run(asks(40))
    assert [r.key for r in pooled[:30]] == [r.key for r in single]
    assert all(r.cached for r in pooled[:30]) and not any(r.cached for r in pooled[30:])
    assert sum(a.received.values()) + sum(b.received.values()) == 40  # 30 once, 10 new once
    assert endpoint_result_settings(pool(a.url)) == endpoint_result_settings(pool(a.url, b.url))  # no stage reruns


def test_a_single_base_url_reports_no_replicas(fake_server):
    server = fake_server()
    with Engine({"fake": pool(server.url)}) as engine:
        assert all(r.ok for r in engine.run(asks(5)))
        assert "replicas" not in engine.usage_since(None)
        assert engine.replica_status("fake") == {server.url: "live"}


@pytest.mark.parametrize(("endpoint", "message"), [
    ({"base_url": "local", "replicas": [{"base_url": "http://x/v1"}]}, "takes no replicas"),
    ({"base_url": "http://a/v1", "replicas": [{"base_url": "local"}]}, "not `local`")])
def test_the_embedded_model_forms_no_pool_and_the_config_says_so(tmp_path, endpoint, message):
    path = tmp_path / "pool.yaml"
    path.write_text(yaml.safe_dump({"endpoints": {"judge": endpoint}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value) and "judge" in str(err.value)
