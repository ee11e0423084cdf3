"""Character classes of every code point, for stages that work on whole batches of text at once.

A batch of texts becomes one numpy array of code points (`code_points`); `char_classes()[cps]` gives each its
class bits, read from the same regular expressions the stages define (`\\s`, `\\w`, `\\d`, the CJK ranges,
control and replacement characters, ftfy's mojibake characters), so numpy and `re` agree by construction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

KANA = "\u3040-\u30ff\u31f0-\u31ff"
HANGUL = "\uac00-\ud7af"  # syllables (Korean is written with spaces: not in CJK below)
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
CJK = KANA + HAN  # scripts written without spaces: one character, one token
CJK_PUNCT = "\u3000-\u303f\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65"
INVALID = "\ufffd\ud800-\udfff"  # what a lossy decode leaves behind
CONTROL = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"  # C0 and C1 controls but tab, newline and carriage return

# character classes, one bit each, in the lookup table of every code point (`char_classes`)
SPACE, KANA_BIT, HAN_BIT, PUNCT, INVALID_BIT, CONTROL_BIT, SUSPECT, WORD, DIGIT = (1 << i for i in range(9))
CASED_LIMIT = 0x20000  # no code point from here on has a case
CHUNK_ROWS = 10_000  # rows per batch: small enough that numpy's temporaries stay in cache and on the heap


def mojibake_suspects() -> re.Pattern[str]:
    """The characters without which ftfy's detector cannot fire: a cheap test that skips it for most text.

    Every pattern of `ftfy.badness.BADNESS_RE` needs a character of its categories or one of its literal
    non-ASCII letters; both sets are read from ftfy, so the shortcut follows ftfy's own definition.
    """
    from ftfy.badness import BADNESS_RE, MOJIBAKE_CATEGORIES

    literal = {c for c in BADNESS_RE.pattern if ord(c) > 127}
    return re.compile(f"[{''.join(MOJIBAKE_CATEGORIES.values())}{''.join(sorted(literal))}]")


def code_points(text: str) -> np.ndarray:
    """The text as an array of code points (lone surrogates kept)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@lru_cache(maxsize=1)
def char_classes() -> np.ndarray:
    """A table of the class bits of every code point, built from the same patterns as the per-text checks."""
    every_char = "".join(map(chr, range(0x110000)))
    table = np.zeros(0x110000, dtype=np.uint16)
    for bit, pattern in [(SPACE, r"\s"), (KANA_BIT, f"[{KANA}]"), (HAN_BIT, f"[{HAN}]"),
                         (PUNCT, f"[{CJK_PUNCT}]"), (INVALID_BIT, f"[{INVALID}]"), (CONTROL_BIT, f"[{CONTROL}]"),
                         (SUSPECT, mojibake_suspects().pattern), (WORD, r"\w"), (DIGIT, r"\d")]:
        table[code_points("".join(re.findall(pattern, every_char)))] |= bit
    return table


@lru_cache(maxsize=1)
def casefold_initials() -> np.ndarray:
    """The first code point of each character's casefold, for code points below U+20000 (none above has case)."""
    return np.array([ord(chr(c).casefold()[0]) for c in range(CASED_LIMIT)], dtype=np.uint32)


@dataclass
class Batch:
    """Texts joined into one code point array, a newline after each (so no run or token crosses rows)."""

    texts: list[str]
    lengths: np.ndarray  # characters of each text
    cps: np.ndarray  # code points
    classes: np.ndarray  # class bits of each code point
    start: np.ndarray  # offset of each text's first code point

    @classmethod
    def of(cls, texts: list[str]) -> Batch:
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        cps = code_points("".join(f"{t}\n" for t in texts))
        return cls(texts, lengths, cps, char_classes()[cps], np.cumsum(lengths + 1) - (lengths + 1))

    def per_row(self, mask: np.ndarray) -> np.ndarray:
        """How many positions of each text the mask selects."""
        edges = np.append(self.start, len(self.cps))
        return np.diff(np.searchsorted(np.flatnonzero(mask), edges)).astype(np.int64)

    def first(self, mask: np.ndarray) -> dict[int, int]:
        """Text -> offset (within it) of the first position the mask selects, for the texts it selects."""
        positions = np.flatnonzero(mask)
        rows = np.searchsorted(self.start, positions, side="right") - 1
        firsts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1]))) if len(rows) else rows
        return {int(rows[i]): int(positions[i] - self.start[rows[i]]) for i in firsts}


def token_starts(alone: np.ndarray, separator: np.ndarray) -> np.ndarray:
    """Positions where a token starts: every character that stands alone, and the first of every run of
    characters that are neither alone nor separators."""
    word = ~separator & ~alone
    return alone | (word & ~np.concatenate(([False], word[:-1])))
