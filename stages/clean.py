"""Stage 1 'clean': drop rows whose text is empty, broken, out of length bounds or highly repetitive.

Each dropped row gets the first reason that applies, in this order:
`empty` (nothing but whitespace), `invalid_text` (U+FFFD replacement characters or lone surrogates: bytes
lost in decoding), `mojibake` (text decoded with the wrong codec, as ftfy's detector judges it),
`control_chars` (C0/C1 control characters other than tab and newlines), `too_short` / `too_long` (characters
or tokens outside the bounds of the row's language) and `repetitive` (a character run, or a share of
repeated word n-grams, beyond the configured limits).

Tokens are whitespace-delimited words, except that every Han or kana character is a token of its own
(Chinese and Japanese are not written with spaces); CJK punctuation is not a token. The bounds of a row
come from `per_lang[lang]` over the defaults, where `lang` is the language its source declares or, when it
declares none, `zh` / `ja` for text written mostly in Han characters / with kana (language ID runs later).

Adds columns: `n_chars` (characters of the stripped text), `n_tokens` (tokens as above).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from pydantic import Field

from pipeline.config import Section
from pipeline.stage import StageContext, StageResult, split_by_reason

KANA = "\u3040-\u30ff\u31f0-\u31ff"
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
CJK = KANA + HAN  # scripts written without spaces: one character, one token
CJK_PUNCT = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
_TOKEN = re.compile(f"[{CJK}]|[^\\s{CJK}{CJK_PUNCT}]+")
_HAN_CHAR = re.compile(f"[{HAN}]")
_KANA_CHAR = re.compile(f"[{KANA}]")
_INVALID = re.compile("[\ufffd\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class LengthBounds(Section):
    """Length bounds for one language; a field left unset inherits the stage default."""

    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)


class Config(Section):
    min_chars: int = Field(10, ge=0)
    max_chars: int = Field(2000, ge=1)
    min_tokens: int = Field(3, ge=0)
    max_tokens: int = Field(400, ge=1)
    per_lang: dict[str, LengthBounds] = {
        "zh": LengthBounds(min_chars=5, min_tokens=5, max_tokens=2000),
        "ja": LengthBounds(min_chars=5, min_tokens=5, max_tokens=2000),
    }
    mojibake: bool = True  # detect mis-decoded text with ftfy
    max_char_run: int = Field(15, ge=2)  # the same non-space character more times in a row: repetitive
    ngram: int = Field(3, ge=1)  # size of the token n-grams checked for repetition
    max_repeated_ngram_share: float = Field(0.55, gt=0, le=1)  # share of tokens inside repeated n-grams


@dataclass(frozen=True)
class Bounds:
    min_chars: int
    max_chars: int
    min_tokens: int
    max_tokens: int


def bounds_by_lang(config: Config) -> dict[str | None, Bounds]:
    """The resolved bounds of every configured language, and of any other (key None)."""
    default = Bounds(config.min_chars, config.max_chars, config.min_tokens, config.max_tokens)
    resolved: dict[str | None, Bounds] = {None: default}
    for lang, override in config.per_lang.items():
        resolved[lang] = Bounds(**{**default.__dict__, **override.model_dump(exclude_none=True)})
    return resolved


def tokens(text: str) -> list[str]:
    """Whitespace words, with each Han/kana character a token of its own."""
    return text.split() if text.isascii() else _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """len(tokens(text)), without building the list for non-ASCII text."""
    return len(text.split()) if text.isascii() else _TOKEN.subn("", text)[1]


def script_lang(text: str) -> str | None:
    """`ja` for text with kana, `zh` for text mostly in Han characters, else None."""
    if text.isascii():
        return None
    if _KANA_CHAR.search(text):
        return "ja"
    han = len(_HAN_CHAR.findall(text))
    return "zh" if han * 2 >= len(text) - text.count(" ") else None


def repeated_share(words: Sequence[str], n: int) -> float:
    """Share of tokens inside n-grams seen earlier in the text (scanning left to right, no overlaps)."""
    if len(words) < 2 * n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeated = i = 0
    while i <= len(words) - n:
        gram = tuple(words[i:i + n])
        if gram in seen:
            repeated += n
            i += n
        else:
            seen.add(gram)
            i += 1
    return repeated / len(words)


def mojibake_suspects() -> re.Pattern[str]:
    """The characters without which ftfy's detector cannot fire: a cheap test that skips it for most text.

    Every pattern of `ftfy.badness.BADNESS_RE` needs a character of its categories or one of its literal
    non-ASCII letters; both sets are read from ftfy, so the shortcut follows ftfy's own definition.
    """
    from ftfy.badness import BADNESS_RE, MOJIBAKE_CATEGORIES

    literal = {c for c in BADNESS_RE.pattern if ord(c) > 127}
    return re.compile(f"[{''.join(MOJIBAKE_CATEGORIES.values())}{''.join(sorted(literal))}]")


def is_mojibake(text: str) -> bool:
    """ftfy's judgement: does the text contain character sequences typical of mis-decoded UTF-8?"""
    from ftfy.badness import is_bad

    return is_bad(text)


class Cleaner:
    """Checks one text at a time against a Config; built once per run (compiled patterns, resolved bounds)."""

    def __init__(self, config: Config):
        self.config = config
        self.bounds = bounds_by_lang(config)
        self.char_run = re.compile(f"(\\S)\\1{{{config.max_char_run},}}")
        self.suspect = mojibake_suspects() if config.mojibake else None

    def check(self, text: object, lang: object) -> tuple[str | None, str, int, int]:
        """(reason or None, detail, n_chars, n_tokens) of one text."""
        if not isinstance(text, str) or not text.strip():
            return "empty", "", 0, 0
        text = text.strip()
        n_chars, n_tokens = len(text), count_tokens(text)
        reason, detail = self._encoding_problem(text) if not text.isascii() else (None, "")
        if reason is None:
            reason, detail = self._control_problem(text)
        if reason is None:
            key = lang if isinstance(lang, str) and lang else script_lang(text)
            reason, detail = self._length_problem(n_chars, n_tokens, self.bounds.get(key, self.bounds[None]), key)
        if reason is None:
            reason, detail = self._repetition_problem(text, n_tokens)
        return reason, detail, n_chars, n_tokens

    def _encoding_problem(self, text: str) -> tuple[str | None, str]:
        found = _INVALID.search(text)
        if found:
            return "invalid_text", f"U+{ord(found.group()):04X} at character {found.start()}"
        if self.suspect is not None and self.suspect.search(text) and is_mojibake(text):
            return "mojibake", "ftfy detects mis-decoded text"
        return None, ""

    @staticmethod
    def _control_problem(text: str) -> tuple[str | None, str]:
        found = _CONTROL.search(text)
        return ("control_chars", f"U+{ord(found.group()):04X} at character {found.start()}") if found else (None, "")

    @staticmethod
    def _length_problem(n_chars: int, n_tokens: int, bounds: Bounds, lang: str | None) -> tuple[str | None, str]:
        scope = f" ({lang})" if lang else ""
        if n_chars < bounds.min_chars:
            return "too_short", f"{n_chars} chars < min_chars {bounds.min_chars}{scope}"
        if n_tokens < bounds.min_tokens:
            return "too_short", f"{n_tokens} tokens < min_tokens {bounds.min_tokens}{scope}"
        if n_chars > bounds.max_chars:
            return "too_long", f"{n_chars} chars > max_chars {bounds.max_chars}{scope}"
        if n_tokens > bounds.max_tokens:
            return "too_long", f"{n_tokens} tokens > max_tokens {bounds.max_tokens}{scope}"
        return None, ""

    def _repetition_problem(self, text: str, n_tokens: int) -> tuple[str | None, str]:
        run = self.char_run.search(text)
        if run:
            return "repetitive", f"'{run.group(1)}' repeated {len(run.group())} times"
        # A token inside a repeated n-gram is a repeated token, whose first character is a repeated
        # character: when either count is within the limit, the share is too (the characters are cheaper).
        most = self.config.max_repeated_ngram_share * n_tokens
        folded = text.casefold()
        if not folded.isascii() and len(folded) - len(set(folded)) <= most:
            return None, ""
        words = tokens(folded)
        if len(words) - len(set(words)) <= most:
            return None, ""
        share = repeated_share(words, self.config.ngram)
        if share > self.config.max_repeated_ngram_share:
            return "repetitive", (f"{share:.0%} of tokens in repeated {self.config.ngram}-grams "
                                  f"> {self.config.max_repeated_ngram_share:.0%}")
        return None, ""


def run(records: pd.DataFrame, config: Config, ctx: StageContext) -> StageResult:
    cleaner = Cleaner(config)
    texts = records["text"].tolist()
    langs = records["lang"].tolist() if "lang" in records.columns else [None] * len(texts)
    checked = [cleaner.check(text, lang) for text, lang in zip(texts, langs, strict=True)]
    reasons, details, n_chars, n_tokens = zip(*checked, strict=True) if checked else ((), (), (), ())
    frame = records.assign(n_chars=pd.Series(n_chars, index=records.index, dtype="int64"),
                           n_tokens=pd.Series(n_tokens, index=records.index, dtype="int64"))
    return split_by_reason(frame, pd.Series(reasons, index=records.index, dtype=object),
                           pd.Series(details, index=records.index, dtype=object))
