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

The checks run on the whole batch at once: the stripped texts become one array of code points, a lookup
table gives each code point its character classes, and counts per row come from numpy. Only rows that a
cheap bound cannot clear reach per-row Python (ftfy's detector, the exact n-gram count).

Adds columns: `n_chars` (characters of the stripped text), `n_tokens` (tokens as above).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import Field

from bsa.pipeline.config import Section
from bsa.pipeline.stage import Stage, StageContext, per_batch, reject
from bsa.text.charclass import (
    CASED_LIMIT,
    CJK,
    CJK_PUNCT,
    CONTROL_BIT,
    HAN_BIT,
    INVALID_BIT,
    KANA_BIT,
    PUNCT,
    SPACE,
    SUSPECT,
    Batch,
    casefold_initials,
    token_starts,
)

_TOKEN = re.compile(f"[{CJK}]|[^\\s{CJK}{CJK_PUNCT}]+")

Reject = Callable[[int, str, str], None]  # (row, reason, detail): records the row's first problem


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


def script_lang(text: str) -> str | None:
    """`ja` for text with kana, `zh` for text mostly in Han characters, else None."""
    return _script_langs(Batch.of([text]))[0]


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


def is_mojibake(text: str) -> bool:
    """ftfy's judgement: does the text contain character sequences typical of mis-decoded UTF-8?"""
    from ftfy.badness import is_bad

    return is_bad(text)


# -- the checks, on a Batch (bsa/text/charclass.py) of texts ------------------------------------------------

def _script_langs(batch: Batch) -> list[str | None]:
    """`script_lang` of every row of a batch."""
    non_ascii = batch.per_row(batch.cps > 127)
    kana = batch.per_row((batch.classes & KANA_BIT) != 0)
    han = batch.per_row((batch.classes & HAN_BIT) != 0)
    spaces = batch.per_row(batch.cps == 32)
    zh = han * 2 >= batch.lengths - spaces
    return [None if not a else "ja" if k else "zh" if z else None
            for a, k, z in zip(non_ascii, kana, zh, strict=True)]


class Cleaner:
    """Checks texts against a Config, a batch at a time; built once per run (resolved bounds, patterns)."""

    def __init__(self, config: Config):
        self.config = config
        self.bounds = bounds_by_lang(config)

    def check(self, text: object, lang: object) -> tuple[str | None, str, int, int]:
        """(reason or None, detail, n_chars, n_tokens) of one text."""
        reasons, details, n_chars, n_tokens = self.check_all([text], [lang])
        return reasons[0], details[0], int(n_chars[0]), int(n_tokens[0])

    def check_all(self, texts: Sequence[object], langs: Sequence[object]
                  ) -> tuple[list[str | None], list[str], np.ndarray, np.ndarray]:
        """Reason (or None), detail, n_chars and n_tokens of every text."""
        stripped = [t.strip() if isinstance(t, str) else "" for t in texts]
        batch = Batch.of(stripped)
        n_chars = batch.lengths
        cjk = (batch.classes & (KANA_BIT | HAN_BIT)) != 0
        starts = token_starts(cjk, (batch.classes & (SPACE | PUNCT)) != 0)  # CJK punctuation is not a token
        n_tokens = batch.per_row(starts)
        reasons: list[str | None] = [None] * len(stripped)
        details = [""] * len(stripped)

        def reject(row: int, reason: str, detail: str = "") -> None:
            if reasons[row] is None:
                reasons[row], details[row] = reason, detail

        for row in np.flatnonzero(n_chars == 0):
            reject(row, "empty", "")
        for row, at in batch.first((batch.classes & INVALID_BIT) != 0).items():
            reject(row, "invalid_text", f"U+{batch.cps[batch.start[row] + at]:04X} at character {at}")
        if self.config.mojibake:
            for row in batch.first((batch.classes & SUSPECT) != 0):
                if reasons[row] is None and is_mojibake(stripped[row]):
                    reject(row, "mojibake", "ftfy detects mis-decoded text")
        for row, at in batch.first((batch.classes & CONTROL_BIT) != 0).items():
            reject(row, "control_chars", f"U+{batch.cps[batch.start[row] + at]:04X} at character {at}")
        self._check_lengths(batch, langs, n_chars, n_tokens, reject)
        self._check_char_runs(batch, reject)
        self._check_ngrams(batch, starts, n_tokens, reasons, reject)
        return reasons, details, n_chars, n_tokens

    def _check_lengths(self, batch: Batch, langs: Sequence[object], n_chars: np.ndarray,
                       n_tokens: np.ndarray, reject: Reject) -> None:
        keys = [lang if isinstance(lang, str) and lang else None for lang in langs]
        if any(key is None for key in keys):
            scripts = _script_langs(batch)
            keys = [key if key is not None else script for key, script in zip(keys, scripts, strict=True)]
        codes, uniques = pd.factorize(pd.Series(keys, dtype=object))
        table = [self.bounds.get(key, self.bounds[None]) for key in uniques] + [self.bounds[None]]
        limits = {name: np.array([getattr(b, name) for b in table], dtype=np.int64)[codes]
                  for name in ("min_chars", "max_chars", "min_tokens", "max_tokens")}
        out = ((n_chars < limits["min_chars"]) | (n_tokens < limits["min_tokens"])
               | (n_chars > limits["max_chars"]) | (n_tokens > limits["max_tokens"]))
        for row in np.flatnonzero(out):
            problem = _length_problem(int(n_chars[row]), int(n_tokens[row]), table[codes[row]], keys[row])
            if problem is not None:
                reject(row, *problem)

    def _check_char_runs(self, batch: Batch, reject: Reject) -> None:
        """A run of the same non-space character longer than `max_char_run`."""
        cps, limit = batch.cps, self.config.max_char_run
        # covered[i]: the `span` characters after position i all equal it; the span doubles up to the limit
        covered, span = cps[1:] == cps[:-1], 1
        while span < limit and len(covered):
            step = min(span, limit - span)
            covered, span = covered[:-step] & covered[step:], span + step
        if not len(covered):
            return
        long = np.zeros(len(cps), dtype=bool)
        long[:len(covered)] = covered & ((batch.classes[:len(covered)] & SPACE) == 0)
        for row, at in batch.first(long).items():
            position = int(batch.start[row] + at)
            end = position + 1
            while end < len(cps) and cps[end] == cps[position]:
                end += 1
            reject(row, "repetitive", f"'{chr(cps[position])}' repeated {end - position} times")

    def _check_ngrams(self, batch: Batch, starts: np.ndarray, n_tokens: np.ndarray,
                      reasons: list[str | None], reject: Reject) -> None:
        """A share of tokens inside repeated n-grams above the limit.

        A token inside a repeated n-gram repeats an earlier token, so its (casefolded) first character
        repeats an earlier token's: rows where tokens minus distinct first characters is within the limit
        cannot exceed it and skip the exact count.
        """
        most = self.config.max_repeated_ngram_share * n_tokens
        positions = np.flatnonzero(starts)
        initials = batch.cps[positions]
        cased = initials < CASED_LIMIT
        initials[cased] = casefold_initials()[initials[cased]]
        rows = np.repeat(np.arange(len(n_tokens), dtype=np.int64), n_tokens)  # token starts come in row order
        pairs = np.sort((rows << 21) | initials)
        new_pair = np.concatenate(([True], pairs[1:] != pairs[:-1])) if len(pairs) else np.zeros(0, dtype=bool)
        distinct = np.bincount(pairs[new_pair] >> 21, minlength=len(n_tokens))
        for row in np.flatnonzero(n_tokens - distinct > most):
            if reasons[row] is not None:
                continue
            words = tokens(batch.texts[row].casefold())
            if len(words) - len(set(words)) <= most[row]:
                continue
            share = repeated_share(words, self.config.ngram)
            if share > self.config.max_repeated_ngram_share:
                reject(row, "repetitive", f"{share:.0%} of tokens in repeated {self.config.ngram}-grams "
                                          f"> {self.config.max_repeated_ngram_share:.0%}")


def _length_problem(n_chars: int, n_tokens: int, bounds: Bounds, lang: str | None) -> tuple[str, str] | None:
    scope = f" ({lang})" if lang else ""
    if n_chars < bounds.min_chars:
        return "too_short", f"{n_chars} chars < min_chars {bounds.min_chars}{scope}"
    if n_tokens < bounds.min_tokens:
        return "too_short", f"{n_tokens} tokens < min_tokens {bounds.min_tokens}{scope}"
    if n_chars > bounds.max_chars:
        return "too_long", f"{n_chars} chars > max_chars {bounds.max_chars}{scope}"
    if n_tokens > bounds.max_tokens:
        return "too_long", f"{n_tokens} tokens > max_tokens {bounds.max_tokens}{scope}"
    return None


def check(records: pd.DataFrame, config: Config, ctx: StageContext) -> pd.DataFrame:
    """Every row's first problem (if any), with `n_chars` and `n_tokens`: row by row."""
    texts = records["text"].tolist()
    langs = records["lang"].tolist() if "lang" in records.columns else [None] * len(texts)
    reasons, details, n_chars, n_tokens = Cleaner(config).check_all(texts, langs)
    frame = records.assign(n_chars=pd.Series(n_chars, index=records.index, dtype="int64"),
                           n_tokens=pd.Series(n_tokens, index=records.index, dtype="int64"))
    return reject(frame, pd.Series(reasons, index=records.index, dtype=object),
                  pd.Series(details, index=records.index, dtype=object))


STAGE = Stage("clean", Config, (per_batch(check),), needs=("text",), adds=("n_chars", "n_tokens"))
