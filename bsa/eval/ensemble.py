"""Several judges on one run: who they are, the official verdict, and how far they agree.

Judges are named in order by repeated `--judge-model` (each with its `--judge-base-url`, or the first one's
for a model that is neither an endpoint of the config nor `local`), `--second-judge-model`, or the config's
`eval.judges` (endpoint names; `eval.judge_endpoint` for one). The engine knows them as `judge`, `judge2`,
`judge3`, ...; their own verdicts are in samples.jsonl's columns `safety`, `safety_2`, ... and, with more
than one judge, in `judged.first.csv`, `judged.second.csv`, ... (the official format).

The official verdict (judged.csv): one judge's; with two, the first's (the second checks it: there is no
majority of two); with three or more, the majority of the judges that scored the sample (a judge whose reply
did not parse abstains), and a tie is unscored (error TIE, counted by `ties`). MAJORITY_FROM (3) is where a
majority starts, and `official`, `verdict_rule` and `deciding` (who a run's settings and name say decides the
verdict: the first judge, or every judge joined by `+`) all follow it. Agreement leaves out what not every
judge read and scored (a reasoning labelled by rule was read by none): Cohen's kappa for two judges, Fleiss'
kappa (statsmodels) and every pair's Cohen's kappa for three or more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from itertools import combinations
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd

from bsa.benchmark import SCENARIOS
from bsa.eval.config import Config
from bsa.eval.judges import UNSCORED, Verdict
from bsa.eval.metrics import judge_agreement
from bsa.pipeline.errors import ConfigError

JUDGE = "judge"  # the first judge's endpoint; the others are judge2, judge3, ...
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
MAJORITY_FROM = 3  # judges needed for a majority verdict
MAJORITY = "_majority"  # the suffix of samples.jsonl's columns holding the majority verdict
TIE = "tie"  # the error of a majority verdict no label won
SAFETY, THINKING = "Safe_Ans_Check", "Thk_Acc_Judge"  # the official format's verdict columns


class Panel(Protocol):
    """One judge's verdicts on every sample (bsa.eval.run.Judged)."""

    safety: list[Verdict]
    thinking: list[Verdict]


P = TypeVar("P", bound=Panel)


# -- who judges ----------------------------------------------------------------------------------------------

def judge_key(position: int) -> str:
    """The engine's name of the judge at `position` (0-based): `judge`, `judge2`, ..."""
    return JUDGE if position == 0 else f"{JUDGE}{position + 1}"


def judge_keys(endpoints: Sequence[str]) -> list[str]:
    """The judges among an engine's endpoint names, in order."""
    keys = []
    while judge_key(len(keys)) in endpoints:
        keys.append(judge_key(len(keys)))
    return keys


def column_suffix(position: int) -> str:
    """The suffix of a judge's columns in samples.jsonl: none for the first, `_2`, `_3`, ... after."""
    return "" if position == 0 else f"_{position + 1}"


def own_verdicts_file(position: int) -> str:
    """Where a judge's own verdicts go when there are several: judged.first.csv, judged.second.csv, ..."""
    return f"judged.{ORDINALS[position]}.csv"


class JudgeRequest(Protocol):
    """What a run was asked about its judges (bsa.eval.run.EvalRequest)."""

    base_url: str | None
    judge_model: str | Sequence[str] | None
    judge_base_url: str | Sequence[str] | None
    second_judge_model: str | None
    second_judge_base_url: str | None


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def configured_judges(settings: Config) -> list[str]:
    """The judges the config names: `eval.judges`, or `eval.judge_endpoint` alone."""
    if settings.judges and settings.judge_endpoint:
        raise ConfigError("eval.judges and eval.judge_endpoint both name judges: keep one")
    return list(settings.judges) or ([settings.judge_endpoint] if settings.judge_endpoint else [])


def named_judges(args: JudgeRequest, settings: Config,
                 served_elsewhere: Callable[[str], bool]) -> list[tuple[str, str | None]]:
    """(model or endpoint name, base URL or None) of each judge, in order: the `--judge-model`s (else the
    config's judges), then a `--second-judge-model`; empty when none is named. A judge named on the command
    line without a URL of its own that is `served_elsewhere` (neither an endpoint of the config nor `local`)
    is asked at the first judge's URL, and the first at the evaluated model's."""
    models, urls = _as_list(args.judge_model), _as_list(args.judge_base_url)
    if len(urls) > len(models):
        raise ConfigError(f"a judge base URL ({urls[len(models)]}) needs a judge model name (JUDGE_MODEL=...)")
    cli = [*zip(models, urls + [None] * (len(models) - len(urls)), strict=True)]
    if args.second_judge_model:
        cli.append((args.second_judge_model, args.second_judge_base_url))
    judges: list[tuple[str, str | None]] = [] if models else [(name, None) for name in configured_judges(settings)]
    for name, url in cli:
        shared = judges[0][1] if judges else args.base_url
        judges.append((name, url or (shared if served_elsewhere(name) else None)))
    if len(judges) > len(ORDINALS):
        raise ConfigError(f"{len(judges)} judges named: at most {len(ORDINALS)}")
    return judges


def deciding(names: Sequence[str]) -> str:
    """Who decides the official verdict, as a run's settings name it: the first judge's name, or with
    MAJORITY_FROM judges or more every judge's, joined by `+`."""
    return "+".join(names) if len(names) >= MAJORITY_FROM else (names[0] if names else "")


def verdict_rule(judges: int) -> str:
    """How the official verdict comes from `judges` judges (the report's and provenance's words)."""
    if judges >= MAJORITY_FROM:
        return f"the majority of {judges} judges (a tie is unscored)"
    return "the first judge's (the second checks it)" if judges == 2 else "the judge's"


# -- the verdict ---------------------------------------------------------------------------------------------

def majority(verdicts: Sequence[Verdict]) -> Verdict:
    """The label most judges gave among those that scored; UNSCORED (error TIE) when labels tie, or when no
    judge scored (with their common error, if they share one)."""
    votes = Counter(verdict.label for verdict in verdicts if verdict.scored)
    by_rule = all(verdict.by_rule for verdict in verdicts)
    if not votes:
        errors = {verdict.error for verdict in verdicts}
        if len(errors) == 1:
            return Verdict(UNSCORED, verdicts[0].reason, error=errors.pop(), by_rule=by_rule)
        return Verdict(UNSCORED, error="no judge scored it", by_rule=by_rule)
    ranked = votes.most_common()
    tally = ", ".join(f"{label} {count}" for label, count in ranked)
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return Verdict(UNSCORED, f"tie of {len(verdicts)} judges: {tally}", error=TIE, by_rule=by_rule)
    reason = verdicts[0].reason if by_rule else f"majority of {len(verdicts)} judges: {tally}"
    return Verdict(ranked[0][0], reason, by_rule=by_rule)


def official(panels: Sequence[P]) -> P:
    """The official verdicts of the judges' panels (one per judge, samples in the same order)."""
    if len(panels) < MAJORITY_FROM:
        return panels[0]
    return replace(panels[0], safety=[majority(votes) for votes in zip(*(p.safety for p in panels), strict=True)],
                   thinking=[majority(votes) for votes in zip(*(p.thinking for p in panels), strict=True)])


def ties(verdict: Panel) -> dict[str, int]:
    """How many official verdicts were ties, for the answers and the reasoning."""
    return {kind: sum(v.error == TIE for v in getattr(verdict, kind)) for kind in ("safety", "thinking")}


# -- agreement -----------------------------------------------------------------------------------------------

def read_by_every_judge(table: pd.DataFrame, by_rule: Sequence[bool]) -> pd.DataFrame:
    """A judge's table for agreement only: reasoning labels given by rule (no judge read them, so every
    judge agrees by construction) become unscored, which leaves them out."""
    return table.assign(**{THINKING: table[THINKING].mask(list(by_rule), UNSCORED)})


def fleiss_kappa(ratings: Sequence[Sequence[str]]) -> float | None:
    """Fleiss' kappa of rows of labels (one row a sample, one label per judge, every row as long), by
    statsmodels; None without rows or when a single label was used throughout (kappa is undefined)."""
    from statsmodels.stats.inter_rater import aggregate_raters
    from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss

    if not ratings or len({label for row in ratings for label in row}) < 2:
        return None
    counts, _ = aggregate_raters(np.array(ratings, dtype=object))
    return float(statsmodels_fleiss(counts, method="fleiss"))


def _all_judges(columns: list[pd.Series]) -> dict[str, Any]:
    """Agreement of three or more judges over the samples every one of them scored."""
    frame = pd.concat(columns, axis=1)
    rows = frame[(frame != UNSCORED).all(axis=1)].astype(str).values.tolist()
    kappa = fleiss_kappa(rows)
    return {"statistic": "Fleiss' kappa", "judges": len(columns), "samples": len(rows),
            "agreement": round(float(np.mean([len(set(row)) == 1 for row in rows])), 4) if rows else None,
            "kappa": None if kappa is None else round(kappa, 4)}


def agreement(tables: Sequence[pd.DataFrame], by_rule: Sequence[bool]) -> dict[str, Any]:
    """How far the judges' official-format tables (same samples, same order) agree: per kind (`safety`,
    `thinking`, `thinking:<scenario>`) Cohen's kappa for two judges; for three or more Fleiss' kappa, with
    every pair's Cohen's kappa under `pairwise`. Empty for one judge."""
    tables = [read_by_every_judge(table, by_rule) for table in tables]
    if len(tables) < 2:
        return {}
    pairs = {f"{ORDINALS[i]}~{ORDINALS[j]}": judge_agreement(tables[i], tables[j])
             for i, j in combinations(range(len(tables)), 2)}
    if len(tables) == 2:
        return {kind: {"statistic": "Cohen's kappa", **figures} for kind, figures in next(iter(pairs.values())).items()}
    scenario = tables[0]["dataset_name"]
    kinds = {"safety": (SAFETY, slice(None)), "thinking": (THINKING, slice(None)),
             **{f"thinking:{name}": (THINKING, (scenario == name).to_numpy()) for name in SCENARIOS
                if (scenario == name).any()}}
    return {kind: {**_all_judges([table[column][rows] for table in tables]),
                   "pairwise": {pair: figures[kind] for pair, figures in pairs.items()}}
            for kind, (column, rows) in kinds.items()}


def agreement_notes(agreement_figures: dict[str, Any], judges: Sequence[str], rule: str,
                    tied: dict[str, int] | None) -> list[str]:
    """The report's lines on the judges: who they were, the verdict's rule and how far they agree."""
    if len(judges) < 2:
        return []
    who = ", ".join(f"{ORDINALS[i]} {name}" for i, name in enumerate(judges))
    notes = [f"- Judges: {who}; the verdict is {rule}" +
             (f"; ties (unscored): safety {tied['safety']}, reasoning {tied['thinking']}." if tied else ".")]
    for kind, figures in agreement_figures.items():
        if figures.get("statistic") == "Fleiss' kappa":
            pairwise = ", ".join(f"{pair} {value['kappa']}" for pair, value in figures["pairwise"].items())
            notes.append(f"- Judge agreement, {kind}: Fleiss' kappa {figures['kappa']}, all {figures['judges']} "
                         f"agree on {figures['agreement']} of {figures['samples']} samples every judge read and "
                         f"scored; Cohen's kappa by pair: {pairwise}.")
        else:
            notes.append(f"- Judge agreement, {kind}: Cohen's kappa {figures['kappa']}, raw agreement "
                         f"{figures['agreement']} over {figures['pairs']} samples both judges read and scored.")
    return notes
