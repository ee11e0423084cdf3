"""The code point class table agrees with the regular expressions it is built from, and with Python's casefold."""

from __future__ import annotations

import re

import numpy as np

from bsa.text.charclass import (
    CASED_LIMIT,
    CJK_PUNCT,
    CONTROL,
    CONTROL_BIT,
    DIGIT,
    HAN,
    HAN_BIT,
    INVALID,
    INVALID_BIT,
    KANA,
    KANA_BIT,
    PUNCT,
    SPACE,
    SUSPECT,
    WORD,
    casefold_initials,
    char_classes,
    code_points,
    mojibake_suspects,
)

SAMPLE = ("Hello, wörld_1 ２ ٣ \t\n\x0b\x1c\x85\xa0\u2028\u3000 東京でお茶 你好！ＡＢ「」\ufffd\ud800\x00\x1b\x7f\x9f"
          "â€™ Ã© ½ 😀 𠀀 ǅ ß İ Σ")


def test_code_points_keep_every_character():
    cps = code_points(SAMPLE)
    assert len(cps) == len(SAMPLE)
    assert "".join(map(chr, cps)) == SAMPLE


def test_table_bits_match_the_patterns():
    table = char_classes()
    checks = [(SPACE, r"\s"), (WORD, r"\w"), (DIGIT, r"\d"), (KANA_BIT, f"[{KANA}]"), (HAN_BIT, f"[{HAN}]"),
              (PUNCT, f"[{CJK_PUNCT}]"), (INVALID_BIT, f"[{INVALID}]"), (CONTROL_BIT, f"[{CONTROL}]"),
              (SUSPECT, mojibake_suspects().pattern)]
    for char in SAMPLE:
        bits = int(table[ord(char)])
        for bit, pattern in checks:
            assert bool(bits & bit) == bool(re.fullmatch(pattern, char)), (char, pattern)


def test_casefold_initials_cover_every_cased_code_point():
    initials = casefold_initials()
    assert len(initials) == CASED_LIMIT
    assert chr(initials[ord("A")]) == "a" and chr(initials[ord("ß")]) == "s" and chr(initials[ord("Σ")]) == "σ"
    # no code point from CASED_LIMIT on changes under casefold, so the table needs none of them
    above = np.arange(CASED_LIMIT, 0x110000, dtype=np.uint32)
    text = code_points("".join(map(chr, above)))
    assert "".join(map(chr, text)).casefold() == "".join(map(chr, text))
