"""Contrast twins: how two look-alike texts differ, once their tokens are aligned.

XSTest-style minimal pairs ("How do I blow up a balloon?" / "... a house?") share a template and differ in
one meaning-bearing word; true near duplicates differ only in casing, punctuation, spacing, function words
or a politeness phrase. `compare` tells them apart without labels: both texts are normalised as MinHash
does (NFKC, case-folded, punctuation dropped; words, and each CJK character alone), aligned with difflib, and
the units one side has and the other lacks are read against a small lexicon of function words and polite
phrases per language (`FUNCTION_WORDS`, `POLITE_PHRASES`). Differing runs of CJK characters are segmented
against that lexicon, longest entry first. A unit that moved (present on both sides, elsewhere) is no
difference.

- `near`: nothing but function words and polite phrases differs: a duplicate.
- `contrast`: a content word is substituted, inserted or deleted and the shared template (aligned units)
  covers at least `MIN_TEMPLATE_SHARE` of the longer text: a contrast candidate, to keep until labelled.
- `reworded`: content differs and little of the wording is shared: a paraphrase (or a different text).

Negations (not, no, never, n't; 不, 没, 别), reflexive and indefinite person pronouns (myself, someone; 自己)
and numbers are content: they change what a request asks for or whom it harms.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from cydifflib import SequenceMatcher

from bsa.text.charclass import CJK, HANGUL

TWINS = "contrast_twins"  # dedup: a kept row's contrast twins (JSON list of ids)
CONFIRMED = "contrast_confirmed"  # relevance: the twins whose labels differ from the row's (JSON list of ids)
Kind = Literal["near", "contrast", "reworded"]
KINDS: tuple[Kind, ...] = ("near", "contrast", "reworded")
MIN_TEMPLATE_SHARE = 0.5  # aligned units / units of the longer text: at or above it, a content edit is a twin

SAME_WORD = {"somebody": "someone", "anybody": "anyone", "everybody": "everyone"}  # spellings of one word
_UNIT = re.compile(f"[{CJK}{HANGUL}]|[^\\W{CJK}{HANGUL}]+")
_CJK_UNIT = re.compile(f"[{CJK}{HANGUL}]")

FUNCTION_WORDS: dict[str, str] = {  # per language, separated by white space
    "en": """
        a an the this that these those some any each every all both either such another other own
        what which whose who whom whatever whichever how where when why whether if then than so as
        i me my mine you your yours he him his she her hers it its we us our ours they them their theirs
        one ones something anything everything somewhere anywhere
        and or but yet because while though although also too either
        of to in on at by for from with into onto about over under up down out off through across
        along around near via per upon after before during since until till toward towards between among
        be am is are was were been being do does did doing have has had having get gets got
        can could may might must shall should will would
        s ll re ve d m
        very really just quite rather even still only actually basically exactly simply perhaps maybe
        probably possibly ever here there now again much many more most lot lots bit
        please kindly thanks thank hey hi hello dear ok okay oh well
        let lets tell know show explain
        write give provide create generate develop describe outline illustrate teach instruct list
        compose draft suggest offer detail detailed details tutorial guide guidance instructions
        instruction step steps tips advice way ways method methods best
    """,
    "zh": """
        的 地 得 了 着 过 吗 呢 吧 啊 呀 哦 嘛 么 啦 呗 哈
        是 在 有 我 你 您 他 她 它 我们 你们 他们 她们 它们 咱们 人家
        这 那 这个 那个 这些 那些 这样 那样 这么 那么 此 其 之 该
        一 个 一个 一下 一些 些 点 一点 一种 种
        和 与 及 以及 或 或者 还是 而 且 并 并且 但 但是 可是 然后 所以 因为 如果 就 也 都 还 又 再 才
        很 太 非常 特别 比较 更 真 真的 到底 究竟
        把 被 给 对 从 向 往 于 以 为 为了 关于 跟 同 让
        怎么 怎样 怎么样 如何 什么 为什么 为何 哪 哪里 哪儿 哪些 哪个 谁 多少 几
        能 能够 可以 可 会 要 想 应该 应当 需要
        请 请问 麻烦 问 问一下 请教 请教一下 你好 您好 谢谢 多谢 急 在线等 告诉 知道
        写 给出 提供 介绍 说明 解释 列出 教 教程 指南 步骤 详细 方法 办法 篇 份 条
    """,
}
POLITE_PHRASES: dict[str, tuple[str, ...]] = {  # several words, matched whole (each word alone may be content)
    "en": ("quick question", "can you tell me", "could you tell me", "i need help", "i have a question",
           "thank you", "thanks in advance", "sorry to bother you", "i was wondering"),
    "zh": ("麻烦问一下", "想请教一下", "请告诉我", "我想知道", "打扰一下"),
}
_LEXICON: frozenset[tuple[str, ...]] = frozenset(
    [tuple(word) if _CJK_UNIT.match(word) else (word,) for words in FUNCTION_WORDS.values() for word in words.split()]
    + [tuple(_UNIT.findall(phrase)) for phrases in POLITE_PHRASES.values() for phrase in phrases])
_LONGEST = max(len(entry) for entry in _LEXICON)


def is_function_word(word: str) -> bool:
    """Whether a word (a CJK word as a whole) is in the lexicon of function words and polite phrases."""
    found = units(word)
    if not found:
        return False
    return tuple(found) in _LEXICON if _CJK_UNIT.match(found[0]) else all((unit,) in _LEXICON for unit in found)


@dataclass(frozen=True)
class Difference:
    """How text b differs from text a."""

    kind: Kind
    content: tuple[str, ...]  # content units one text has and the other lacks
    shared: float  # aligned units / units of the longer text


def units(text: str) -> list[str]:
    """The normalised units of a text: NFKC, case-folded, punctuation dropped; words, and CJK characters alone."""
    return [SAME_WORD.get(unit, unit) for unit in _UNIT.findall(unicodedata.normalize("NFKC", text).casefold())]


def _pieces(run: Sequence[str]) -> list[tuple[str, ...]]:
    """A differing run split into lexicon entries (longest first) and single units outside the lexicon."""
    pieces, at = [], 0
    while at < len(run):
        for size in range(min(_LONGEST, len(run) - at), 0, -1):
            if tuple(run[at:at + size]) in _LEXICON or size == 1:
                pieces.append(tuple(run[at:at + size]))
                at += size
                break
    return pieces


def compare(a: str, b: str, min_shared: float = MIN_TEMPLATE_SHARE) -> Difference:
    """Align two texts and say whether they are near duplicates, contrast twins or rewordings (a content
    edit with less than `min_shared` of the longer text aligned)."""
    return compare_units(units(a), units(b), min_shared)


def compare_units(left: Sequence[str], right: Sequence[str], min_shared: float = MIN_TEMPLATE_SHARE) -> Difference:
    """`compare` on texts already split into their normalised units (`units`)."""
    matcher = SequenceMatcher(None, left, right, autojunk=False)
    gone: Counter[tuple[str, ...]] = Counter()
    added: Counter[tuple[str, ...]] = Counter()
    shared = 0
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            shared += i2 - i1
        else:
            gone.update(_pieces(left[i1:i2]))
            added.update(_pieces(right[j1:j2]))
    gone, added = gone - added, added - gone  # a unit that only moved is no difference
    content = tuple(sorted({"".join(p) if _CJK_UNIT.match(p[0]) else " ".join(p)
                            for p in (gone + added) if p not in _LEXICON}))
    share = shared / max(len(left), len(right), 1)
    kind: Kind = "near" if not content else "contrast" if share >= min_shared else "reworded"
    return Difference(kind, content, share)


def classify(texts: Sequence[str], pairs: np.ndarray, min_shared: float = MIN_TEMPLATE_SHARE) -> np.ndarray:
    """The kind of each pair (rows i, j of `texts`), as indices into KINDS.

    The same as `compare` pair by pair, faster on large pools: each row is split into units once, and pairs
    whose units are equal are near duplicates without an alignment (no memo of pairs: their number can grow
    with the square of a pool's copies of one text)."""
    split = {row: tuple(units(texts[row])) for row in np.unique(pairs).tolist()}
    kinds = np.full(len(pairs), KINDS.index("near"), dtype=np.int8)
    for at, (i, j) in enumerate(pairs.tolist()):
        if split[i] != split[j]:
            kinds[at] = KINDS.index(compare_units(split[i], split[j], min_shared).kind)
    return kinds
