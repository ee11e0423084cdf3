"""Stage 'relevance': an LLM judge checks that each seed deserves its label, and says why.

Risky rows: does the instruction really carry its `Category-Subcategory` risk? Safe rows: is it really a
harmless look-alike (harmless, though its wording resembles a risky request)? The reply is schema-constrained
`{"verdict": ..., "reason": ...}`; rows whose verdict is not in `keep_verdicts` are rejected with the verdict
as reason (`label_mismatch`, `not_risky`, `plainly_harmless`, `actually_risky`). A reply that never parsed is
never counted as a verdict: the row is kept and flagged `judge_failed` (or rejected, `on_judge_failure: reject`).
Risky rows without a valid taxonomy label, and rows whose `is_risky` is unknown, are rejected `no_risk_label`.

Then a second look at dedup's contrast twins (`contrast_twins`: look-alikes kept apart because a label was
unknown there), now that labels are known: of two twins the judge kept, the later is rejected
`twin_duplicate` (with `duplicate_of`) when both are labelled alike, by `is_risky` and by the judge's reading
(a risky row judged `not_risky` reads safe, a safe row judged `actually_risky` risky); twins labelled
differently are a confirmed contrast pair. A twin still unlabelled stays kept.

Adds columns:
    relevance_verdict   the judge's verdict, `judge_failed`, or None when the row was not judged
    relevance_reason    the judge's short reason (or the error of a failed reply)
    contrast_confirmed  a JSON list of the row's twins labelled differently (a contrast pair), else None

Image items (a multimodal build: records with `image_sha256`) are judged by `mm_prompt` instead: three
separate ratings, text harm, image harm and pair harm, from which the judged combination follows (RIRT,
RIST, SIRT, SIST, or `benign` when the pair is harmless). An endpoint marked `vision: true` gets the image
attached; any other reads its description or rendered text, and its prompt says so (the notes
`prompts/<lang>/mm_image_*.md` the eval judges use). A row with neither, on such an endpoint, is rejected
`image_unreadable`. Where the row holds `img_risk` / `text_risk` labels, `relevance_disagrees` lists the
labels the judge contradicts. Image columns:
    text_harm, image_harm, pair_harm   the judge's three ratings (None when not judged or the reply failed)
    relevance_combination              the combination they give (or None)
    image_seen                         True: the judge saw the image; False: it read it in words
    relevance_disagrees                JSON list of the labels the judge contradicts, else None

A person checks the judge with the spot check (`bsa spot-check`, bsa.review).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from pydantic import field_validator

from bsa.multimodal import fields as mm
from bsa.multimodal.harm import HARMS, harm_request, judged_combination, read_harms
from bsa.pipeline.config import Section
from bsa.pipeline.errors import ConfigError
from bsa.pipeline.llm import Request
from bsa.pipeline.prompts import Prompt
from bsa.pipeline.records import REJECT_REASON
from bsa.pipeline.stage import Stage, StageContext, per_batch, reject, whole
from bsa.pipeline.verdicts import (
    JUDGE_FAILED,
    OnJudgeFailure,
    read_verdict,
    schema_verdicts,
)
from bsa.text.clusters import representatives
from bsa.text.contrast import CONFIRMED, TWINS

RISKY_VERDICTS = ("relevant", "label_mismatch", "not_risky")
SAFE_VERDICTS = ("look_alike", "plainly_harmless", "actually_risky")
JUDGED_RISKY = ("relevant", "label_mismatch", "actually_risky")  # the verdicts that read a row as risky
NO_LABEL = "no_risk_label"
VERDICT, REASON = "relevance_verdict", "relevance_reason"


class Config(Section):
    endpoint: str = "local"  # the judge, a name under `endpoints:`
    risky_prompt: str = "relevance_risky"
    safe_prompt: str = "relevance_safe"
    keep_verdicts: list[str] = ["relevant", "look_alike"]
    on_judge_failure: OnJudgeFailure = "keep"
    temperature: float = 0.0
    max_tokens: int = 96  # verdict + one short reason
    mm_prompt: str = "relevance_mm"  # image items: text, image and pair harm rated apart

    @field_validator("keep_verdicts")
    @classmethod
    def _known_verdicts(cls, value: list[str]) -> list[str]:
        unknown = set(value) - set(RISKY_VERDICTS) - set(SAFE_VERDICTS)
        if unknown:
            raise ValueError(f"unknown verdicts {sorted(unknown)}; known: {[*RISKY_VERDICTS, *SAFE_VERDICTS]}")
        return value


def _checked_prompt(ctx: StageContext, name: str, verdicts: tuple[str, ...]) -> Prompt:
    """A judge prompt whose schema offers exactly the verdicts this stage understands."""
    prompt = ctx.prompts.load(name)
    if set(schema_verdicts(prompt.schema)) != set(verdicts):
        raise ConfigError(f"{prompt.path}: its schema must allow the verdicts {list(verdicts)}")
    return prompt


def _render(row: pd.Series, risky: bool, prompts: dict[bool, Prompt], ctx: StageContext) -> list[dict]:
    if not risky:
        return prompts[False].render(text=row["text"])
    return prompts[True].render(text=row["text"], category=ctx.taxonomy.translate(row["category"], ctx.lang),
                                subcategory=ctx.taxonomy.translate(row["subcategory"], ctx.lang))


def _labelled(frame: pd.DataFrame, ctx: StageContext) -> pd.Series:
    """Which risky rows hold a full taxonomy label (a category and one of its subcategories)."""
    return pd.Series([isinstance(s, str) and bool(s) and ctx.taxonomy.is_valid(c, s)
                      for c, s in zip(frame["category"], frame["subcategory"], strict=True)], index=frame.index)


MM_COMBINATION, IMAGE_SEEN, DISAGREES = "relevance_combination", "image_seen", "relevance_disagrees"
MM_COLUMNS = (*HARMS, MM_COMBINATION, IMAGE_SEEN, DISAGREES)
UNREADABLE = "image_unreadable"


def is_multimodal(frame: pd.DataFrame) -> bool:
    return mm.IMAGE_SHA256 in frame.columns and bool(frame[mm.IMAGE_SHA256].notna().any())


def _disagreements(row: pd.Series, ratings: dict[str, bool]) -> str | None:
    found = [label for label, key in ((mm.IMG_RISK, "image_harm"), (mm.TEXT_RISK, "text_harm"))
             if label in row.index and not pd.isna(row[label]) and bool(int(row[label])) != ratings[key]]
    return json.dumps(found) if found else None


def judge_images(records: pd.DataFrame, config: Config, ctx: StageContext) -> pd.DataFrame:
    """Row by row, image items: text, image and pair harm rated apart, the combination they give."""
    frame = records.copy()
    vision = bool(ctx.config.endpoints[config.endpoint].vision)
    params = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    requests = {index: harm_request(row.to_dict(), config.endpoint, vision, ctx.prompts, config.mm_prompt, params,
                                    ctx.name) for index, row in frame.iterrows()}
    asked = [index for index, request in requests.items() if request is not None]
    responses = ctx.llm.run([requests[i] for i in asked], desc="relevance judge (image items)") if asked else []
    for column in (VERDICT, REASON, *MM_COLUMNS):
        frame[column] = None
    frame[IMAGE_SEEN] = vision
    reasons = pd.Series(None, index=frame.index, dtype=object)
    for index, response in zip(asked, responses, strict=True):
        ratings, why = read_harms(response)
        frame.at[index, REASON] = why
        if ratings is None:
            frame.at[index, VERDICT] = JUDGE_FAILED
            ctx.count(JUDGE_FAILED)
            reasons[index] = JUDGE_FAILED if config.on_judge_failure == "reject" else None
            continue
        for key, value in ratings.items():
            frame.at[index, key] = value
        combo = judged_combination(ratings)
        frame.at[index, MM_COMBINATION] = frame.at[index, VERDICT] = combo
        frame.at[index, DISAGREES] = _disagreements(frame.loc[index], ratings)
        if frame.at[index, DISAGREES]:
            ctx.count("label_disagrees")
    unread = [index for index, request in requests.items() if request is None]
    frame.loc[unread, REASON] = (f"the judge cannot see images and the row has neither {mm.IMAGE_DESCRIPTION} "
                                 f"nor {mm.RENDER_SPEC}")
    reasons[unread] = UNREADABLE
    ctx.count("image_seen" if vision else "image_described", len(asked))
    return reject(frame, reasons, frame[REASON])


def judge_rows(records: pd.DataFrame, config: Config, ctx: StageContext) -> pd.DataFrame:
    """Row by row: the judge's verdict on each labelled row, and the rows rejected for it."""
    if is_multimodal(records):
        return judge_images(records, config, ctx)
    frame = records.copy()
    risky = frame["is_risky"].astype("boolean")
    judged = (risky.eq(True) & _labelled(frame, ctx)) | risky.eq(False)
    judged = judged.fillna(False).astype(bool)
    prompts = {True: _checked_prompt(ctx, config.risky_prompt, RISKY_VERDICTS),
               False: _checked_prompt(ctx, config.safe_prompt, SAFE_VERDICTS)}
    rows = frame[judged].sort_values("is_risky", ascending=False, kind="stable")  # one prompt after the other
    requests = [Request(config.endpoint, _render(row, bool(row["is_risky"]), prompts, ctx),
                        schema=prompts[bool(row["is_risky"])].schema, tag=ctx.name,
                        params={"temperature": config.temperature, "max_tokens": config.max_tokens})
                for _, row in rows.iterrows()]
    responses = ctx.llm.run(requests, desc="relevance judge") if requests else []

    frame[VERDICT], frame[REASON] = None, None
    reasons = pd.Series(None, index=frame.index, dtype=object)
    for index, is_risky, response in zip(rows.index, rows["is_risky"], responses, strict=True):
        verdict, why = read_verdict(response, RISKY_VERDICTS if is_risky else SAFE_VERDICTS)
        frame.at[index, VERDICT], frame.at[index, REASON] = verdict or JUDGE_FAILED, why
        if verdict is None:
            ctx.count(JUDGE_FAILED)
            reasons[index] = JUDGE_FAILED if config.on_judge_failure == "reject" else None
        elif verdict not in config.keep_verdicts:
            reasons[index] = verdict
    unjudged = frame.index[~judged]
    frame.loc[unjudged, REASON] = ["is_risky is unknown" if pd.isna(r) else "no valid Category-Subcategory label"
                                   for r in risky[unjudged]]
    reasons[unjudged] = NO_LABEL
    return reject(frame, reasons, frame[REASON])


def _risk_codes(labels: pd.Series) -> np.ndarray:
    """1 risky, 0 safe, -1 unknown."""
    labels = labels.astype("boolean")
    return np.where(labels.isna(), -1, labels.fillna(False).astype(int))


def merge_twins(frame: pd.DataFrame, config: Config, ctx: StageContext) -> pd.DataFrame:
    """All rows at once: dedup's contrast twins, labelled now, merged when alike and confirmed when not."""
    out = frame.copy()
    out[CONFIRMED] = None
    if TWINS not in out.columns:
        return out
    ids = out["id"].astype(str).to_numpy()
    position = {row_id: i for i, row_id in enumerate(ids)}
    pairs = sorted({(min(i, j), max(i, j)) for i, twins in enumerate(out[TWINS]) if isinstance(twins, str)
                    for j in (position.get(twin) for twin in json.loads(twins)) if j is not None and j != i})
    live = out[REJECT_REASON].isna().to_numpy() if REJECT_REASON in out.columns else np.ones(len(out), bool)
    labelled = _risk_codes(out["is_risky"])
    judged = np.where(out[VERDICT].isin(JUDGED_RISKY), 1, np.where(out[VERDICT].isin(
        [*RISKY_VERDICTS, *SAFE_VERDICTS]), 0, labelled))
    alike, confirmed = [], [[] for _ in ids]
    counts = dict.fromkeys(["merged", "confirmed", "unlabelled", "rejected_before"], 0)
    for a, b in pairs:
        if not (live[a] and live[b]):
            counts["rejected_before"] += 1
        elif min(labelled[a], labelled[b], judged[a], judged[b]) < 0:
            counts["unlabelled"] += 1
        elif labelled[a] == labelled[b] and judged[a] == judged[b]:
            alike.append((a, b))
        else:
            confirmed[a].append(ids[b])
            confirmed[b].append(ids[a])
            counts["confirmed"] += 1
    out[CONFIRMED] = [json.dumps(sorted(twins)) if twins else None for twins in confirmed]
    kept = representatives(len(out), np.array(alike, dtype=np.int64).reshape(-1, 2))
    merged = np.flatnonzero(kept != np.arange(len(out)))
    counts["merged"] = len(merged)
    reasons = pd.Series(None, index=out.index, dtype=object)
    reasons.iloc[merged] = "twin_duplicate"
    details = pd.Series("", index=out.index, dtype=object)
    details.iloc[merged] = [f"labelled {'risky' if labelled[i] else 'safe'} like its contrast twin {ids[kept[i]]}"
                            for i in merged]
    out = reject(out, reasons, details)
    out["duplicate_of"] = pd.Series(ids[kept], index=out.index, dtype=object).where(reasons.notna(), None)
    ctx.report({"contrast_twins": counts})
    return out


def count_verdicts(frame: pd.DataFrame, config: Config, ctx: StageContext) -> pd.DataFrame:
    """All rows at once: how many rows were judged, and each verdict's count."""
    figures = {"verdicts": {str(k): int(v) for k, v in frame[VERDICT].value_counts().items()},
               "judged": int(frame[VERDICT].notna().sum())}
    if IMAGE_SEEN in frame.columns:
        figures[IMAGE_SEEN] = bool(frame[IMAGE_SEEN].all())
        figures["label_disagrees"] = int(frame[DISAGREES].notna().sum())
    ctx.report(figures)
    return frame


STAGE = Stage("relevance", Config, (per_batch(judge_rows), whole(merge_twins), whole(count_verdicts)),
              endpoints=("endpoint",), needs=("text", "is_risky", "category", "subcategory"),
              adds=(VERDICT, REASON, CONFIRMED), reject_columns=("duplicate_of",))
