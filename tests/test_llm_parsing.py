"""Unit tests: reasoning kept apart from the answer, JSON found and validated in reply text, retry timing."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from bsa.pipeline.llm.client import parse_choices, parse_retry_after, retry_delay
from bsa.pipeline.llm.reasoning import reasoning_field, split_reasoning, split_think_tags
from bsa.pipeline.llm.structured import ParseError, extract_json, response_format

VERDICT = {"type": "object", "required": ["verdict", "reason"],
           "properties": {"verdict": {"type": "string", "enum": ["Safe", "Unsafe"]}, "reason": {"type": "string"}}}


# -- reasoning ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "answer", "reasoning", "shape"), [
    ("<think>step 1</think>The answer.", "The answer.", "step 1", "closed"),
    ("  <think>\nstep 1\nstep 2\n</think>\n\nThe answer.\n", "The answer.", "step 1\nstep 2", "closed"),
    ("<think>cut off by max_tokens", "", "cut off by max_tokens", "unterminated"),
    ("the template opened it</think>The answer.", "The answer.", "the template opened it", "close_only"),
    ("Preamble <think>aside</think> and the rest", "Preamble  and the rest", "aside", "closed"),
    ("No reasoning at all.", "No reasoning at all.", None, "none"),
    ("<think></think>Empty thoughts.", "Empty thoughts.", "", "closed"),
])
def test_split_think_tags(text, answer, reasoning, shape):
    assert split_think_tags(text) == (answer, reasoning, shape)


def test_a_reasoning_field_wins_over_tags_and_tags_are_still_removed():
    split = split_reasoning("<think>draft</think>Final.", "the server's reasoning")
    assert (split.content, split.reasoning, split.source) == ("Final.", "the server's reasoning", "field")


def test_sources_of_reasoning():
    assert split_reasoning("<think>t</think>a", None).source == "think_tags"
    assert split_reasoning("plain", None) == split_reasoning("plain", "")
    assert split_reasoning("plain", None).source == "none"


def test_reasoning_field_names():
    assert reasoning_field({"content": "a", "reasoning_content": "r1"}) == "r1"
    assert reasoning_field({"content": "a", "reasoning": "r2"}) == "r2"
    assert reasoning_field({"content": "a", "reasoning_content": "  ", "reasoning": None}) is None


# -- structured output --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    '{"verdict": "Safe", "reason": "harmless"}',
    'Sure! Here is my judgement:\n```json\n{"verdict": "Safe", "reason": "harmless"}\n```\nHope it helps.',
    'My verdict: {"verdict": "Safe", "reason": "harmless"} -- done',
    '{"note": "a draft"} then {"verdict": "Safe", "reason": "harmless"}',
    '{"verdict": "safe ", "reason": "harmless"}',
])
def test_extract_json_finds_the_valid_object(text):
    assert extract_json(text, VERDICT) == {"verdict": "Safe", "reason": "harmless"}


def test_extract_json_keeps_braces_inside_strings():
    text = 'x {"verdict": "Unsafe", "reason": "uses {braces} and \\"quotes\\""} y'
    assert extract_json(text, VERDICT)["reason"] == 'uses {braces} and "quotes"'


@pytest.mark.parametrize(("text", "message"), [
    ("I think it is safe.", "no JSON object"),
    ('{"verdict": "Safe", "reason": "cut', "no JSON object"),
    ('{"verdict": "Maybe", "reason": "unsure"}', "verdict"),
    ('{"verdict": "Safe"}', "'reason' is a required property"),
    ('["Safe", "harmless"]', "no JSON object"),
])
def test_extract_json_rejects_what_does_not_match(text, message):
    with pytest.raises(ParseError, match=message):
        extract_json(text, VERDICT)


def test_enum_spelling_is_fixed_only_when_unambiguous():
    schema = {"type": "object", "properties": {"v": {"enum": ["Yes", "YES"]}}, "required": ["v"]}
    with pytest.raises(ParseError):
        extract_json('{"v": "yes"}', schema)


def test_response_format_modes():
    assert response_format(VERDICT, "json_object_schema") == {"type": "json_object", "schema": VERDICT}
    assert response_format(VERDICT, "json_schema")["json_schema"]["schema"] == VERDICT
    assert response_format(VERDICT, "none") is None


# -- replies and retry timing -------------------------------------------------------------------------------
def test_parse_choices_reads_content_reasoning_and_usage():
    first, second = parse_choices(b'{"model": "m", "choices": [{"message": {"content": "hi", "reasoning_content": '
                                  b'"r"}, "finish_reason": "length"}, {"message": {"content": null}}], '
                                  b'"usage": {"prompt_tokens": 3, "completion_tokens": 1}}')
    assert (first.content, first.reasoning, first.model, first.finish_reason) == ("hi", "r", "m", "length")
    assert first.usage == {"prompt_tokens": 3, "completion_tokens": 1}
    assert (second.content, second.reasoning, second.usage) == ("", None, None)


@pytest.mark.parametrize("body", [b"<html>502</html>", b'{"choices": []}', b'{"choices": [{"text": "x"}]}', b"[]"])
def test_parse_choices_flags_malformed_bodies_as_retryable(body):
    from bsa.pipeline.llm.client import SendError

    with pytest.raises(SendError) as caught:
        parse_choices(body)
    assert caught.value.kind == "malformed" and caught.value.retryable


def test_retry_after_is_honoured_and_backoff_is_bounded():
    assert parse_retry_after(CIMultiDict({"Retry-After": "7"})) == 7.0
    assert parse_retry_after(CIMultiDict({"Retry-After-Ms": "250", "Retry-After": "9"})) == 0.25
    assert parse_retry_after(CIMultiDict({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    assert retry_delay(0, 7.0, base=1.0, cap=60.0) == 7.0
    assert retry_delay(3, 1e9, base=1.0, cap=60.0) == 600.0  # a hostile Retry-After is capped
    delays = [retry_delay(attempt, None, base=0.5, cap=4.0) for attempt in range(10) for _ in range(50)]
    assert min(delays) >= 0.0 and max(delays) <= 4.0
    assert max(retry_delay(1, None, base=0.5, cap=4.0) for _ in range(200)) <= 1.0


def test_the_rate_limiter_waits_once_a_minute_is_full():
    import asyncio

    from bsa.pipeline.llm.client import RateLimiter

    limiter = RateLimiter(requests_per_minute=2, tokens_per_minute=100)
    asyncio.run(limiter.acquire())
    asyncio.run(limiter.acquire())
    now = limiter._starts[-1]
    assert limiter._wait_needed(now) > 59  # a third request waits for the first to leave the window
    limiter._prune(now + 60.5)
    assert limiter._wait_needed(now + 60.5) == 0
    limiter._starts.clear()
    limiter.record_tokens(150)
    spent_at = limiter._tokens[-1][0]
    assert limiter._wait_needed(spent_at) > 59  # the tokens of the last minute are spent
