"""Stage 1 'clean': every drop reason fires on crafted text, clean text passes, CJK counts by characters."""

from __future__ import annotations

import pandas as pd
import pytest

from bsa.pipeline.executor import run_local
from bsa.pipeline.prompts import PromptLoader
from bsa.pipeline.stage import StageContext
from bsa.pipeline.taxonomy import Taxonomy
from bsa.project import load_config
from bsa.stages import clean
from bsa.stages.clean import Cleaner, Config, repeated_share, script_lang, tokens

CLEAN_TEXTS = [
    "How do I kill a Python process that hangs?",
    "Write a short poem about the first snow of winter.",
    "怎样在家里做一份简单的番茄炒蛋？",
    "東京でおすすめの公園を教えてください。",
    "Café owners in Zürich say the crème brûlée sells out by noon.",  # accents are not mojibake
    "Write a poem about cats and a poem about dogs.",  # one repeated phrase is not repetitive
]


def context() -> StageContext:
    config = load_config()
    return StageContext("clean", config, Taxonomy.load(config.taxonomy), PromptLoader("en"), show_progress=False)


def run_clean(texts: list[object], langs: list[object] | None = None, batch_rows: int = 10_000, **options):
    records = pd.DataFrame({"id": [str(i) for i in range(len(texts))], "text": texts,
                            "lang": langs or [None] * len(texts)})
    return run_local(clean.STAGE, records, Config(**options), context(), batch_rows=batch_rows)


def reason_of(text: object, lang: str | None = None, **options) -> str | None:
    return Cleaner(Config(**options)).check(text, lang)[0]


def test_clean_texts_pass_with_counts():
    result = run_clean(CLEAN_TEXTS)
    assert result.rejected.empty
    assert list(result.kept["n_chars"]) == [len(t) for t in CLEAN_TEXTS]
    assert result.kept["n_tokens"].iloc[0] == 9


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("   \n\t ", "empty"),
    (None, "empty"),
    ("Where can I buy a \ufffd\ufffd charger for my phone?", "invalid_text"),
    ("The café serves crème brûlée every day.".encode().decode("latin-1"), "mojibake"),
    ("Donâ€™t forget to bring your umbrella tomorrow.", "mojibake"),
    ("怎样在家里做番茄炒蛋？".encode().decode("cp1252", errors="ignore"), "mojibake"),
    ("How do I reset my\x00 router password?", "control_chars"),
    ("Explain the rules of\x1b[31m football to me.", "control_chars"),
    ("Hi there", "too_short"),  # 8 characters
    ("Hello there!!", "too_short"),  # 2 tokens
    ("go " * 450, "too_long"),  # 450 tokens
    ("x" * 1999 + " y z", "too_long"),
    ("Please help me right now!!!!!!!!!!!!!!!!!!!!", "repetitive"),
    ("buy now buy now buy now buy now buy now", "repetitive"),
    ("请帮我请帮我请帮我请帮我请帮我", "repetitive"),
])
def test_each_reason_fires(text, reason):
    assert reason_of(text) == reason


def test_a_batch_gives_each_row_what_it_gets_alone():
    texts = [*CLEAN_TEXTS, "", None, "Please help me right now!!!!!!!!!!!!!!!!!!!!", "Help me " + "a" * 16 + " please", "Help me " + "a" * 15 + " please",
             "buy now buy now buy now buy now buy now", "How do I reset my\x00 router password?",
             "Donâ€™t forget to bring your umbrella tomorrow.", "请帮我请帮我请帮我请帮我请帮我", "今天天气很好",
             "x" * 1999 + " y z", "Where can I buy a \ufffd\ufffd charger for my phone?", "THE the The tHe cat sat"]
    alone = [Cleaner(Config()).check(text, None) for text in texts]
    result = run_clean(texts, batch_rows=4)  # several batches, rows of one check on both sides of a border
    together = pd.concat([result.kept, result.rejected]).set_index("id").loc[[str(i) for i in range(len(texts))]]
    for (reason, detail, n_chars, n_tokens), (_, row) in zip(alone, together.iterrows(), strict=True):
        assert (row.get("reject_reason") if isinstance(row.get("reject_reason"), str) else None) == reason
        assert (row.get("reject_detail") if isinstance(row.get("reject_detail"), str) else "") == detail
        assert (row["n_chars"], row["n_tokens"]) == (n_chars, n_tokens)
    assert together.loc["9", "reject_reason"] == "repetitive"  # 16 'a': a run over the limit of 15
    assert together.loc["9", "reject_detail"] == "'a' repeated 16 times"
    assert pd.isna(together.loc["10", "reject_reason"])  # 15 'a': within the limit


def test_reasons_and_details_in_rejects():
    result = run_clean(["A clean sentence about the weather today.", "", "Hi there"])
    assert list(result.kept["id"]) == ["0"]
    rejected = result.rejected.set_index("id")
    assert rejected.loc["1", "reject_reason"] == "empty"
    assert rejected.loc["2", "reject_reason"] == "too_short"
    assert "min_chars 10" in rejected.loc["2", "reject_detail"]


def test_cjk_counted_by_characters():
    text = "我想学Python编程，从哪里开始？"
    assert tokens(text) == ["我", "想", "学", "Python", "编", "程", "从", "哪", "里", "开", "始"]
    assert len(tokens("今天天气很好")) == 6
    assert len(tokens("東京でおすすめの公園")) == 10
    assert script_lang("今天天气很好，我们去公园吧。") == "zh"
    assert script_lang("東京でおすすめの公園を教えて") == "ja"
    assert script_lang("Plain English text.") is None


def test_per_lang_bounds_by_declared_or_script():
    short_zh = "今天天气很好"  # 6 characters, 6 tokens
    assert reason_of(short_zh) is None  # zh by script: min_chars 5, min_tokens 5
    assert reason_of(short_zh, lang="en") == "too_short"  # declared en: the defaults apply
    strict = {"per_lang": {"zh": {"min_tokens": 10}}}
    assert reason_of(short_zh, **strict) == "too_short"
    assert reason_of(short_zh, lang="zh", **strict) == "too_short"


def test_options_switch_checks():
    mojibake = "Donâ€™t forget to bring your umbrella tomorrow."
    assert reason_of(mojibake, mojibake=False) is None
    assert reason_of("Please help me right now!!!!!!!!!!!!!!!!!!!!", max_char_run=30) is None
    assert reason_of("buy now buy now buy now buy now buy now", max_repeated_ngram_share=0.95) is None


def test_repeated_share():
    assert repeated_share(list("abcdef"), 3) == 0.0
    assert repeated_share(list("abcabc"), 3) == 0.5
    assert repeated_share(list("abababab"), 2) == 0.75
    assert repeated_share(list("ab"), 3) == 0.0


def test_mojibake_shortcut_agrees_with_ftfy():
    from ftfy import fix_text
    from ftfy.badness import is_bad

    from bsa.text.charclass import mojibake_suspects

    suspects = mojibake_suspects()
    samples = [t.encode("utf-8").decode(codec, errors="replace")
               for t in ["naïve café", "“quoted” — dash…", "Ελληνικά", "Русский текст", "中文，“引号”"]
               for codec in ("latin-1", "cp1252", "cp1251", "mac_roman")]
    flagged = [s for s in samples if is_bad(s)]
    assert flagged, "ftfy flags some of the samples"
    assert all(suspects.search(s) for s in flagged)
    assert all(fix_text(s) != s for s in flagged)


def test_empty_frame():
    result = run_local(clean.STAGE, pd.DataFrame({"id": [], "text": [], "lang": []}), Config(), context())
    assert result.kept.empty and result.rejected.empty
    assert {"n_chars", "n_tokens"} <= set(result.kept.columns)
