"""Structured output: ask the server for JSON matching a schema where it can, then find, repair lightly and
validate the JSON object in the reply text (servers without constrained decoding wrap it in prose or fences).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

_DECODER = json.JSONDecoder(strict=False)  # raw newlines inside strings are common in model replies
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


class ParseError(ValueError):
    """The reply holds no JSON object matching the schema."""


# Length and pattern bounds turn into huge grammars in llama.cpp: measured here, one judge reply with
# `maxLength: 160` on its reason took 125 s (0.45 tokens/s) against 0.5 s without it. They are hints for the
# prompt's author, not for the decoder: `max_tokens` bounds a reply's length.
_GRAMMAR_UNFRIENDLY = frozenset({"minLength", "maxLength", "pattern", "format"})


def grammar_schema(schema: Any) -> Any:
    """The schema without the keywords that make constrained decoding slow (see above)."""
    if isinstance(schema, dict):
        return {k: grammar_schema(v) for k, v in schema.items() if k not in _GRAMMAR_UNFRIENDLY}
    if isinstance(schema, list):
        return [grammar_schema(v) for v in schema]
    return schema


def stop_after_object(schema: dict) -> list[str] | None:
    """Stop sequences ending a grammar-constrained reply right after its object closes.

    llama.cpp's JSON grammar lets up to 20 whitespace characters follow the closing brace; a model that
    wants to go on writing emits them one at a time, each through the grammar's slow full-vocabulary path
    (measured here: 117 s for 37 tokens, 3 s a token, against 1-2 s for the whole reply without them).
    Only for flat objects, where `}` followed by a newline can only be the end.
    """
    nested = any(p.get("type") in ("object", "array") for p in schema.get("properties", {}).values())
    return None if nested else ["}\n", "}\r", "}\t"]


# The ways of asking a server for JSON, and what to try next when it rejects one with a 400 (`auto` starts
# from json_schema): json_schema (OpenAI, vLLM, SGLang, llama-server), json_object_schema (llama.cpp's
# `{"type": "json_object", "schema": ...}`), json_object (JSON mode without a schema), none (prompt only;
# the reply's JSON is found and validated all the same).
FALLBACK = {"json_schema": "json_object", "json_object_schema": "json_object", "json_object": "none"}
CONSTRAINED = frozenset({"json_schema", "json_object_schema"})  # decoding follows the schema's grammar
_REJECTS_FORMAT = re.compile(r"response_format|json_schema|json_object|structured|schema|grammar", re.IGNORECASE)


def first_form(setting: str) -> str:
    """The form to start from for an endpoint's `structured_output` setting."""
    return "json_schema" if setting == "auto" else setting


def rejects_response_format(status: int, body: str) -> bool:
    """Whether an error reply refuses the request's `response_format` (not the request as a whole)."""
    return status in (400, 422) and bool(_REJECTS_FORMAT.search(body))


def response_format(schema: dict, form: str) -> dict | None:
    """The `response_format` body field for a form (None: prompt only). Length bounds are never sent."""
    if form == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": grammar_schema(schema)}}
    if form == "json_object_schema":
        return {"type": "json_object", "schema": grammar_schema(schema)}
    if form == "json_object":
        return {"type": "json_object"}
    return None


@lru_cache(maxsize=64)
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _candidates(text: str) -> Iterator[dict]:
    """JSON objects in the text, lazily: the whole text, fenced blocks, then each outermost `{...}`, then
    the text with its closing brace restored (a reply cut by the `}` stop sequence, see `stop_after_object`)."""
    closed = text + "}" if text.startswith("{") and not text.endswith("}") else text
    for chunk in (text, *_FENCE.findall(text), closed):
        try:
            value = json.loads(chunk, strict=False)
        except ValueError:
            continue
        if isinstance(value, dict):
            yield value
    position = text.find("{")
    while position >= 0:
        try:
            value, end = _DECODER.raw_decode(text, position)
        except ValueError:
            position = text.find("{", position + 1)
            continue
        if isinstance(value, dict):
            yield value
        position = text.find("{", end)


def _canonical_enums(value: dict, schema: dict) -> dict:
    """Top-level string enum values matched case- and space-insensitively to their canonical spelling."""
    fixed = dict(value)
    for name, spec in (schema.get("properties") or {}).items():
        options = spec.get("enum") if isinstance(spec, dict) else None
        given = fixed.get(name)
        if not options or not isinstance(given, str) or given in options:
            continue
        matches = [o for o in options if isinstance(o, str) and o.casefold() == given.strip().casefold()]
        if len(matches) == 1:
            fixed[name] = matches[0]
    return fixed


def extract_json(text: str, schema: dict, schema_json: str | None = None) -> dict:
    """The first JSON object in `text` that validates against `schema` (raises ParseError otherwise)."""
    validator = _validator(schema_json or json.dumps(grammar_schema(schema), sort_keys=True))
    first_error = None
    for candidate in _candidates(text.strip()):
        candidate = _canonical_enums(candidate, schema)
        error = best_match(validator.iter_errors(candidate))
        if error is None:
            return candidate
        first_error = first_error or error
    if first_error is None:
        raise ParseError("no JSON object in the reply")
    where = "/".join(str(p) for p in first_error.absolute_path) or "(root)"
    raise ParseError(f"JSON does not match the schema at {where}: {first_error.message}")
