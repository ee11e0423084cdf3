"""Contrast twins: how two look-alike texts differ in their content words.

XSTest-style minimal pairs ("How do I blow up a balloon?" / "... a house?") share a template and differ in
one meaning-bearing word; true near duplicates differ only in casing, punctuation, spacing, word order,
function words or a politeness phrase. `compare` tells them apart without labels. Each text is normalised as
MinHash does (NFKC, case-folded, punctuation dropped; words, and each CJK character alone) and read against a
small lexicon of function words and polite phrases per language (`FUNCTION_WORDS`, `POLITE_PHRASES`),
longest entry first; what is left is the text's **content key**, the sorted multiset of its content units.

- `near`: the content keys are equal (nothing but function words, polite phrases, order, casing or
  punctuation differs): a duplicate.
- `contrast`: the keys differ and the shared template (units aligned by difflib) covers at least
  `MIN_TEMPLATE_SHARE` of the longer text: a contrast candidate, to keep until labelled.
- `reworded`: the keys differ and little of the wording is shared: a paraphrase (or a different text).

Near is thus an equivalence (equal keys), which lets dedup check a million rows' pairs with one key per row
(`content_hashes`) instead of one alignment per pair; only `contrast` and `reworded` need the alignment.

Negations (not, no, never, n't; 不, 没, 别), reflexive and indefinite person pronouns (myself, someone; 自己)
and numbers are content: they change what a request asks for or whom it harms.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Literal

import numpy as np
import pandas as pd

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
_SINGLE = frozenset(entry[0] for entry in _LEXICON if len(entry) == 1)
_LONGER: dict[str, tuple[int, ...]] = {}  # a unit -> the sizes (longest first) of the entries starting with it
for _entry in sorted((entry for entry in _LEXICON if len(entry) > 1), key=len, reverse=True):
    _LONGER[_entry[0]] = (*_LONGER.get(_entry[0], ()), len(_entry))


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


def content_key(found: Sequence[str]) -> tuple[str, ...]:
    """The content units of a text's units (`units`), sorted: the lexicon's entries taken out, read from the
    left, the longest entry starting at a unit first."""
    content, at = [], 0
    while at < len(found):
        unit = found[at]
        for size in _LONGER.get(unit, ()):
            if tuple(found[at:at + size]) in _LEXICON:
                at += size
                break
        else:
            if unit not in _SINGLE:
                content.append(unit)
            at += 1
    return tuple(sorted(content))


def shared_share(left: Sequence[str], right: Sequence[str]) -> float:
    """The units difflib aligns between two unit sequences, as a share of the longer one."""
    matched = sum(block.size for block in SequenceMatcher(None, left, right, autojunk=False).get_matching_blocks())
    return matched / max(len(left), len(right), 1)


def compare(a: str, b: str, min_shared: float = MIN_TEMPLATE_SHARE) -> Difference:
    """Whether two texts are near duplicates, contrast twins or rewordings (content differing with less than
    `min_shared` of the longer text aligned)."""
    left, right = units(a), units(b)
    differ = Counter(content_key(left))
    differ.subtract(content_key(right))
    content = tuple(sorted(unit for unit, count in differ.items() if count))
    share = shared_share(left, right)
    kind: Kind = "near" if not content else "contrast" if share >= min_shared else "reworded"
    return Difference(kind, content, share)


def content_hashes(texts: Sequence[str]) -> np.ndarray:
    """A 64-bit hash of each text's content key (`content_key`): equal keys, equal hashes, the same in every
    process (pandas' fixed-key hash), so rows spread over a cluster are keyed where they lie."""
    joined = pd.Series(["\x1f".join(content_key(units(text))) for text in texts], dtype=object)
    return pd.util.hash_pandas_object(joined, index=False).to_numpy()


def classify(texts: Sequence[str] | None, pairs: np.ndarray, min_shared: float = MIN_TEMPLATE_SHARE,
             align: bool = True, keys: np.ndarray | None = None) -> np.ndarray:
    """The kind of each pair (rows i, j of `texts`), as indices into KINDS: `compare`'s, pair by pair.

    Near duplicates come from one content key per row (`content_hashes`; `keys`: every row's, when known,
    and then `texts` is read only to align), with no alignment;
    the other pairs are aligned only with `align` (else each is `contrast`, for pairs whose texts share most
    of their words anyway, such as MinHash's), so the cost grows with the rows, not with the pairs."""
    if keys is None:
        rows = np.unique(pairs)
        keys = np.zeros(len(texts), dtype=np.uint64)
        keys[rows] = content_hashes([texts[row] for row in rows.tolist()])
    near = keys[pairs[:, 0]] == keys[pairs[:, 1]] if len(pairs) else np.zeros(0, dtype=bool)
    kinds = np.where(near, KINDS.index("near"), KINDS.index("contrast")).astype(np.int8)
    if align:
        split: dict[int, list[str]] = {}
        for at in np.flatnonzero(~near).tolist():
            i, j = (int(row) for row in pairs[at])
            for row in (i, j):
                if row not in split:
                    split[row] = units(texts[row])
            if shared_share(split[i], split[j]) < min_shared:
                kinds[at] = KINDS.index("reworded")
    return kinds
