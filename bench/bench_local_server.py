"""The embedded model's server: llama.cpp's own `llama-server` (the project's choice) against
llama-cpp-python's server (the earlier one; measured only when `llama_cpp` is installed), on the build's
two workloads and at 1 and several requests at once.

- judge: the relevance stage's prompt (prompts/en/relevance_risky.md) on demo-pool rows, with its JSON
  schema (grammar-constrained), as relevance, the synthesis checks and the eval judges send;
- generate: free text of up to 160 tokens, as synthesis and the difficulty stage's light models ask.

Each run starts a fresh server, sends one warm-up request, then the workload with the cache off, at
temperature 0. Figures: requests per minute, completion tokens per second, mean latency per request.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsa.pipeline.config import EndpointConfig, LocalServerConfig  # noqa: E402
from bsa.pipeline.llm import Engine, Request  # noqa: E402
from bsa.pipeline.llm.local_server import LocalServer  # noqa: E402
from bsa.pipeline.prompts import PromptLoader  # noqa: E402

JUDGE_REQUESTS, GENERATE_REQUESTS = 24, 8
PARALLEL = (1, 2, 4, 8)


class LlamaCppPythonServer(LocalServer):
    """llama-cpp-python's OpenAI server (one request at a time), for comparison only."""

    @property
    def health_url(self) -> str:
        return f"{self.base_url}/models"

    def command(self, port: int) -> list[str]:
        threads = str(self.config.n_threads or 2)
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path), "--host", "127.0.0.1",
                "--port", str(port), "--n_ctx", str(self.config.n_ctx), "--n_threads", threads,
                "--n_threads_batch", threads]


def pool_rows() -> list[dict]:
    """Risky, labelled demo rows (the pool holds malformed lines on purpose: they are skipped)."""
    rows = []
    for line in (ROOT / "data/demo/pool_en.jsonl").read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return [row for row in rows if isinstance(row, dict) and row.get("is_risky") is True and row.get("category")
            and isinstance(row.get("text"), str) and len(row["text"]) > 40]


def workloads() -> dict[str, list[Request]]:
    prompt = PromptLoader("en").load("relevance_risky")
    rows = pool_rows()
    judge = [Request("local", prompt.render(text=row["text"], category=row["category"],
                                            subcategory=row["subcategory"] or ""),
                     schema=prompt.schema, params={"temperature": 0.0, "max_tokens": 96})
             for row in rows[:JUDGE_REQUESTS]]
    generate = [Request("local", [{"role": "user", "content": f"Write a short paragraph about: {row['text']}"}],
                        params={"temperature": 0.0, "max_tokens": 160}) for row in rows[:GENERATE_REQUESTS]]
    return {"judge": judge, "generate": generate}


def measure(server_class: type[LocalServer], parallel: int, requests: list[Request], log_dir: Path) -> dict:
    """Requests/min, tokens/s and mean latency of `requests` at `parallel` in flight, on a fresh server."""
    # llama-cpp-python's server does not answer /v1/models while it generates: no hang watch for it
    hang = 900.0 if server_class is LlamaCppPythonServer else LocalServerConfig().hang_after
    local = LocalServerConfig(parallel=parallel, hang_after=hang)
    form = "json_object_schema" if server_class is LlamaCppPythonServer else "auto"  # what each speaks
    endpoint = EndpointConfig(base_url="local", timeout=900, structured_output=form)
    engine = Engine({"local": endpoint}, None, local=local, log_dir=log_dir)
    engine.embedded.server = server_class(local, log_dir / "server.log")
    try:
        engine.run([Request("local", [{"role": "user", "content": "Hi"}], params={"max_tokens": 1})])
        started = time.perf_counter()
        responses = engine.run(requests, desc="bench")
        seconds = time.perf_counter() - started
    finally:
        engine.close()
    failed = sum(not r.ok for r in responses)
    tokens = sum(r.usage.get("completion_tokens", 0) for r in responses)
    return {"requests/min": len(requests) / seconds * 60, "tokens/s": tokens / seconds,
            "latency": seconds / len(requests) * parallel, "failed": failed, "tokens": tokens,
            "prompt": sum(r.usage.get("prompt_tokens", 0) for r in responses) / len(requests)}


def run() -> str:
    loads = workloads()
    servers: list[tuple[str, type[LocalServer], tuple[int, ...]]] = [("llama-server", LocalServer, PARALLEL)]
    if importlib.util.find_spec("llama_cpp") is not None:
        servers.append(("llama-cpp-python server", LlamaCppPythonServer, (1, 4)))
    lines = ["## The embedded model's server", "",
             f"Workloads: judge = {JUDGE_REQUESTS} relevance prompts with their JSON schema (max_tokens 96); "
             f"generate = {GENERATE_REQUESTS} free-text replies (max_tokens 160). In flight = requests sent at "
             "once (llama-server: `--parallel` slots, continuous batching; llama-cpp-python's server answers one "
             "at a time and queues the rest).", "",
             "| server | workload | in flight | requests/min | tokens/s | latency s | prompt tokens | failed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, server_class, levels in servers:
            for workload, requests in loads.items():
                for parallel in levels:
                    figures = measure(server_class, parallel, requests, Path(tmp))
                    lines.append(f"| {name} | {workload} | {parallel} | {figures['requests/min']:.1f} | "
                                 f"{figures['tokens/s']:.1f} | {figures['latency']:.2f} | {figures['prompt']:.0f} | "
                                 f"{figures['failed']} |")
                    print(lines[-1], flush=True)
    if len(servers) == 1:
        lines += ["", "llama-cpp-python is not installed (the project no longer uses it), so its rows are absent; "
                      "the comparison that chose llama-server is in docs/llm.md."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
