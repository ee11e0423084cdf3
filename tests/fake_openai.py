"""A scripted OpenAI-compatible chat server on 127.0.0.1 for tests and benchmarks, with fault injection.

Real HTTP (aiohttp.web), in a background thread (`FakeOpenAI(...).start()`) or as its own process
(`python tests/fake_openai.py --latency 0.2`, which prints its base URL). It answers
`POST /v1/chat/completions`, `POST /v1/images/generations` and `GET /v1/models`.

Replies: by default the content echoes the last message (`echo: <text>`); a message holding a directive
gets a scripted reply instead: `[[field]]` (a `reasoning_content` field), `[[reasoning]]` (a `reasoning`
field), `[[think]]` (`<think>...</think>` in the content), `[[open-think]]` (an unterminated `<think>`),
`[[close-think]]` (only `</think>`, as R1 templates leave it). A `reply(payload, seen)` callable replaces all
of that (`seen` counts the arrivals of the same prompt, from 1); it is called once per choice when the
request asks for `n` choices (unless `honour_n=False`, a server that ignores `n`). A reply message may carry
`finish_reason` (default "stop") and `reasoning_tokens` (sent as `usage.completion_tokens_details`); both are
taken out of the message.

Structured output: `accepts` names the `response_format` forms the server takes (`json_schema`,
`json_object_schema` (llama.cpp's `{"type": "json_object", "schema": ...}`), `json_object`); a request in
another form gets a 400 that names `response_format`, as OpenAI, vLLM and llama.cpp answer. A request
without `response_format` is always taken.

Faults, drawn per arrival from a seeded RNG with the given rates (or chosen by a `faults(payload, seen)`
callable): `500` (a 5xx), `429` (with Retry-After), `401`, `403`, `404` (a bad key, no access, an unknown
model), `timeout` (no answer for `hang` seconds, then 504),
`malformed` (200 with a body that is not a chat completion), `truncated` (the connection drops mid-body),
`drop` (the connection closes before any reply).

Images: a message's `content` may be a list of parts (`text` and `image_url`); the prompt is its text parts
joined. Every image must be a `data:` URL whose bytes Pillow reads and whose MIME type matches them, else the
request gets a 400, as a vision server answers; `images_of(payload)` decodes a request's images.

Image generations: the reply's `data[0].b64_json` is a small PNG drawn from the request's `prompt` (the same
prompt, the same picture: `drawn_png`), or the bytes an `image(payload, seen)` callable returns; the faults
above apply to them too (`malformed`: a body without an image).

Counters, keyed by the last message's text (an image generation: its prompt): `received` (every arrival) and `answered` (valid replies sent);
`payloads` holds every request body and `authorizations` the Authorization headers seen.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import io
import json
import random
import sys
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

FAULTS = ("500", "429", "401", "403", "404", "timeout", "malformed", "truncated", "drop")
FORMS = ("json_schema", "json_object_schema", "json_object")
MALFORMED_BODIES = (b'{"choices": [{"message": {"content": "cut', b"<html>Bad Gateway</html>",
                    b'{"id": "x", "object": "chat.completion"}', b'{"choices": []}')
ReplyFn = Callable[[dict, int], dict]
ImageFn = Callable[[dict, int], bytes]
FaultFn = Callable[[dict, int], str | None]


def text_of(content: Any) -> str:
    """A message content's text: the string, or its text parts joined by newlines."""
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if part.get("type") == "text")
    return str(content if content is not None else "")


def prompt_of(payload: dict) -> str:
    """The text that identifies a request: its last message's text."""
    messages = payload.get("messages") or [{}]
    return text_of(messages[-1].get("content", ""))


def images_of(payload: dict) -> list[bytes]:
    """The images of a request's messages, decoded from their `data:` URLs (ValueError naming what is wrong:
    not a data URL, bad base64, unreadable bytes, a MIME type that does not match them)."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for message in payload.get("messages") or []:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") != "image_url":
                continue
            url = str((part.get("image_url") or {}).get("url", ""))
            header, _, encoded = url.partition(",")
            if not (header.startswith("data:image/") and header.endswith(";base64")):
                raise ValueError(f"not a base64 data URL of an image: {url[:40]!r}")
            try:
                data = base64.b64decode(encoded, validate=True)
                with Image.open(io.BytesIO(data)) as image:
                    fmt = str(image.format).lower()
            except (binascii.Error, UnidentifiedImageError, OSError) as err:
                raise ValueError(f"image does not decode ({err})") from err
            if header[len("data:image/"):-len(";base64")] != fmt:
                raise ValueError(f"MIME type {header[5:-7]} but the bytes are {fmt}")
            images.append(data)
    return images


def drawn_png(prompt: str, size: str = "64x64") -> bytes:
    """A PNG of `size` ("WxH", at most 256 a side) whose colours and stripe come from the prompt's sha256."""
    import hashlib

    from PIL import Image, ImageDraw

    digest = hashlib.sha256(prompt.encode()).digest()
    width, height = (min(int(side), 256) for side in size.split("x"))
    image = Image.new("RGB", (width, height), tuple(digest[:3]))
    ImageDraw.Draw(image).rectangle([digest[3] % (width // 2), 0, width // 2 + digest[4] % (width // 2), height // 3],
                                    fill=tuple(digest[5:8]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def response_format_form(payload: dict) -> str | None:
    """The structured-output form a request asks for (one of FORMS), None without `response_format`."""
    rf = payload.get("response_format")
    if not isinstance(rf, dict):
        return None
    if rf.get("type") == "json_object":
        return "json_object_schema" if "schema" in rf else "json_object"
    return str(rf.get("type"))


def request_schema(payload: dict) -> dict:
    """The JSON schema a request asks its reply to follow, in whichever form it asks ({} when none)."""
    rf = payload.get("response_format")
    if not isinstance(rf, dict):
        return {}
    return (rf.get("json_schema") or {}).get("schema") or rf.get("schema") or {}


def scripted_message(payload: dict, seen: int) -> dict:
    """The default reply: an echo, or the form a directive in the prompt asks for."""
    text = prompt_of(payload)
    answer = f"echo: {text}"
    if "[[field]]" in text:
        return {"role": "assistant", "content": answer, "reasoning_content": f"thinking about {text}"}
    if "[[reasoning]]" in text:
        return {"role": "assistant", "content": answer, "reasoning": f"thinking about {text}"}
    if "[[think]]" in text:
        return {"role": "assistant", "content": f"<think>thinking about {text}</think>\n{answer}"}
    if "[[open-think]]" in text:
        return {"role": "assistant", "content": f"<think>thinking about {text} and never stopping"}
    if "[[close-think]]" in text:
        return {"role": "assistant", "content": f"thinking about {text}</think>{answer}"}
    return {"role": "assistant", "content": answer}


class FakeOpenAI:
    """The server; `start()` runs it in a daemon thread, `stop()` ends it. Also a context manager."""

    def __init__(self, reply: ReplyFn | None = None, faults: dict[str, float] | FaultFn | None = None,
                 latency: float = 0.0, retry_after: str = "0", hang: float = 5.0, seed: int = 0,
                 honour_n: bool = True, accepts: tuple[str, ...] = FORMS, image: ImageFn | None = None):
        unknown = set(faults) - set(FAULTS) if isinstance(faults, dict) else set()
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)} (known: {', '.join(FAULTS)})")
        self.reply, self.faults, self.latency = reply or scripted_message, faults or {}, latency
        self.retry_after, self.hang, self.honour_n = retry_after, hang, honour_n
        self.accepts = tuple(accepts)
        self.image = image or (lambda payload, seen: drawn_png(str(payload.get("prompt")), str(payload.get("size"))))
        self.rejected_forms: Counter[str] = Counter()  # response_format forms answered with a 400
        self.received: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.payloads: list[dict] = []  # every request body, in arrival order
        self.authorizations: Counter[str] = Counter()  # Authorization header values seen
        self._random = random.Random(seed)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def set_faults(self, faults: dict[str, float] | FaultFn | None) -> None:
        self.faults = faults or {}

    # -- the HTTP handlers -----------------------------------------------------------------------------------
    def _fault(self, payload: dict, seen: int) -> str | None:
        if callable(self.faults):
            return self.faults(payload, seen)
        roll = self._random.random()
        for kind, rate in self.faults.items():
            if roll < rate:
                return kind
            roll -= rate
        return None

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        payload = json.loads(await request.read())
        prompt = prompt_of(payload)
        self.received[prompt] += 1
        self.payloads.append(payload)
        self.authorizations[request.headers.get("Authorization", "")] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        try:
            images_of(payload)
        except ValueError as err:
            return web.json_response({"error": {"message": f"invalid image: {err}",
                                                "type": "invalid_request_error"}}, status=400)
        form = response_format_form(payload)
        if form is not None and form not in self.accepts:
            self.rejected_forms[form] += 1
            return web.json_response({"error": {"message": f"Invalid parameter: 'response_format' of type "
                                                           f"'{form}' is not supported with this model.",
                                                "param": "response_format", "type": "invalid_request_error"}},
                                     status=400)
        fault = self._fault(payload, self.received[prompt])
        if fault is not None:
            return await self._inject(fault, request)
        choices = int(payload.get("n") or 1) if self.honour_n else 1
        messages = [dict(self.reply(payload, self.received[prompt])) for _ in range(choices)]
        finish = [m.pop("finish_reason", "stop") for m in messages]
        thought = [m.pop("reasoning_tokens", None) for m in messages]
        words = sum(len(str(m.get("content", "")).split()) for m in payload.get("messages", []))
        usage: dict[str, Any] = {"prompt_tokens": words, "total_tokens": 0,
                                 "completion_tokens": sum(len(m.get("content", "").split()) for m in messages)}
        if thought[0] is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": thought[0]}
        body = {"id": "chatcmpl-fake", "object": "chat.completion", "model": payload.get("model", "fake-model"),
                "choices": [{"index": i, "message": m, "finish_reason": f}
                            for i, (m, f) in enumerate(zip(messages, finish, strict=True))],
                "usage": usage}
        self.answered[prompt] += 1
        return web.json_response(body)

    async def _images(self, request: web.Request) -> web.StreamResponse:
        payload = json.loads(await request.read())
        prompt = str(payload.get("prompt", ""))
        self.received[prompt] += 1
        self.payloads.append(payload)
        self.authorizations[request.headers.get("Authorization", "")] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self._fault(payload, self.received[prompt])
        if fault is not None:
            return await self._inject(fault, request)
        data = self.image(payload, self.received[prompt])
        self.answered[prompt] += 1
        return web.json_response({"created": 0, "model": payload.get("model", "fake-image"),
                                  "data": [{"b64_json": base64.b64encode(data).decode("ascii")}]})

    async def _inject(self, fault: str, request: web.Request) -> web.StreamResponse:
        if fault == "500":
            return web.json_response({"error": {"message": "injected"}}, status=self._random.choice((500, 502, 503)))
        if fault in ("401", "403", "404"):
            return web.json_response({"error": {"message": f"injected {fault}"}}, status=int(fault))
        if fault == "429":
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": self.retry_after})
        if fault == "timeout":
            await asyncio.sleep(self.hang)
            return web.json_response({"error": {"message": "too late"}}, status=504)
        if fault == "malformed":
            return web.Response(body=self._random.choice(MALFORMED_BODIES), content_type="application/json")
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "x" * 200}}]}).encode()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if fault == "truncated":
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
        request.transport.close()  # "truncated" and "drop": the connection dies
        return response

    # -- lifetime --------------------------------------------------------------------------------------------
    async def _serve(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self) -> FakeOpenAI:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Serve in this process until killed; print the base URL on the first line of stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--faults", default="{}", help='JSON rates, e.g. {"500": 0.2, "429": 0.1}')
    parser.add_argument("--retry-after", default="0")
    args = parser.parse_args(argv)
    server = FakeOpenAI(faults=json.loads(args.faults), latency=args.latency, retry_after=args.retry_after)

    async def serve_forever() -> None:
        await server._serve(args.port)
        print(server.url, flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever())


if __name__ == "__main__":
    sys.exit(main())
