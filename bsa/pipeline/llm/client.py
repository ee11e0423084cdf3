"""The HTTP side of the engine: one OpenAI-compatible endpoint (chat completions, or image generations for a
request of kind "image"), retries and rate limits.

Kept lean on purpose (the engine must stay near the ideal throughput of `concurrency / latency`): one
shared aiohttp session, bodies serialised once by the caller, headers and timeouts built once per endpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from bsa.pipeline.config import EndpointConfig
from bsa.pipeline.errors import ConfigError, EndpointDown
from bsa.pipeline.llm.cache import CachedReply
from bsa.pipeline.llm.reasoning import reasoning_field

RETRY_STATUSES = frozenset({408, 409, 429})
MAX_RETRY_AFTER = 600.0  # seconds: a longer Retry-After is capped (it would stall the run)
RAW_LIMIT = 2000  # characters of an error body kept in a failure record
CONNECTION_KINDS = frozenset({"connect", "connection", "timeout"})  # what a dead local server looks like
UNREACHABLE = {"connect": "connections are refused (or the host is unreachable)",
               "dns": "its host name does not resolve"}
REFUSED = {"http_401": "the API key is refused (HTTP 401)", "http_403": "access is denied (HTTP 403)",
           "http_404": "not found (HTTP 404): check the model name and that the base URL ends in the API's /v1"}


@dataclass
class SendError(Exception):
    """A request that did not yield a usable reply; `kind` names the cause for the stats."""

    kind: str  # "http_500", "timeout", "connect" (refused), "dns", "connection" (dropped), "malformed", ...
    detail: str
    retryable: bool
    retry_after: float | None = None
    raw: str = ""
    attempts: int = 0  # HTTP attempts made, set when retries are exhausted
    status: int = 0  # the HTTP status of an error reply

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def retry_delay(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Seconds to wait before retry `attempt` (0-based): the server's Retry-After when given, else
    exponential backoff with full jitter."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
    return random.uniform(0.0, min(cap, base * 2.0 ** attempt))


def parse_retry_after(headers: aiohttp.typedefs.LooseHeaders) -> float | None:
    """Retry-After in seconds (`retry-after-ms` as OpenAI sends, or seconds; HTTP dates are ignored)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return float(value) * scale
            except ValueError:
                continue
    return None


def parse_choices(body: bytes) -> list[CachedReply]:
    """Every choice of a chat completion body, the first carrying the request's token usage (raises
    SendError when the body is malformed)."""
    try:
        data = json.loads(body)
        choices = data["choices"]
        messages = [choice["message"] for choice in choices]
        contents = [message.get("content") or "" for message in messages]
        if not choices:
            raise ValueError("no choices")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise SendError("malformed", f"unreadable reply body ({type(err).__name__}: {err})", True,
                        raw=body[:RAW_LIMIT].decode("utf-8", "replace")) from err
    usage = data.get("usage") or {}
    model = data.get("model") or ""
    replies = [CachedReply(content=content, reasoning=reasoning_field(message), model=model,
                           finish_reason=choice.get("finish_reason") or "")
               for choice, message, content in zip(choices, messages, contents, strict=True)]
    counts = {"prompt_tokens": int(usage.get("prompt_tokens") or 0),
              "completion_tokens": int(usage.get("completion_tokens") or 0)}
    thought = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if isinstance(thought, int | float) and not isinstance(thought, bool):
        counts["reasoning_tokens"] = int(thought)  # only when the server counts them (OpenAI, vLLM, ...)
    replies[0] = dataclasses.replace(replies[0], usage=counts)
    return replies


def parse_images(body: bytes) -> list[CachedReply]:
    """The image of an image generation body (`data[0].b64_json`) as a reply whose content is the base64 text
    (raises SendError when the body holds none)."""
    try:
        data = json.loads(body)
        encoded = data["data"][0]["b64_json"]
        if not (isinstance(encoded, str) and encoded):
            raise ValueError("no b64_json")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
        raise SendError("malformed", f"unreadable image reply body ({type(err).__name__}: {err})", True,
                        raw=body[:RAW_LIMIT].decode("utf-8", "replace")) from err
    usage = data.get("usage") or {}
    counts = {"prompt_tokens": int(usage.get("input_tokens") or 0),
              "completion_tokens": int(usage.get("output_tokens") or 0)}
    return [CachedReply(content=encoded, model=str(data.get("model") or ""), finish_reason="stop", usage=counts)]


# a request's kind -> its path under the base URL and the parser of its reply body
ROUTES: dict[str, tuple[str, Callable[[bytes], list[CachedReply]]]] = {
    "chat": ("/chat/completions", parse_choices), "image": ("/images/generations", parse_images)}


class RateLimiter:
    """Requests and tokens per minute over a sliding 60-second window."""

    WINDOW = 60.0

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self._starts: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._token_sum = 0

    def _prune(self, now: float) -> None:
        while self._starts and now - self._starts[0] >= self.WINDOW:
            self._starts.popleft()
        while self._tokens and now - self._tokens[0][0] >= self.WINDOW:
            self._token_sum -= self._tokens.popleft()[1]

    def _wait_needed(self, now: float) -> float:
        waits = [0.0]
        if self.rpm and len(self._starts) >= self.rpm:
            waits.append(self._starts[0] + self.WINDOW - now)
        if self.tpm and self._token_sum >= self.tpm and self._tokens:
            waits.append(self._tokens[0][0] + self.WINDOW - now)
        return max(waits)

    async def acquire(self) -> None:
        """Wait until one more request fits in the window, then count it."""
        while True:
            now = time.monotonic()
            self._prune(now)
            wait = self._wait_needed(now)
            if wait <= 0:
                self._starts.append(now)
                return
            await asyncio.sleep(wait)

    def record_tokens(self, tokens: int) -> None:
        if self.tpm and tokens:
            self._tokens.append((time.monotonic(), tokens))
            self._token_sum += tokens


class EndpointClient:
    """Sends requests to one endpoint (chat completions, or image generations: ROUTES)."""

    def __init__(self, name: str, config: EndpointConfig, base_url: str):
        self.name, self.config = name, config
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint '{name}': base_url '{base_url}' is not an http(s) URL (or 'local')")
        self.base_url = ""
        self.set_base_url(base_url)
        self.headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = os.environ.get(config.api_key_env)
            if not key:
                raise ConfigError(f"endpoint '{name}': environment variable {config.api_key_env} is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self.timeout = aiohttp.ClientTimeout(total=config.timeout)
        self.limiter = (RateLimiter(config.requests_per_minute, config.tokens_per_minute)
                        if config.requests_per_minute or config.tokens_per_minute else None)

    def set_base_url(self, base_url: str) -> None:
        self.base_url = base_url

    async def send_once(self, session: aiohttp.ClientSession, body: bytes, kind: str = "chat") -> list[CachedReply]:
        """One HTTP attempt: the reply's choices, or its image (raises SendError)."""
        path, parse = ROUTES[kind]
        url = self.base_url.rstrip("/") + path
        if self.limiter:
            await self.limiter.acquire()
        try:
            async with session.post(url, data=body, headers=self.headers, timeout=self.timeout) as reply:
                payload = await reply.read()
                status, headers = reply.status, reply.headers
        except TimeoutError as err:
            raise SendError("timeout", f"no reply within {self.config.timeout:g} s", True) from err
        except aiohttp.ClientConnectorDNSError as err:
            raise SendError("dns", f"{type(err).__name__}: {err}", True) from err
        except aiohttp.ClientConnectorError as err:
            raise SendError("connect", f"{type(err).__name__}: {err}", True) from err
        except aiohttp.ClientError as err:
            raise SendError("connection", f"{type(err).__name__}: {err}", True) from err
        if status != 200:
            text = payload[:RAW_LIMIT].decode("utf-8", "replace")
            retryable = status in RETRY_STATUSES or status >= 500
            raise SendError(f"http_{status}", text[:300], retryable, parse_retry_after(headers), text, status=status)
        replies = parse(payload)
        if self.limiter:
            self.limiter.record_tokens(sum(replies[0].usage.values()))
        return replies


class EndpointHealth:
    """Tells a down endpoint from a flaky one: refused connections or an unknown host with nothing answered
    for `down_after` seconds, or `down_after_requests` 401/403/404 replies in a row, raise EndpointDown."""

    def __init__(self, name: str, config: EndpointConfig, base_url: str,
                 clock: Callable[[], float] = time.monotonic):
        self.name, self.config, self.base_url, self.clock = name, config, base_url, clock
        self._unreachable_since: float | None = None
        self._refused = 0

    def answered(self) -> None:
        self._unreachable_since, self._refused = None, 0

    def failed(self, err: SendError) -> None:
        """Count a failed attempt; raises EndpointDown when the endpoint is down."""
        if err.kind in UNREACHABLE:
            now = self.clock()
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since >= self.config.down_after:
                self._down(f"{UNREACHABLE[err.kind]} for {now - self._unreachable_since:.0f} s "
                           f"(endpoint down_after: {self.config.down_after:g} s)", err)
        elif err.kind in REFUSED:
            self._refused += 1
            if self._refused >= self.config.down_after_requests:
                self._down(f"{REFUSED[err.kind]} on {self._refused} requests in a row", err)

    def _down(self, cause: str, err: SendError) -> None:
        key = f"; the key is read from ${self.config.api_key_env}" if self.config.api_key_env else ""
        raise EndpointDown(f"endpoint '{self.name}' ({self.base_url}, model '{self.config.model}') is down: "
                           f"{cause}{key if err.kind in ('http_401', 'http_403') else ''}. Last error: {err}")
