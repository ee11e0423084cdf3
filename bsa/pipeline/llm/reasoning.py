"""Keep a model's reasoning apart from its answer.

Servers expose reasoning in three ways: a separate message field (`reasoning_content` for DeepSeek and
vLLM, `reasoning` for Ollama and OpenRouter), `<think>...</think>` inside the content (Qwen, R1 distills),
or not at all. R1-style chat templates open the `<think>` block themselves, so a reply may hold only the
closing tag; a reply cut off by `max_tokens` may hold only the opening one.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "<think>", "</think>"
REASONING_FIELDS = ("reasoning_content", "reasoning")


@dataclass(frozen=True)
class Split:
    """An answer with its reasoning set apart, and where the reasoning came from."""

    content: str
    reasoning: str | None
    source: str  # "field" | "think_tags" | "none"
    shape: str = "none"  # "field" | "closed" | "close_only" (the template opened it) | "unterminated" | "none"


def split_think_tags(text: str) -> tuple[str, str | None, str]:
    """(answer, reasoning, shape) from content that may hold a `<think>` block, terminated or not."""
    start = text.find(OPEN)
    end = text.find(CLOSE, start + len(OPEN) if start >= 0 else 0)
    if start < 0 and end < 0:
        return text.strip(), None, "none"
    if start < 0:  # the template opened the block: everything before the closing tag is reasoning
        return text[end + len(CLOSE):].strip(), text[:end].strip(), "close_only"
    if end < 0:  # unterminated: the model never finished thinking
        return text[:start].strip(), text[start + len(OPEN):].strip(), "unterminated"
    answer = (text[:start] + text[end + len(CLOSE):]).strip()
    return answer, text[start + len(OPEN):end].strip(), "closed"


def split_reasoning(content: str, field: str | None) -> Split:
    """Answer and reasoning of a reply: the reasoning field when the server gave one, else think tags."""
    answer, tagged, shape = split_think_tags(content)
    if field:
        return Split(answer, field.strip(), "field", "field")
    if tagged is not None:
        return Split(answer, tagged, "think_tags", shape)
    return Split(answer, None, "none", "none")


def reasoning_field(message: dict) -> str | None:
    """The server's separate reasoning text, if any."""
    for name in REASONING_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None
