"""The reply cache's key, spelled out: what goes in, what stays out.

In: the endpoint's identity (its URL; for the embedded model `local:<GGUF file name>`, since its port changes
every run), the sample index, the reply schema (as the grammar sees it) and the request body: the
endpoint's `extra_body`, model, messages (an image generation: its prompt and size, `image_payload`) (with the elicit-reasoning instruction when it applies), its sampling
fields and the request's own parameters. An image sent as a `data:` URL counts by the sha256 of its bytes
(`with_image_digests`), not by its base64 text: the key stays small, and the cache stores the digest too.
Out: how the schema is asked for (the structured-output form is negotiated per endpoint), concurrency,
rate limits, timeouts, retry pacing, the API key's variable, prices and the replicas of a pool: they change
how a reply is obtained, never which reply is right. The fingerprint of a stage uses the same split of the endpoint's settings.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from bsa.pipeline.config import EndpointConfig, LocalServerConfig

SAMPLING_FIELDS = ("temperature", "top_p", "max_tokens", "seed")
# EndpointConfig fields that can change a reply or its outcome (so a stage using the endpoint reruns) ...
RESULT_FIELDS = frozenset({"base_url", "model", *SAMPLING_FIELDS, "reasoning", "supports_n", "parse_retries",
                           "extra_body", "vision"})
# ... and those that cannot: how replies are fetched and paid for
SERVING_FIELDS = frozenset({"api_key_env", "concurrency", "requests_per_minute", "tokens_per_minute", "timeout",
                            "max_retries", "backoff_base", "backoff_max", "structured_output", "down_after",
                            "down_after_requests", "price_per_million", "replicas", "cool_off",
                            "cool_off_after"})
# LocalServerConfig fields that can change a reply of the embedded model (the rest: serving)
LOCAL_RESULT_FIELDS = frozenset({"model_path", "n_ctx"})


def endpoint_result_settings(endpoint: EndpointConfig) -> dict[str, Any]:
    """The endpoint's settings that can change a result."""
    return {name: value for name, value in endpoint.model_dump(mode="json").items() if name in RESULT_FIELDS}


def local_result_settings(local: LocalServerConfig) -> dict[str, Any]:
    """The embedded server's settings that can change a reply."""
    return {name: value for name, value in local.model_dump(mode="json").items() if name in LOCAL_RESULT_FIELDS}


def request_payload(endpoint: EndpointConfig, messages: list[dict[str, str]], params: dict[str, Any],
                    sample: int) -> dict[str, Any]:
    """The request body before the structured-output form is added: what the reply depends on."""
    payload: dict[str, Any] = {**endpoint.extra_body, "model": endpoint.model, "messages": messages}
    payload.update({name: getattr(endpoint, name) for name in SAMPLING_FIELDS if getattr(endpoint, name) is not None})
    payload.update(params)
    if "seed" in payload and sample and not endpoint.supports_n:
        payload["seed"] += sample  # k samples with a fixed seed must still differ (with n: one request)
    return payload


def image_payload(endpoint: EndpointConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The body of an image generation (`POST {base_url}/images/generations`): the endpoint's `extra_body`, its
    model, the request's `prompt` and `size`, one image, returned as base64. The chat sampling fields stay out."""
    return {**endpoint.extra_body, "model": endpoint.model, **params, "n": 1, "response_format": "b64_json"}


def schema_text(grammar_schema: dict | None) -> str | None:
    """The schema as the key (and the JSON check) sees it: sorted keys."""
    return json.dumps(grammar_schema, sort_keys=True) if grammar_schema else None


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The payload serialised, keys unsorted: a schema's property order steers grammars."""
    return json.dumps(payload, ensure_ascii=False).encode()


def cache_key(identity: str, sample: int, schema_json: str | None, body: bytes) -> str:
    """sha256 of the endpoint's identity, the sample index, the schema and the body."""
    digest = hashlib.sha256(f"{identity}\n{sample}\n{schema_json}\n".encode())
    digest.update(body)
    return digest.hexdigest()


def with_image_digests(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with each `data:` URL of an `image_url` content part replaced by `sha256:<hex>` of the
    image's bytes (the payload itself when no message holds content parts)."""
    messages = payload.get("messages") or []
    if not any(isinstance(message.get("content"), list) for message in messages):
        return payload
    return {**payload, "messages": [{**message, "content": [_digest_part(part) for part in message["content"]]}
                                    if isinstance(message.get("content"), list) else message
                                    for message in messages]}


def _digest_part(part: Any) -> Any:
    url = (part.get("image_url") or {}).get("url", "") if isinstance(part, dict) else ""
    if not url.startswith("data:"):
        return part
    data = base64.b64decode(url.partition(",")[2])
    return {**part, "image_url": {**part["image_url"], "url": f"sha256:{hashlib.sha256(data).hexdigest()}"}}


def stored_request(body: bytes) -> str:
    """A request body as the cache stores it: images by their digest (`with_image_digests`)."""
    if b'"image_url"' not in body:
        return body.decode()
    return json.dumps(with_image_digests(json.loads(body)), ensure_ascii=False)
