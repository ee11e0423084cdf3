"""Stage 'relevance': an LLM judge checks that each seed deserves its label, and says why.

Risky rows: does the instruction really carry its `Category-Subcategory` risk? Safe rows: is it really a
harmless look-alike (harmless, though its wording resembles a risky request)? The reply is schema-constrained
`{"verdict": ..., "reason": ...}`; rows whose verdict is not in `keep_verdicts` are rejected with the verdict
as reason (`label_mismatch`, `not_risky`, `plainly_harmless`, `actually_risky`). A reply that never parsed is
never counted as a verdict: the row is kept and flagged `judge_failed` (or rejected, `on_judge_failure: reject`).
Risky rows without a valid taxonomy label, and rows whose `is_risky` is unknown, are rejected `no_risk_label`.

Adds columns:
    relevance_verdict  the judge's verdict, `judge_failed`, or None when the row was not judged
    relevance_reason   the judge's short reason (or the error of a failed reply)

Also here: the spot check (`bsa spot-check`, `make spot-check N=50`), a CSV sample of the judge's verdicts
stratified by category and verdict for a person to check, and the agreement report for the checked file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from pydantic import field_validator

from pipeline.config import BuildConfig, Section
from pipeline.errors import ConfigError, DataError
from pipeline.io import read_table, write_table
from pipeline.llm import Request
from pipeline.prompts import Prompt
from pipeline.stage import StageContext, StageResult, split_by_reason
from stages.verdicts import JUDGE_FAILED, OnJudgeFailure, read_verdict, schema_verdicts

RISKY_VERDICTS = ("relevant", "label_mismatch", "not_risky")
SAFE_VERDICTS = ("look_alike", "plainly_harmless", "actually_risky")
NO_LABEL = "no_risk_label"
VERDICT, REASON = "relevance_verdict", "relevance_reason"
HUMAN_VERDICT, HUMAN_NOTE = "human_verdict", "human_note"


class Config(Section):
    endpoint: str = "local"  # the judge, a name under `endpoints:`
    risky_prompt: str = "relevance_risky"
    safe_prompt: str = "relevance_safe"
    keep_verdicts: list[str] = ["relevant", "look_alike"]
    on_judge_failure: OnJudgeFailure = "keep"
    temperature: float = 0.0
    max_tokens: int = 96  # verdict + one short reason

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


def run(records: pd.DataFrame, config: Config, ctx: StageContext) -> StageResult:
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
    result = split_by_reason(frame, reasons, frame[REASON])
    result.stats = {"verdicts": {str(k): int(v) for k, v in frame[VERDICT].value_counts().items()},
                    "judged": int(judged.sum())}
    return result


# -- spot check: a stratified sample for a person, and the judge's agreement with that person -------------
def judged_rows(config: BuildConfig) -> pd.DataFrame:
    """Every row the relevance stage judged, kept or rejected, from the build directory."""
    from pipeline.runner import stage_paths

    if "relevance" not in config.order:
        raise ConfigError(f"{config.config_path}: the stage order has no 'relevance' stage to spot-check")
    paths = stage_paths(config, "relevance")
    if not paths.output.exists():
        raise DataError(paths.output, "not built yet: run `make build-dataset` (or `bsa build`) first")
    frames = [read_table(paths.output)[0]]
    if paths.rejects.exists() and paths.rejects.stat().st_size:
        frames.append(read_table(paths.rejects)[0])
    rows = pd.concat(frames, ignore_index=True)
    return rows[rows[VERDICT].isin([*RISKY_VERDICTS, *SAFE_VERDICTS])]


def stratified_sample(rows: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """`n` rows spread evenly over the (category, verdict) strata: one of each in turn, in seeded order."""
    strata = [rows["category"].fillna("(none)"), rows[VERDICT]]
    shuffled = rows.assign(_turn=rows.groupby(strata, dropna=False).cumcount())
    shuffled = shuffled.sample(frac=1.0, random_state=seed).sort_values("_turn", kind="stable")
    sample = shuffled.head(n).drop(columns="_turn")
    return sample.sort_values(["category", VERDICT], kind="stable", na_position="last")


def spot_check_sheet(rows: pd.DataFrame) -> pd.DataFrame:
    """The columns a person needs, with empty `human_verdict` / `human_note` to fill in."""
    sheet = rows[["id", "category", "subcategory", "is_risky", "text", VERDICT, REASON]].copy()
    sheet[HUMAN_VERDICT], sheet[HUMAN_NOTE] = "", ""
    return sheet


def read_checked(path: Path) -> pd.DataFrame:
    """The rows of a checked spot-check CSV that carry a human verdict (validated)."""
    frame, _ = read_table(path)
    for column in (VERDICT, HUMAN_VERDICT):
        if column not in frame.columns:
            raise DataError(path, f"column '{column}' missing (expected a sheet written by `bsa spot-check`)",
                            field=column)
    frame[HUMAN_VERDICT] = frame[HUMAN_VERDICT].fillna("").str.strip()
    checked = frame[frame[HUMAN_VERDICT] != ""]
    known = {*RISKY_VERDICTS, *SAFE_VERDICTS}
    for line, value in zip(checked["_line"], checked[HUMAN_VERDICT], strict=True):
        if value not in known:
            raise DataError(path, f"'{value}' is not a verdict (use one of {', '.join(sorted(known))})",
                            line=int(line), field=HUMAN_VERDICT)
    if checked.empty:
        raise DataError(path, f"no row has a '{HUMAN_VERDICT}' filled in", field=HUMAN_VERDICT)
    return checked


def agreement(judge: pd.Series, human: pd.Series) -> dict[str, float | int | None]:
    """Raw agreement and Cohen's kappa of two label series (kappa None when it is undefined)."""
    from sklearn.metrics import cohen_kappa_score

    judge, human = judge.astype(str).tolist(), human.astype(str).tolist()
    raw = sum(a == b for a, b in zip(judge, human, strict=True)) / len(judge)
    kappa = None if len(set(judge) | set(human)) < 2 else float(cohen_kappa_score(judge, human))
    return {"n": len(judge), "agreement": round(raw, 4), "kappa": None if kappa != kappa else kappa}


def agreement_report(checked: pd.DataFrame, keep_verdicts: list[str]) -> dict[str, object]:
    """Agreement on the verdict itself and on the decision it implies (keep or drop)."""
    decision = {"judge": checked[VERDICT].isin(keep_verdicts), "human": checked[HUMAN_VERDICT].isin(keep_verdicts)}
    confusion = pd.crosstab(checked[VERDICT], checked[HUMAN_VERDICT])
    return {"verdict": agreement(checked[VERDICT], checked[HUMAN_VERDICT]),
            "keep_or_drop": agreement(decision["judge"], decision["human"]),
            "confusion (rows: judge, columns: person)": confusion.to_dict(orient="index")}


def _format_report(report: dict[str, object]) -> str:
    lines = []
    for name in ("verdict", "keep_or_drop"):
        figures = report[name]
        kappa = "undefined (one label only)" if figures["kappa"] is None else f"{figures['kappa']:.3f}"
        lines.append(f"{name:<13} n={figures['n']}  agreement={figures['agreement']:.1%}  Cohen's kappa={kappa}")
    for judge_label, row in report["confusion (rows: judge, columns: person)"].items():
        counts = ", ".join(f"{human}: {count}" for human, count in row.items() if count)
        lines.append(f"  judge {judge_label:<17} person -> {counts}")
    return "\n".join(lines)


def spot_check_cli(args: argparse.Namespace, config: BuildConfig) -> int:
    """`bsa spot-check --n N [--output F]` writes the sheet; `--import F` reports agreement with it."""
    from stages import stage_config

    section = stage_config("relevance", config)
    if args.import_file:
        print(_format_report(agreement_report(read_checked(Path(args.import_file)), section.keep_verdicts)))
        return 0
    rows = judged_rows(config)
    sample = spot_check_sheet(stratified_sample(rows, args.n, config.seed))
    output = Path(args.output) if args.output else config.build_path / "spot-check.csv"
    write_table(sample, output)
    strata = sample.groupby(["category", VERDICT], dropna=False).ngroups
    print(f"wrote {output}: {len(sample)} of {len(rows)} judged rows, {strata} (category, verdict) strata.\n"
          f"Fill '{HUMAN_VERDICT}' with your verdict, then run: bsa spot-check --import {output}")
    return 0
