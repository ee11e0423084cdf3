"""LLM engine: client throughput against a fixed-latency test server, and the local model's speed.

Throughput: the scripted server (tests/fake_openai.py) runs in its own process and answers every request
after a fixed latency, so the ideal rate is concurrency / latency; the share of it the engine reaches is
what the client costs. The client's CPU time per request is measured for the whole run and for its parts
(building requests and cache keys, cache writes, reading replies); the rest is HTTP and the event loop.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsa.pipeline.config import EndpointConfig, LocalServerConfig  # noqa: E402
from bsa.pipeline.llm import Engine, Request  # noqa: E402
from bsa.pipeline.llm.cache import CachedReply  # noqa: E402

LATENCY, CONCURRENCY, REQUESTS, REPEATS = 0.2, 64, 2000, 3
LOCAL_PROMPTS = ["Explain in two sentences why the sky is blue.", "Give three tips for staying safe online.",
                 "Describe how a bicycle works.", "What should I pack for a day hike?"]
VERDICT_SCHEMA = {"type": "object", "properties": {"verdict": {"type": "string", "enum": ["Safe", "Unsafe"]},
                                                   "reason": {"type": "string", "maxLength": 160}},
                  "required": ["verdict", "reason"]}


def start_fake_server(latency: float) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--latency", str(latency)],
                               stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().strip()


def requests_for(n: int, prefix: str) -> list[Request]:
    return [Request("fake", [{"role": "system", "content": "You are a careful assistant."},
                             {"role": "user", "content": f"{prefix} question number {i}: is this safe?"}])
            for i in range(n)]


def timed(engine: Engine, requests: list[Request]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to run `requests`."""
    wall, cpu = time.perf_counter(), time.process_time()
    responses = engine.run(requests, desc="bench")
    assert all(r.ok for r in responses)
    return time.perf_counter() - wall, time.process_time() - cpu


def cpu_parts(engine: Engine, requests: list[Request], cache_dir: Path) -> dict[str, float]:
    """CPU seconds per request of the engine's own work outside HTTP, measured alone."""
    started = time.process_time()
    calls = engine._plan(requests)
    plan = time.process_time() - started
    reply = CachedReply(content="echo: a reply of ordinary length for a judge", model="m", finish_reason="stop",
                        usage={"prompt_tokens": 20, "completion_tokens": 9})
    started = time.process_time()
    for call in calls:
        engine._interpret(call, reply)
    interpret = time.process_time() - started
    from bsa.pipeline.llm.cache import LLMCache

    cache = LLMCache(cache_dir / "parts.sqlite")
    started = time.process_time()  # counts every thread of the process, the cache's writer included
    for call in calls:
        cache.put(call.key, "fake", call.body.decode(), reply)
    cache.flush()
    write = time.process_time() - started
    cache.close()
    n = len(requests)
    return {"building requests and cache keys": plan / n, "reading replies": interpret / n,
            "cache writes (SQLite, on the writer thread)": write / n}


def throughput_section() -> str:
    server, url = start_fake_server(LATENCY)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            endpoint = EndpointConfig(base_url=url, model="fake", concurrency=CONCURRENCY, max_tokens=64)
            with Engine({"fake": endpoint}, cache_path=Path(tmp) / "cache.sqlite") as engine:
                timed(engine, requests_for(CONCURRENCY * 2, "warm-up"))
                runs = sorted(timed(engine, requests_for(REQUESTS, f"run {i}")) for i in range(REPEATS))
                parts = cpu_parts(engine, requests_for(REQUESTS, "parts"), Path(tmp))
    finally:
        server.terminate()
        server.wait()
    ideal = CONCURRENCY / LATENCY
    wall, cpu = runs[len(runs) // 2]  # the median run
    rate = REQUESTS / wall
    shares = ", ".join(f"{REQUESTS / run_wall / ideal:.1%}" for run_wall, _ in runs)
    per_request = cpu / REQUESTS
    rows = [f"| {name} | {seconds * 1e3:.3f} |" for name, seconds in parts.items()]
    rest = per_request - sum(parts.values())
    return "\n".join([
        f"### Client throughput ({REQUESTS} requests, concurrency {CONCURRENCY}, server latency "
        f"{LATENCY * 1e3:.0f} ms; median of {REPEATS} runs)",
        "",
        "| measure | value |", "| --- | --- |",
        f"| wall time | {wall:.2f} s |",
        f"| throughput | {rate:.1f} requests/s |",
        f"| ideal (concurrency / latency) | {ideal:.0f} requests/s |",
        f"| **share of ideal** | **{rate / ideal:.1%}** (target: at least 90%; the {REPEATS} runs: {shares}) |",
        f"| client CPU | {cpu:.2f} s, {per_request * 1e3:.3f} ms per request |",
        "",
        "Where the client's CPU goes, per request (each part timed alone on the same requests):",
        "",
        "| part | ms per request |", "| --- | --- |", *rows,
        f"| HTTP (aiohttp), event loop, progress bar (the rest) | {rest * 1e3:.3f} |",
        "",
        "The test server runs in its own process (tests/fake_openai.py), the cache is on (a real SQLite file).",
    ])


def local_speed(engine: Engine, schema: dict | None, max_tokens: int) -> tuple[float, int, float]:
    """(tokens/s, completion tokens, seconds) for the local prompts one at a time."""
    requests = [Request("local", [{"role": "user", "content": prompt}], schema=schema,
                        params={"max_tokens": max_tokens, "temperature": 0.0}) for prompt in LOCAL_PROMPTS]
    started = time.perf_counter()
    responses = engine.run(requests, desc="local")
    seconds = time.perf_counter() - started
    tokens = sum(r.usage.get("completion_tokens", 0) for r in responses)
    return tokens / seconds, tokens, seconds


def local_section() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        endpoint = EndpointConfig(base_url="local")
        local = LocalServerConfig(parallel=1)
        with Engine({"local": endpoint}, cache_path=None, local=local, log_dir=Path(tmp)) as engine:
            started = time.perf_counter()
            engine.run([Request("local", [{"role": "user", "content": "Hi"}], params={"max_tokens": 1})])
            startup = time.perf_counter() - started
            free = local_speed(engine, None, 128)
            constrained = local_speed(engine, VERDICT_SCHEMA, 64)
            model = engine.endpoint_model("local")
    lines = [f"### Local model ({model}, llama-server, one request at a time)", "",
             "| mode | tokens/s | completion tokens | seconds |", "| --- | --- | --- | --- |"]
    for name, (rate, tokens, seconds) in (("free text (max_tokens 128)", free),
                                          ("JSON schema, grammar-constrained (max_tokens 64)", constrained)):
        lines.append(f"| {name} | {rate:.1f} | {tokens} | {seconds:.1f} |")
    lines += ["", f"Server start and first reply: {startup:.1f} s. Prompt processing is included in the rates."]
    return "\n".join(lines)


def run() -> str:
    return "\n\n".join(["## LLM engine", throughput_section(), local_section()])


if __name__ == "__main__":
    print(run())
