"""The LLM engine: OpenAI-compatible endpoints, async with bounded concurrency, retries, a SQLite cache,
reasoning split, structured output, usage and cost, and the embedded local llama.cpp server.

    engine = Engine.from_config(build_config)          # or Engine(endpoints, cache_path, local)
    responses = engine.run(requests, desc="relevance")  # sync; same order as requests; never raises per item
    engine.usage_snapshot() / engine.usage_since(snapshot, tag=...)  # token usage & cost per endpoint/tag
    engine.close()                                      # stops the local server, closes the cache

Every request ends exactly once, as a result or as a recorded failure (its error and raw text). Results are
cached by a hash of what determines the reply (bsa.pipeline.llm.cache_key: what goes in, what stays out), so a
rerun, or another stage asking the same thing, sends nothing twice; failures are not cached, so the next run retries only those.

An endpoint that cannot answer at all (refused connections or an unknown host for `down_after` seconds,
`down_after_requests` 401/403/404 replies in a row, a local server dead beyond its restarts) stops the run
with EndpointDown, naming the endpoint and the cause, instead of failing every request.

A request of kind "image" (`image_request`) asks an OpenAI-compatible image API (`POST {base_url}/images/generations`)
for one picture; its Response's content is the image as base64. It is cached, retried and recorded like a chat
request; a reply whose bytes are no image counts as unparsable (asked again `parse_retries` times, never cached).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import io
import itertools
import json
import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tqdm.auto import tqdm

from bsa.pipeline.config import EndpointConfig, LocalServerConfig
from bsa.pipeline.errors import ConfigError, EndpointDown
from bsa.pipeline.llm.cache import CachedReply, LLMCache
from bsa.pipeline.llm.cache_key import (
    body_bytes,
    cache_key,
    image_payload,
    request_payload,
    schema_text,
    stored_request,
    with_image_digests,
)
from bsa.pipeline.llm.client import CONNECTION_KINDS, RAW_LIMIT, SendError, retry_delay
from bsa.pipeline.llm.pool import EndpointPool
from bsa.pipeline.llm.providers import EmbeddedProvider, RemoteProvider
from bsa.pipeline.llm.reasoning import Split, split_reasoning
from bsa.pipeline.llm.structured import (
    CONSTRAINED,
    FALLBACK,
    ParseError,
    extract_json,
    first_form,
    grammar_schema,
    rejects_response_format,
    response_format,
    stop_after_object,
)

if TYPE_CHECKING:
    import aiohttp

    from bsa.pipeline.config import BuildConfig

log = logging.getLogger("bsa.llm")
COUNTED = ("requests", "cached", "failed", "sent", "prompt_tokens", "completion_tokens")
PARSE_RESEED = 7919  # with a fixed seed, parse retry j uses seed + j * PARSE_RESEED (a different draw)


@dataclass
class Request:
    """One chat completion to make. `sample` distinguishes the k samples of the same prompt (cache key)."""

    endpoint: str  # a name under `endpoints:` in the config
    messages: list[dict[str, Any]]  # content: a text, or content parts (an image: bsa.multimodal.messages)
    schema: dict | None = None  # JSON schema of the reply: structured output, parsed into Response.parsed
    sample: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # overrides: temperature, top_p, max_tokens, ...
    tag: str = ""  # who asks (stage name, "eval", "judge"): usage is counted per tag
    elicit_reasoning: bool | None = None  # None: the endpoint's `reasoning` setting decides
    kind: Literal["chat", "image"] = "chat"  # image: an image generation, `params` its prompt and size


def image_request(endpoint: str, prompt: str, size: str, tag: str = "") -> Request:
    """One picture from an OpenAI-compatible image endpoint; the Response's content is the image as base64."""
    return Request(endpoint, [], params={"prompt": prompt, "size": size}, tag=tag, kind="image")


def image_problem(encoded: str) -> str | None:
    """Why an image reply's base64 is not an image Pillow can identify (None when it is one)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(base64.b64decode(encoded, validate=True))) as image:
            image.verify()
    except (binascii.Error, ValueError) as err:
        return f"not base64 ({err})"
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        return f"not an image ({err})"
    return None


@dataclass
class Response:
    """The outcome of a Request: a result (ok) or a recorded failure with its error and raw text."""

    ok: bool
    content: str = ""  # the answer, reasoning removed
    reasoning: str | None = None
    reasoning_source: str = "none"  # "field" | "think_tags" | "elicited" | "none"
    reasoning_shape: str = "none"  # bsa.pipeline.llm.reasoning.Split.shape: "unterminated" means it never finished
    parsed: dict | None = None  # the JSON object, when a schema was given and the reply parsed
    error: str | None = None  # why it failed (after all retries)
    raw: str = ""  # the raw reply text
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, completion_tokens
    cached: bool = False
    attempts: int = 0
    model: str = ""
    finish_reason: str = ""  # "stop", "length" (cut by max_tokens), ...
    elicited: bool = False  # the model was asked to reason in <think> tags (it is not a reasoning model)
    key: str = ""  # the cache key


@dataclass(slots=True)
class _Call:
    """One distinct request; `targets` are the (index, tag) of every Request it answers. `payload` is what
    determines the reply (the cache key hashes it); the body on the wire adds the negotiated structured-output
    form (`Engine._wire`)."""

    endpoint: str
    config: EndpointConfig
    request: Request
    payload: dict[str, Any]
    body: bytes  # the payload serialised: the k samples of a prompt share it (`supports_n`)
    key: str
    elicited: bool
    schema_json: str | None
    targets: list[tuple[int, str]]
    client: EndpointPool | None = None  # set when the call has to be sent (the cache may answer it)

    @property
    def structured(self) -> bool:
        """Whether the request asks the server for JSON (elicited reasoning needs free text: prompt only)."""
        return self.schema_json is not None and not self.elicited


class Engine:
    """Runs batches of Requests against the configured endpoints (see the module docstring)."""

    def __init__(self, endpoints: dict[str, EndpointConfig], cache_path: Path | None = None,
                 local: LocalServerConfig | None = None, lang: str = "en", log_dir: Path | None = None):
        self.endpoints = dict(endpoints)
        self.cache = LLMCache(cache_path) if cache_path else None
        self.local_config = local or LocalServerConfig()
        self.lang = lang
        log_dir = Path(log_dir) if log_dir else (Path(cache_path).parent if cache_path else None)
        self.embedded = EmbeddedProvider(self.local_config, log_dir)  # shared by every embedded endpoint
        self.embedded.on_move(self._local_moved)
        self._remote: dict[str, RemoteProvider] = {}
        self._clients: dict[str, EndpointPool] = {}
        self._forms: dict[str, str] = {}  # endpoint -> structured-output form in use (negotiated)
        self._elicit_instruction: str | None = None
        self._usage: Counter = Counter()  # (tag, endpoint, field) -> amount
        self._loop = asyncio.Runner()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: BuildConfig) -> Engine:
        return cls(config.endpoints, config.cache_path, config.llm.local, lang=config.lang,
                   log_dir=config.build_path)

    # -- endpoints -------------------------------------------------------------------------------------------
    def _endpoint(self, name: str) -> EndpointConfig:
        if name not in self.endpoints:
            raise ConfigError(f"unknown LLM endpoint '{name}' (configured: {', '.join(self.endpoints) or 'none'})")
        return self.endpoints[name]

    def provider(self, name: str) -> EmbeddedProvider | RemoteProvider:
        """Who serves an endpoint (bsa.pipeline.llm.providers)."""
        config = self._endpoint(name)
        if config.embedded:
            return self.embedded
        if name not in self._remote:
            self._remote[name] = RemoteProvider(config)
        return self._remote[name]

    def _client(self, name: str) -> EndpointPool:
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = EndpointPool(name, self._endpoint(name), self.provider(name).start())
        return client

    def replica_status(self, name: str) -> dict[str, str]:
        """Each server of an endpoint (its base_url and replicas): "live", "resting" or why it is down."""
        return self._client(name).status()

    def _local_moved(self, base_url: str) -> None:
        """Point every embedded endpoint's client at a restarted server's new port."""
        for name, client in self._clients.items():
            if self.endpoints[name].embedded:
                client.set_base_url(base_url)

    def structured_form(self, name: str) -> str:
        """The structured-output form in use for an endpoint (negotiated during the run)."""
        return self._forms.setdefault(name, first_form(self._endpoint(name).structured_output))

    def endpoint_model(self, name: str) -> str:
        """The model an endpoint serves (for provenance): the GGUF file name for the embedded model."""
        return self.provider(name).served_model()

    # -- building calls --------------------------------------------------------------------------------------
    def _elicit_text(self) -> str:
        if self._elicit_instruction is None:
            from bsa.pipeline.prompts import PromptLoader

            try:
                prompt = PromptLoader(self.lang).load("elicit_reasoning")
            except ConfigError:
                prompt = PromptLoader("en").load("elicit_reasoning")
            self._elicit_instruction = prompt.system
        return self._elicit_instruction

    def _messages(self, messages: list[dict[str, str]], elicit: bool) -> list[dict[str, str]]:
        if not elicit:
            return messages
        instruction = self._elicit_text()
        if messages and messages[0].get("role") == "system":
            first = messages[0]
            return [{**first, "content": f"{first['content'].rstrip()}\n\n{instruction}"}, *messages[1:]]
        return [{"role": "system", "content": instruction}, *messages]

    def _call(self, request: Request, index: int) -> _Call:
        config = self._endpoint(request.endpoint)
        if request.kind == "image" and config.embedded:
            raise ConfigError(f"endpoint '{request.endpoint}': the embedded model generates no images (give an "
                              "image API's base_url)")
        elicit = (config.reasoning == "elicit") if request.elicit_reasoning is None else request.elicit_reasoning
        elicit = elicit and request.kind == "chat"
        payload = (image_payload(config, request.params) if request.kind == "image" else
                   request_payload(config, self._messages(request.messages, elicit), request.params, request.sample))
        schema_json = schema_text(grammar_schema(request.schema)) if request.schema else None
        body = body_bytes(payload)
        keyed = with_image_digests(payload)  # images count by their sha256
        key = cache_key(self.provider(request.endpoint).identity(), request.sample, schema_json,
                        body if keyed is payload else body_bytes(keyed))
        return _Call(request.endpoint, config, request, payload, body, key, elicit, schema_json,
                     [(index, request.tag)])

    def _wire(self, call: _Call, parse_attempt: int = 0, n: int | None = None) -> bytes:
        """The body to send: the payload with the endpoint's structured-output form, a parse retry's seed
        (a fixed seed would bring the same reply back) and `n`."""
        extra: dict[str, Any] = {}
        if call.structured:
            form = self.structured_form(call.endpoint)
            rf = response_format(call.request.schema, form)
            if rf is not None:
                extra["response_format"] = rf
            stop = stop_after_object(call.request.schema) if form in CONSTRAINED else None
            if stop and "stop" not in call.payload:
                extra["stop"] = stop
        if parse_attempt and "seed" in call.payload:
            extra["seed"] = call.payload["seed"] + parse_attempt * PARSE_RESEED
        if n is not None:
            extra["n"] = n
        return json.dumps({**call.payload, **extra}, ensure_ascii=False).encode() if extra else call.body

    # -- interpreting replies --------------------------------------------------------------------------------
    def _interpret(self, call: _Call, reply: CachedReply) -> Response:
        """A Response from a server reply: reasoning split off, JSON extracted and validated (an image: checked
        to be one)."""
        if call.request.kind == "image":
            problem = image_problem(reply.content)
            return Response(ok=problem is None, content=reply.content, error=problem and f"unparsable: {problem}",
                            raw="" if problem is None else reply.content[:RAW_LIMIT], usage=dict(reply.usage or {}),
                            model=reply.model or call.payload["model"], finish_reason=reply.finish_reason,
                            key=call.key)
        if call.config.reasoning == "none":
            split = Split(reply.content.strip(), reply.reasoning, *(("field",) * 2 if reply.reasoning else ("none",) * 2))
        else:
            split = split_reasoning(reply.content, reply.reasoning)
        source = "elicited" if call.elicited and split.source == "think_tags" else split.source
        response = Response(ok=True, content=split.content, reasoning=split.reasoning, reasoning_source=source,
                            reasoning_shape=split.shape,
                            raw=reply.content, usage=dict(reply.usage or {}), model=reply.model or call.payload["model"],
                            finish_reason=reply.finish_reason, elicited=call.elicited, key=call.key)
        if call.schema_json is not None:
            try:
                response.parsed = extract_json(split.content, call.request.schema, call.schema_json)
            except ParseError as err:
                response.ok, response.error = False, f"unparsable: {err}"
        return response

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, requests: list[Request], desc: str = "llm") -> list[Response]:
        """Responses to `requests`, in order: each a result or a recorded failure (never an exception)."""
        if not requests:
            return []
        responses: list[Response | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc=desc, disable=None, leave=False, dynamic_ncols=True) as bar:
            pending = self._serve_cached(self._plan(requests), responses, bar)
            for call in pending:  # only now: a fully cached run needs no key and starts no local server
                call.client = self._client(call.endpoint)
            if pending:
                try:
                    self._run_coroutine(self._execute(pending, responses, bar))
                except BaseExceptionGroup as group:
                    raise _first_of(group) from None
                finally:
                    if self.cache is not None:
                        self.cache.flush()  # what finished before a stop is kept
        failed = sum(not r.ok for r in responses)
        log.info("%s: %d requests, %d answered without sending, %d failed", desc, len(requests),
                 len(requests) - len(pending), failed)
        return responses

    def _plan(self, requests: list[Request]) -> list[_Call]:
        """One call per distinct request (duplicates within the batch are sent once)."""
        calls: dict[str, _Call] = {}
        for index, request in enumerate(requests):
            call = self._call(request, index)
            if call.key in calls:
                calls[call.key].targets.append((index, request.tag))
            else:
                calls[call.key] = call
        return list(calls.values())

    def _serve_cached(self, calls: list[_Call], responses: list, bar: tqdm) -> list[_Call]:
        """Answer calls from the cache; return those still to send."""
        hits = self.cache.get_many(call.key for call in calls) if self.cache is not None else {}
        pending = []
        for call in calls:
            reply = hits.get(call.key)
            response = self._interpret(call, reply) if reply is not None else None
            if response is None or not response.ok:  # a reply the current parser rejects is asked again
                pending.append(call)
                continue
            response.cached = True
            self._finish(call, response, responses, bar)
        return pending

    def _run_coroutine(self, coroutine: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run(coroutine)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from async code (e.g. a notebook)
            return pool.submit(self._loop.run, coroutine).result()

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=600)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def _execute(self, calls: list[_Call], responses: list, bar: tqdm) -> None:
        session = await self._get_session()
        batches: dict[tuple[str, str | bytes], list[_Call]] = {}
        for call in calls:  # with `supports_n`, the k samples of one prompt share a body and one request
            batches.setdefault((call.endpoint, call.body if call.config.supports_n else call.key),
                               []).append(call)
        queues: dict[str, deque[list[_Call]]] = {}
        for (endpoint, _), batch in batches.items():
            queues.setdefault(endpoint, deque()).append(batch)
        async with asyncio.TaskGroup() as group:
            drains = [group.create_task(self._drain(session, queue, responses, bar))
                      for queue in queues.values()
                      for _ in range(min(self.provider(queue[0][0].endpoint).workers(), len(queue)))]
            watch = self.embedded.watch
            if watch is not None and any(self.endpoints[name].embedded for name in queues):
                watcher = group.create_task(watch.watch(session))
                group.create_task(_cancel_when_done(watcher, drains))

    async def _drain(self, session: aiohttp.ClientSession, queue: deque[list[_Call]], responses: list,
                     bar: tqdm) -> None:
        """One worker of an endpoint: complete batches until its queue is empty."""
        while queue:
            batch = queue.popleft()
            if len(batch) == 1:
                self._finish(batch[0], await self._complete(session, batch[0]), responses, bar)
                continue
            for call, response in await self._complete_samples(session, batch):
                self._finish(call, response, responses, bar)

    async def _complete_samples(self, session: aiohttp.ClientSession, calls: list[_Call]) -> list[tuple[_Call, Response]]:
        """The samples of one prompt in one request (`n`); a sample that the server did not return, or whose
        reply does not parse, is then sent alone."""
        try:
            replies, tries, body = await self._send(session, calls[0], n=len(calls))
        except SendError as err:
            return [(call, self._failure(call, call.body, str(err), err.raw, err.attempts, err.kind))
                    for call in calls]
        done, alone = [], []
        for call, reply in itertools.zip_longest(calls, replies[:len(calls)]):
            response = self._interpret(call, reply) if reply is not None else None
            if response is None or not response.ok:
                alone.append(call)
                continue
            response.attempts = tries
            self._store(call, body, reply)
            done.append((call, response))
        return done + [(call, await self._complete(session, call)) for call in alone]

    async def _complete(self, session: aiohttp.ClientSession, call: _Call) -> Response:
        """Send a call until it yields a valid reply or its retries run out; cache or log the outcome."""
        config, attempts, body = call.config, 0, call.body
        for parse_attempt in range(config.parse_retries + 1):
            try:
                replies, tries, body = await self._send(session, call, parse_attempt)
            except SendError as err:
                return self._failure(call, call.body, str(err), err.raw, attempts + err.attempts, err.kind)
            attempts += tries
            reply = replies[0]
            response = self._interpret(call, reply)
            response.attempts = attempts
            if response.ok:
                self._store(call, body, reply)
                return response
            self._count(call, "error:unparsable")
        return self._failure(call, body, response.error or "unparsable", response.raw, attempts, "unparsable",
                             response)

    def _store(self, call: _Call, body: bytes, reply: CachedReply) -> None:
        if self.cache is not None:
            self.cache.put(call.key, call.endpoint, stored_request(body), reply)

    async def _send(self, session: aiohttp.ClientSession, call: _Call, parse_attempt: int = 0,
                    n: int | None = None) -> tuple[list[CachedReply], int, bytes]:
        """The reply's choices and the body that got them, retrying transient failures with backoff (raises
        SendError at the end). Asking again in the next structured-output form, or after the local server
        was restarted, spends no retry; an endpoint found down raises EndpointDown."""
        config, pool, attempt = call.config, call.client, 0
        local = self.embedded.watch if config.embedded else None
        while True:
            form = self.structured_form(call.endpoint) if call.structured else None
            body = self._wire(call, parse_attempt, n)
            generation = local.generation if local else 0
            self._count(call, "sent")
            replica = await pool.acquire()
            if pool.pooled:
                self._count(call, f"replica:{replica.url}")
            try:
                try:
                    replies = await replica.client.send_once(session, body, call.request.kind)
                finally:
                    pool.release(replica)
            except SendError as err:
                self._count(call, f"error:{err.kind}")
                if pool.pooled:
                    self._count(call, f"replica_error:{replica.url}")
                if form is not None and self._fall_back(call, err, form):
                    continue
                if local and err.kind in CONNECTION_KINDS and await local.recover(generation):
                    continue
                pool.failed(replica, err)
                if not err.retryable or attempt == config.max_retries:
                    err.attempts = attempt + 1
                    raise
                await asyncio.sleep(retry_delay(attempt, err.retry_after, config.backoff_base, config.backoff_max))
                attempt += 1
                continue
            pool.answered(replica)
            self._count(call, "prompt_tokens", replies[0].usage["prompt_tokens"])
            self._count(call, "completion_tokens", replies[0].usage["completion_tokens"])
            return replies, attempt + 1, body

    def _fall_back(self, call: _Call, err: SendError, sent: str) -> bool:
        """After a 400 that rejects the structured-output form `sent`: move the endpoint to the next form (once,
        whichever request saw it first) and say so; True when the request should be asked again."""
        if not rejects_response_format(err.status, err.raw):
            return False
        if self.structured_form(call.endpoint) != sent:
            return True  # another request already moved on: ask again in the current form
        if sent not in FALLBACK:
            return False
        self._forms[call.endpoint] = FALLBACK[sent]
        log.warning("endpoint '%s' rejected response_format %s (%s): using %s from now on", call.endpoint, sent,
                    err.detail[:200], FALLBACK[sent])
        return True

    def _failure(self, call: _Call, body: bytes, error: str, raw: str, attempts: int, kind: str,
                 response: Response | None = None) -> Response:
        if self.cache is not None:
            self.cache.record_failure(call.key, call.endpoint, stored_request(body), error, raw, attempts)
        failure = response or Response(ok=False, model=call.payload["model"], elicited=call.elicited, key=call.key)
        failure.ok, failure.error, failure.raw, failure.attempts, failure.parsed = False, error, raw, attempts, None
        for _, tag in call.targets:
            self._usage[(tag, call.endpoint, f"failure:{kind}")] += 1
        return failure

    def _finish(self, call: _Call, response: Response, responses: list, bar: tqdm) -> None:
        """Hand the response to every Request the call answers, and count them."""
        endpoint, usage = call.endpoint, self._usage
        for position, (index, tag) in enumerate(call.targets):
            answer = response if position == 0 else dataclasses.replace(response, cached=True)
            responses[index] = answer
            usage[(tag, endpoint, "requests")] += 1
            if answer.cached:
                usage[(tag, endpoint, "cached")] += 1
            if not answer.ok:
                usage[(tag, endpoint, "failed")] += 1
        bar.update(len(call.targets))

    def _count(self, call: _Call, name: str, amount: int = 1) -> None:
        self._usage[(call.request.tag, call.endpoint, name)] += amount

    # -- usage -----------------------------------------------------------------------------------------------
    def usage_snapshot(self) -> Counter:
        """The usage counters now, to diff against later with `usage_since`."""
        return self._usage.copy()

    def usage_since(self, snapshot: Counter | None = None, tag: str | None = None) -> dict[str, Any]:
        """Usage since `snapshot` (everything when None): totals, cost, by endpoint and by tag.

        Requests made without a tag are attributed to `tag` (the runner passes the stage name).
        """
        delta = self._usage.copy()
        delta.subtract(snapshot or Counter())
        report = _empty_usage()
        report.update(by_endpoint={}, by_tag={}, errors={}, failures={})
        pairs: dict[tuple[str, str], dict[str, Any]] = {}  # (tag, endpoint): for the cost of each tag
        for (request_tag, endpoint, name), amount in delta.items():
            if not amount:
                continue
            kind, _, detail = name.partition(":")
            if kind in ("replica", "replica_error"):  # attempts per server of a pool
                field_name = "sent" if kind == "replica" else "errors"
                servers = report.setdefault("replicas", {}).setdefault(endpoint, {})
                counts = servers.setdefault(detail, {"sent": 0, "errors": 0})
                counts[field_name] += amount
                continue
            if detail:
                group = report["errors"] if kind == "error" else report["failures"]
                group[detail] = group.get(detail, 0) + amount
                continue
            tag_name = request_tag or tag or ""
            by_endpoint = report["by_endpoint"].setdefault(endpoint, _empty_usage())
            by_tag = report["by_tag"].setdefault(tag_name, _empty_usage())
            pair = pairs.setdefault((tag_name, endpoint), _empty_usage())
            for bucket in (report, by_endpoint, by_tag, pair):
                bucket[name] += amount
        for endpoint, bucket in report["by_endpoint"].items():
            bucket["model"] = self.endpoint_model(endpoint)
            if endpoint in self._forms:
                bucket["structured_output"] = self._forms[endpoint]
            bucket["cost_usd"] = _cost(bucket, self.endpoints[endpoint].price_per_million)
            report["cost_usd"] += bucket["cost_usd"]
        for (tag_name, endpoint), bucket in pairs.items():
            report["by_tag"][tag_name]["cost_usd"] += _cost(bucket, self.endpoints[endpoint].price_per_million)
        for bucket in (report, *report["by_tag"].values()):
            bucket["cost_usd"] = round(bucket["cost_usd"], 6)
        if self.embedded.watch is not None and self.embedded.watch.events:
            report["local_server_events"] = list(self.embedded.watch.events)
        return report

    # -- lifetime --------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the HTTP session and the cache, and stop the local server (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._shutdown())
            self._loop.close()
        finally:
            self.embedded.stop()
            if self.cache is not None:
                self.cache.close()
                self.cache = None

    async def _shutdown(self) -> None:
        """Cancel what an interrupted run left behind, then close the HTTP session."""
        leftovers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _cancel_when_done(watcher: asyncio.Task, drains: list[asyncio.Task]) -> None:
    """Stop the local server's watch once every worker is done."""
    await asyncio.wait(drains)
    watcher.cancel()


def _first_of(group: BaseExceptionGroup) -> BaseException:
    """The exception to raise for a failed task group: an EndpointDown first, else the first error."""
    down = group.subgroup(EndpointDown)
    leaves = down if down is not None else group
    while isinstance(leaves, BaseExceptionGroup):
        leaves = leaves.exceptions[0]
    return leaves


def _empty_usage() -> dict[str, Any]:
    return {**dict.fromkeys(COUNTED, 0), "cost_usd": 0.0}


def _cost(usage: dict[str, Any], prices: dict[str, float]) -> float:
    """US dollars for the tokens in `usage` at `prices` per million tokens ({"prompt": .., "completion": ..})."""
    return round((usage["prompt_tokens"] * prices.get("prompt", 0.0)
                  + usage["completion_tokens"] * prices.get("completion", 0.0)) / 1e6, 6)
