"""Loud failures: structured-output negotiation, endpoints that are down, and a local server that dies or hangs.

The local server here is a stand-in process (a tiny HTTP server answering /health and chat completions) in
place of llama-server, so that it can be killed with SIGSEGV or stopped with SIGSTOP mid-run.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time

import pytest

from bsa.pipeline.config import EndpointConfig, LocalServerConfig
from bsa.pipeline.errors import EndpointDown
from bsa.pipeline.llm import Engine, Request, local_server
from bsa.pipeline.llm.client import EndpointHealth, SendError
from bsa.pipeline.llm.structured import rejects_response_format

VERDICT = {"type": "object", "required": ["verdict", "reason"],
           "properties": {"verdict": {"type": "string", "enum": ["Safe", "Unsafe"]}, "reason": {"type": "string"}}}
JSON_REPLY = {"role": "assistant", "content": '{"verdict": "Safe", "reason": "fine"}'}


def endpoint(url: str, **options) -> EndpointConfig:
    settings = {"base_url": url, "model": "fake-model", "concurrency": 4, "timeout": 5.0, "max_retries": 3,
                "backoff_base": 0.01, "backoff_max": 0.05, **options}
    return EndpointConfig(**settings)


def judge_requests(n: int) -> list[Request]:
    return [Request("fake", [{"role": "user", "content": f"judge item {i}"}], schema=VERDICT) for i in range(n)]


# -- structured output: negotiated per endpoint -------------------------------------------------------------
@pytest.mark.parametrize(("accepts", "setting", "settled"), [
    (("json_schema", "json_object_schema", "json_object"), "auto", "json_schema"),
    (("json_object",), "auto", "json_object"),
    ((), "auto", "none"),
    (("json_object_schema",), "json_object_schema", "json_object_schema"),
    (("json_object",), "json_object_schema", "json_object"),
])
def test_the_engine_falls_back_through_the_forms_a_server_rejects(fake_server, tmp_path, accepts, setting, settled):
    server = fake_server(reply=lambda payload, seen: JSON_REPLY, accepts=accepts)
    with Engine({"fake": endpoint(server.url, structured_output=setting)}, tmp_path / "cache.sqlite") as engine:
        responses = engine.run(judge_requests(20))
        usage = engine.usage_since()
    assert all(r.ok and r.parsed == {"verdict": "Safe", "reason": "fine"} for r in responses)
    assert usage["by_endpoint"]["fake"]["structured_output"] == settled
    assert usage["failed"] == 0
    # each rejected form is tried at most once per request in flight, then remembered for the run
    assert all(count <= 4 for count in server.rejected_forms.values())
    last = server.payloads[-1].get("response_format")
    assert (last is None) == (settled == "none")


def test_the_cache_key_does_not_depend_on_the_negotiated_form(fake_server, tmp_path):
    server = fake_server(reply=lambda payload, seen: JSON_REPLY, accepts=("json_object",))
    with Engine({"fake": endpoint(server.url)}, tmp_path / "cache.sqlite") as engine:
        engine.run(judge_requests(5))
    sent = len(server.payloads)
    with Engine({"fake": endpoint(server.url)}, tmp_path / "cache.sqlite") as engine:
        again = engine.run(judge_requests(5))
    assert all(r.cached for r in again) and len(server.payloads) == sent


def test_only_a_400_about_the_response_format_moves_to_the_next_form():
    assert rejects_response_format(400, "Invalid parameter: 'response_format' of type 'json_schema' is not supported")
    assert rejects_response_format(422, '{"detail": "json_schema: extra fields not permitted"}')
    assert not rejects_response_format(400, "This model's maximum context length is 4096 tokens")
    assert not rejects_response_format(500, "response_format crashed the server")


# -- endpoints that are down --------------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(60)
def test_refused_connections_stop_the_run_naming_the_endpoint(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    config = endpoint(url, down_after=1.0, max_retries=50, backoff_base=0.05, backoff_max=0.2)
    started = time.monotonic()
    with Engine({"fake": config}, tmp_path / "cache.sqlite") as engine, \
            pytest.raises(EndpointDown, match=r"endpoint 'fake' \(http://127\.0\.0\.1:\d+/v1.*refused"):
        engine.run(judge_requests(30))
    assert time.monotonic() - started < 30  # it did not spend 50 retries on each of 30 requests


@pytest.mark.timeout(60)
def test_an_unknown_host_stops_the_run(tmp_path):
    config = endpoint("http://no-such-host.invalid/v1", down_after=0.5, max_retries=50, backoff_max=0.1)
    with Engine({"fake": config}, tmp_path / "cache.sqlite") as engine, \
            pytest.raises(EndpointDown, match="host name does not resolve"):
        engine.run(judge_requests(3))


@pytest.mark.parametrize(("status", "cause"), [("401", "API key is refused"), ("403", "access is denied"),
                                              ("404", "check the model name")])
def test_a_bad_key_or_an_unknown_model_stops_the_run(fake_server, tmp_path, monkeypatch, status, cause):
    monkeypatch.setenv("FAKE_KEY", "sk-test-not-logged")
    server = fake_server(faults={status: 1.0})
    config = endpoint(server.url, api_key_env="FAKE_KEY", concurrency=1)
    with Engine({"fake": config}, tmp_path / "cache.sqlite") as engine, \
            pytest.raises(EndpointDown, match=cause) as caught:
        engine.run(judge_requests(40))
    assert sum(server.received.values()) == config.down_after_requests  # stopped at once, not after 40
    assert "sk-test-not-logged" not in str(caught.value)
    assert ("$FAKE_KEY" in str(caught.value)) == (status in ("401", "403"))


def test_one_answer_between_failures_keeps_the_endpoint_up():
    now = [0.0]
    health = EndpointHealth("e", endpoint("http://x/v1", down_after=10.0), "http://x/v1", clock=lambda: now[0])
    refused = SendError("connect", "refused", True)
    for step in range(5):
        now[0] = step * 4.0
        health.failed(refused)
        health.answered()
    now[0] = 100.0
    health.failed(refused)
    now[0] = 109.0
    health.failed(refused)
    now[0] = 110.0
    with pytest.raises(EndpointDown, match="for 10 s"):
        health.failed(refused)


def test_failures_that_are_not_an_outage_do_not_stop_the_run(fake_server, tmp_path):
    server = fake_server(faults={"500": 0.3, "drop": 0.1}, reply=lambda payload, seen: JSON_REPLY)
    with Engine({"fake": endpoint(server.url, max_retries=8)}, tmp_path / "cache.sqlite") as engine:
        responses = engine.run(judge_requests(30))
    assert all(r.ok for r in responses)


# -- the local server: death, hangs, restarts ---------------------------------------------------------------
STAND_IN = """
import http.server, json, sys, time
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers(); self.wfile.write(data)
    def do_GET(self):
        self._send({"status": "ok"})
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        print("request", flush=True)
        time.sleep(0.3)
        self._send({"model": "stand-in", "choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    def log_message(self, *args):
        pass
print("stand-in serving", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture
def stand_in_engine(tmp_path, monkeypatch):
    """An Engine whose `local` endpoint is the stand-in process (watched like llama-server)."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr(local_server.LocalServer, "command", lambda self, port: [sys.executable, str(script), str(port)])
    monkeypatch.setattr(local_server.ServerWatch, "PROBE", 0.5)
    engines = []

    def make(**local) -> Engine:
        config = LocalServerConfig(model_path=str(model), binary=str(script), parallel=2, startup_timeout=20, **local)
        engines.append(Engine({"local": EndpointConfig(base_url="local", timeout=600, max_retries=2)},
                              tmp_path / "cache.sqlite", local=config, log_dir=tmp_path))
        return engines[-1]

    yield make
    for engine in engines:
        engine.close()


def plain_requests(n: int) -> list[Request]:
    return [Request("local", [{"role": "user", "content": f"question {i}"}]) for i in range(n)]


def signal_server(engine: Engine, signum: int, after_requests: int, times: int = 1) -> threading.Thread:
    """In the background: send `signum` to the local server once it has logged `after_requests` requests
    (each time to the process then running, `times` times)."""

    def run() -> None:
        for _ in range(times):
            while True:
                server = engine.embedded.server
                process = server and server._process
                if process and process.poll() is None and server.log_tail(100).count("request") >= after_requests:
                    process.send_signal(signum)
                    break
                time.sleep(0.05)
            while process.poll() is None and signum != signal.SIGSTOP:
                time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(60)  # a run that waited out the 600 s timeouts would fail here
def test_a_local_server_killed_mid_run_is_reported_restarted_and_the_run_completes(stand_in_engine, caplog):
    engine = stand_in_engine()
    signal_server(engine, signal.SIGSEGV, after_requests=3)
    responses = engine.run(plain_requests(12))
    assert all(r.ok and r.content == "fine" for r in responses)
    usage = engine.usage_since()
    assert usage["local_server_events"] == ["killed by signal 11 (SIGSEGV)"]
    assert usage["failed"] == 0 and engine.embedded.server.starts == 2
    assert "killed by signal 11 (SIGSEGV)" in caplog.text and "stand-in serving" in caplog.text


@pytest.mark.timeout(60)
def test_a_local_server_that_dies_again_stops_the_run_with_its_cause_and_log(stand_in_engine):
    engine = stand_in_engine()
    signal_server(engine, signal.SIGSEGV, after_requests=2, times=2)
    with pytest.raises(EndpointDown, match=r"(?s)killed by signal 11 \(SIGSEGV\).*stand-in serving.*restarted 1 time"):
        engine.run(plain_requests(40))


@pytest.mark.timeout(60)
def test_a_local_server_that_stops_answering_is_killed_and_restarted(stand_in_engine):
    engine = stand_in_engine(hang_after=2.0)
    signal_server(engine, signal.SIGSTOP, after_requests=3)
    responses = engine.run(plain_requests(10))
    assert all(r.ok for r in responses)
    [event] = engine.usage_since()["local_server_events"]
    assert event.startswith("stopped answering")


def test_restarts_can_be_turned_off(stand_in_engine):
    engine = stand_in_engine(max_restarts=0)
    signal_server(engine, signal.SIGKILL, after_requests=1)
    with pytest.raises(EndpointDown, match=r"killed by signal 9 \(SIGKILL\)"):
        engine.run(plain_requests(20))


def test_exit_causes_name_the_code_or_the_signal():
    assert local_server.exit_cause(3) == "exited with code 3"
    assert local_server.exit_cause(-11) == "killed by signal 11 (SIGSEGV)"


def test_a_cpu_without_avx2_is_a_clear_error(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor: 0\nflags\t\t: fpu sse sse2 avx\n")
    assert local_server.missing_cpu_flags(cpuinfo) == ["avx2", "fma", "f16c"]
    cpuinfo.write_text("flags\t\t: fpu avx avx2 fma f16c avx512f\n")
    assert local_server.missing_cpu_flags(cpuinfo) == []


def test_a_death_seen_by_a_request_and_by_the_watch_is_one_death():
    import asyncio
    from types import SimpleNamespace

    class DeadOnce:
        config = SimpleNamespace(max_restarts=1, hang_after=15.0)
        model_name, log_path, health_url = "m.gguf", "server.log", "http://127.0.0.1:9/health"

        def __init__(self):
            self.alive, self.restarts = False, 0

        def death_cause(self):
            return None if self.alive else "killed by signal 11 (SIGSEGV)"

        def log_tail(self):
            return ""

        def restart(self):
            self.alive, self.restarts = True, self.restarts + 1
            return "http://127.0.0.1:9/v1"

    async def scenario() -> local_server.ServerWatch:
        server = DeadOnce()
        watch = local_server.ServerWatch(server, lambda url: None)
        async with watch._lock:  # a request is handling the death while the watch notices it too
            task = asyncio.create_task(watch.watch(session=None))
            await asyncio.sleep(3 * watch.POLL)
            await watch._handle(server.death_cause())
        await asyncio.sleep(3 * watch.POLL)
        task.cancel()
        return watch

    watch = asyncio.run(scenario())
    assert watch.fatal is None and watch.restarts == 1 and watch.server.restarts == 1
