"""Reading a judge's structured reply (`{"verdict": ..., "reason": ...}`), shared by the LLM stages.

A reply that never parsed, or whose verdict is not one the prompt allows, is a judge failure: it is
reported as such (verdict None with the error), never counted as a verdict.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from bsa.pipeline.llm import Response

JUDGE_FAILED = "judge_failed"
OnJudgeFailure = Literal["keep", "reject"]  # keep-and-flag, or reject with reason `judge_failed`
REASON_CHARS = 300


def clip(text: object, limit: int) -> str:
    """`text` as one line of at most `limit` characters."""
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def schema_verdicts(schema: dict | None) -> list[str]:
    """The verdicts a prompt's reply schema allows (`properties.verdict.enum`)."""
    return list(((schema or {}).get("properties", {}).get("verdict") or {}).get("enum", []))


def read_verdict(response: Response, allowed: Collection[str]) -> tuple[str | None, str]:
    """(verdict, reason) of a judge reply; (None, why) when it never parsed into an allowed verdict."""
    if not response.ok or not isinstance(response.parsed, dict):
        return None, clip(response.error or "reply did not parse", REASON_CHARS)
    verdict = str(response.parsed.get("verdict", "")).strip()
    if verdict not in allowed:
        return None, clip(f"verdict {verdict!r} is not one of {sorted(allowed)}", REASON_CHARS)
    return verdict, clip(response.parsed.get("reason", ""), REASON_CHARS)
