"""The LLM engine: OpenAI-compatible endpoints, async with bounded concurrency, retries, a SQLite cache,
reasoning split, structured output, usage and cost, and the embedded local llama.cpp server.

INTERFACE (stable; the implementation is being written):

    engine = Engine.from_config(build_config)          # or Engine(endpoints, cache_path, local)
    responses = engine.run(requests, desc="relevance")  # sync; same order as requests; never raises per item
    engine.usage_snapshot() / engine.usage_since(snapshot, tag=...)  # token usage & cost per endpoint/tag
    engine.close()                                      # stops the local server, closes the cache
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    """One chat completion to make. `sample` distinguishes the k samples of the same prompt (cache key)."""

    endpoint: str  # a name under `endpoints:` in the config
    messages: list[dict[str, str]]
    schema: dict | None = None  # JSON schema of the reply: structured output, parsed into Response.parsed
    sample: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # overrides: temperature, top_p, max_tokens, ...
    tag: str = ""  # who asks (stage name, "eval", "judge"): usage is counted per tag
    elicit_reasoning: bool | None = None  # None: the endpoint's `reasoning` setting decides


@dataclass
class Response:
    """The outcome of a Request: a result (ok) or a recorded failure with its error and raw text."""

    ok: bool
    content: str = ""  # the answer, reasoning removed
    reasoning: str | None = None
    reasoning_source: str = "none"  # "field" | "think_tags" | "elicited" | "none"
    parsed: dict | None = None  # the JSON object, when a schema was given and the reply parsed
    error: str | None = None  # why it failed (after all retries)
    raw: str = ""  # the raw reply text
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens
    cached: bool = False
    attempts: int = 0
    model: str = ""
