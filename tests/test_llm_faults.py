"""The engine under failure: a faulty server, and a client killed with SIGKILL half way then rerun."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bsa.pipeline.config import EndpointConfig
from bsa.pipeline.llm import Engine, Request

ROOT = Path(__file__).resolve().parents[1]
FAULTS = {"500": 0.20, "429": 0.10, "timeout": 0.05, "malformed": 0.05}


def prompts(n: int) -> list[str]:
    return [f"request {i:04d}" for i in range(n)]


def test_every_request_ends_once_under_faults_and_a_second_run_completes_the_failures(fake_server, tmp_path):
    server = fake_server(faults=FAULTS, retry_after="0.05", hang=3.0, seed=7)
    config = EndpointConfig(base_url=server.url, model="fake", concurrency=64, timeout=1.0, max_retries=2,
                            backoff_base=0.005, backoff_max=0.05)
    texts = prompts(2000)
    requests = [Request("fake", [{"role": "user", "content": text}]) for text in texts]
    with Engine({"fake": config}, tmp_path / "cache.sqlite") as engine:
        first = engine.run(requests)
        assert len(first) == len(texts) and all(r is not None for r in first)
        failed = {text for text, r in zip(texts, first, strict=True) if not r.ok}
        assert 0 < len(failed) < len(texts) / 2  # 40% faults and 3 attempts: some fail, most succeed
        for text, response in zip(texts, first, strict=True):
            if response.ok:
                assert response.content == f"echo: {text}" and server.answered[text] >= 1
            else:
                assert response.error and response.content == "" and response.attempts == 3
        assert {f["key"] for f in engine.cache.failures()} == {r.key for r in first if not r.ok}
        usage = engine.usage_since(None)
        assert usage["failed"] == len(failed) and sum(usage["failures"].values()) == len(failed)
        assert sum(usage["errors"].values()) + len(texts) - len(failed) == usage["sent"]

        server.set_faults(None)
        before = server.received.copy()
        second = engine.run(requests)
    resent = server.received - before
    assert set(resent) == failed and set(resent.values()) == {1}  # only the failures, each once
    assert all(r.ok for r in second)
    assert [r.content for r in second] == [f"echo: {text}" for text in texts]
    assert sum(r.cached for r in second) == len(texts) - len(failed)


CLIENT = """
import json, sys
from bsa.pipeline.config import EndpointConfig
from bsa.pipeline.llm import Engine, Request
url, cache, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
config = EndpointConfig(base_url=url, model="fake", concurrency=8, timeout=10)
requests = [Request("fake", [{"role": "user", "content": f"request {i:04d}"}]) for i in range(n)]
with Engine({"fake": config}, cache) as engine:
    responses = engine.run(requests)
with open(out, "w") as f:
    json.dump([[r.ok, r.content, r.parsed] for r in responses], f)
"""


def run_client(script: Path, url: str, cache: Path, n: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), url, str(cache), str(n), str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def cached_prompts(cache: Path) -> set[str]:
    with sqlite3.connect(cache) as db:
        return {json.loads(row[0])["messages"][-1]["content"] for row in db.execute("SELECT request FROM replies")}


def test_a_run_killed_half_way_resumes_without_resending_finished_requests(fake_server, tmp_path):
    n = 300
    server = fake_server(latency=0.02)
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    cache = tmp_path / "cache.sqlite"

    killed = run_client(script, server.url, cache, n, tmp_path / "killed.json")
    deadline = time.monotonic() + 60
    while sum(server.answered.values()) < n // 2 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "killed.json").exists()
    finished = cached_prompts(cache)
    assert 0 < len(finished) < n

    before = server.received.copy()
    resumed = run_client(script, server.url, cache, n, tmp_path / "resumed.json")
    assert resumed.wait(60) == 0, resumed.stderr.read().decode()
    resent: Counter = server.received - before
    assert not finished & set(resent)  # nothing that finished was sent again
    assert set(resent) == set(prompts(n)) - finished and set(resent.values()) == {1}

    before = server.received.copy()
    fresh = run_client(script, server.url, tmp_path / "fresh.sqlite", n, tmp_path / "fresh.json")
    assert fresh.wait(60) == 0, fresh.stderr.read().decode()
    assert sum((server.received - before).values()) == n
    resumed_results = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed_results == json.loads((tmp_path / "fresh.json").read_text())
    assert [content for _, content, _ in resumed_results] == [f"echo: {p}" for p in prompts(n)]
