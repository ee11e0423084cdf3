"""`bsa compare A B`: per-item paired comparison of two runs on the same items.

A and B are run directories (`results/<run>/`, holding `judged.csv` and `metrics.json`) or judged CSVs in
the official format. Items are matched by id and compared on the ones both runs hold. Per item the outcomes
are those of `bsa.eval.metrics.item_scores` (@1: the share of scored samples that succeed; @k: success,
failure or unknown, see metrics.py), so each run's figure here is the one `bsa metrics` gives on the shared
items. For every headline figure, overall and per scenario:

- the difference B - A (percentage points, from the two rounded figures);
- a 95% paired-bootstrap interval of the difference: the shared items are resampled with replacement
  (within each scenario, as metrics.bootstrap_ci) and both runs' figures are computed on the same draw;
- a two-sided p-value from a paired sign-flip permutation test: each item's two outcomes are swapped between
  A and B with probability 1/2 (the null hypothesis: the runs are exchangeable on every item); p is
  scipy.stats.permutation_test's two-sided value, 2 min(P(D* <= d), P(D* >= d)) with the +1 correction;
- for the @k figures, McNemar's test on the items whose @k outcome is known in both runs: the exact binomial
  test of the discordant pairs (statsmodels' default, `mcnemar(table, exact=True)`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binom

from bsa.benchmark import ALPHA, CODES, SCENARIOS
from bsa.eval.metrics import (
    BOOTSTRAP_METRICS,
    FIGURE_COLUMNS,
    as_labels,
    bsa_figures,
    check_judged,
    figure_draws,
    item_outcomes,
    item_scores,
    read_judged,
    stratified_picks,
)
from bsa.pipeline.errors import ConfigError, DataError
from bsa.text.markdown import markdown_table

JUDGED, METRICS = "judged.csv", "metrics.json"
RESAMPLES, LEVEL = 2000, 0.95
BATCH = 500  # resamples drawn at once: bounds memory to BATCH x items per column
AT_K = {name: FIGURE_COLUMNS[name] for name in ("Safe@k", "Think@k")}  # binary per item: McNemar
P_VALUE = "paired sign-flip permutation test, two-sided"
NOT_DIFFERENT = "not significantly different from #1"
SIGNIFICANCE = 0.05  # the leaderboard's: p below it is a significant difference
TABLE_COLUMNS = ["scope", "metric", "A", "B", "B - A", "95% CI", "p", "A only / B only", "McNemar p"]


@dataclass(frozen=True)
class Run:
    """One side of a comparison: its judged rows (one model), k and what its metrics.json says."""

    path: Path
    judged: Path
    model: str
    k: int
    scores: pd.DataFrame  # item_scores, indexed by id
    run: dict[str, Any] | None  # metrics.json's `run` (provenance), when there is one

    def describe(self) -> dict[str, Any]:
        run = self.run or {}
        return {"path": str(self.path), "model": self.model, "k": self.k, "items": len(self.scores),
                "dataset_sha256": run.get("dataset_sha256"), "benchmark": run.get("benchmark"),
                "judge": run.get("judge"), "rules": run.get("rules")}


def load_run(path: str | Path) -> Run:
    """A run directory (its judged.csv and metrics.json) or a judged CSV (with a metrics.json beside it, if
    any), checked as `bsa metrics` checks it; DataError if it holds other than one model."""
    path = Path(path)
    judged = path / JUDGED if path.is_dir() else path
    if not judged.is_file():
        raise DataError(judged, "no such file: give a run directory (holding judged.csv) or a judged CSV")
    frame = as_labels(read_judged(judged))
    k = check_judged(frame, path=str(judged))
    models = frame["model_name"].unique()
    if len(models) != 1:
        raise DataError(judged, f"holds {len(models)} models ({', '.join(map(str, models))}): "
                                "compare needs one model a side")
    meta = judged.parent / METRICS
    run = None
    if meta.is_file():
        try:
            run = json.loads(meta.read_text(encoding="utf-8")).get("run")
        except (ValueError, AttributeError) as err:
            raise DataError(meta, f"not a metrics.json written by `bsa eval` ({err!r})") from err
    return Run(path, judged, str(models[0]), k, item_scores(item_outcomes(frame), k), run)


def shared_items(a: Run, b: Run) -> pd.Index:
    """The ids both runs hold (sorted); DataError if an id has a different scenario in the two."""
    shared = a.scores.index.intersection(b.scores.index).sort_values()
    differs = a.scores.loc[shared, "scenario"] != b.scores.loc[shared, "scenario"]
    if differs.any():
        item = differs.index[differs][0]
        raise DataError(b.judged, f"id {item}: scenario '{b.scores.at[item, 'scenario']}' here, "
                                  f"'{a.scores.at[item, 'scenario']}' in {a.judged}: not the same item")
    return shared


def mcnemar(a: pd.Series, b: pd.Series) -> dict[str, Any]:
    """McNemar's exact test of two runs' binary outcomes per item (NaN: unknown, left out): the binomial test
    of the discordant pairs, at any count (statsmodels' default)."""
    known = a.notna() & b.notna()
    a_only = int(((a == 1) & (b == 0))[known].sum())
    b_only = int(((a == 0) & (b == 1))[known].sum())
    discordant = a_only + b_only
    # statsmodels' mcnemar(exact=True), bit for bit; scipy's binomtest agrees to the last bit or two
    p = min(1.0, 2 * binom.cdf(min(a_only, b_only), discordant, 0.5)) if discordant else 1.0
    return {"pairs": int(known.sum()), "a_only": a_only, "b_only": b_only, "p": float(p)}


def _columns(scores: pd.DataFrame) -> dict[str, np.ndarray]:
    return {column: scores[column].to_numpy(dtype=float)[None, :] for column in FIGURE_COLUMNS.values()}


def _batches(resamples: int) -> list[int]:
    return [min(BATCH, resamples - start) for start in range(0, resamples, BATCH)]


def paired_bootstrap(a: pd.DataFrame, b: pd.DataFrame, resamples: int, rng: np.random.Generator,
                     alpha: float = ALPHA) -> dict[str, np.ndarray]:
    """B - A of each headline figure over `resamples` draws of the items (the same draw for both runs)."""
    columns_a, columns_b = _columns(a), _columns(b)
    scenarios = a["scenario"].to_numpy()
    parts = []
    for size in _batches(resamples):
        picks = stratified_picks(scenarios, size, rng)
        draws_a = figure_draws({name: values[0][picks] for name, values in columns_a.items()}, alpha)
        draws_b = figure_draws({name: values[0][picks] for name, values in columns_b.items()}, alpha)
        parts.append({name: draws_b[name] - draws_a[name] for name in BOOTSTRAP_METRICS})
    return {name: np.concatenate([part[name] for part in parts]) for name in BOOTSTRAP_METRICS}


def sign_flip(a: pd.DataFrame, b: pd.DataFrame, resamples: int, rng: np.random.Generator,
              alpha: float = ALPHA) -> dict[str, float | None]:
    """Two-sided p-value of B - A per headline figure: items' outcomes swapped between the runs at random."""
    columns_a, columns_b = _columns(a), _columns(b)
    observed_a, observed_b = figure_draws(columns_a, alpha), figure_draws(columns_b, alpha)
    observed = {name: float(observed_b[name][0] - observed_a[name][0]) for name in BOOTSTRAP_METRICS}
    less = dict.fromkeys(BOOTSTRAP_METRICS, 0)
    greater = dict.fromkeys(BOOTSTRAP_METRICS, 0)
    valid = dict.fromkeys(BOOTSTRAP_METRICS, 0)
    for size in _batches(resamples):
        swap = rng.random((size, len(a))) < 0.5
        draws_a = figure_draws({name: np.where(swap, columns_b[name], values)
                                for name, values in columns_a.items()}, alpha)
        draws_b = figure_draws({name: np.where(swap, values, columns_b[name])
                                for name, values in columns_a.items()}, alpha)
        for name in BOOTSTRAP_METRICS:
            difference = draws_b[name] - draws_a[name]
            difference = difference[~np.isnan(difference)]
            tolerance = 1e-9 * max(1.0, abs(observed[name]))  # the same figure by other float paths ties
            less[name] += int((difference <= observed[name] + tolerance).sum())
            greater[name] += int((difference >= observed[name] - tolerance).sum())
            valid[name] += len(difference)
    return {name: None if observed[name] != observed[name] or not valid[name] else
            min(1.0, 2 * min(less[name] + 1, greater[name] + 1) / (valid[name] + 1))
            for name in BOOTSTRAP_METRICS}


def _interval(differences: np.ndarray, level: float) -> list[float] | None:
    known = differences[~np.isnan(differences)]
    if not len(known):
        return None
    tail = (1 - level) / 2 * 100
    return [float(np.round(value, 2)) for value in np.percentile(known, [tail, 100 - tail])]


def compare_scores(a: pd.DataFrame, b: pd.DataFrame, *, resamples: int = RESAMPLES, seed: int = 0,
                   level: float = LEVEL, alpha: float = ALPHA) -> dict[str, dict[str, Any]]:
    """Every headline figure of two runs' aligned item scores: A, B, B - A, interval, p and McNemar."""
    figures_a, figures_b = bsa_figures(a, alpha), bsa_figures(b, alpha)
    intervals = paired_bootstrap(a, b, resamples, np.random.default_rng([seed, 0]), alpha)
    p_values = sign_flip(a, b, resamples, np.random.default_rng([seed, 1]), alpha)
    result = {}
    for name in BOOTSTRAP_METRICS:
        value_a, value_b = figures_a[name], figures_b[name]
        result[name] = {"a": value_a, "b": value_b,
                        "difference": None if None in (value_a, value_b) else round(value_b - value_a, 2),
                        "ci95": _interval(intervals[name], level), "p": p_values[name]}
        if name in AT_K:
            result[name]["mcnemar"] = mcnemar(a[AT_K[name]], b[AT_K[name]])
    return result


def compare_runs(a: Run, b: Run, *, resamples: int = RESAMPLES, seed: int = 0, level: float = LEVEL,
                 alpha: float = ALPHA) -> dict[str, Any]:
    """The whole comparison of B against A: on the shared items, overall and per scenario."""
    if resamples < 1:
        raise ConfigError(f"--resamples must be at least 1 (got {resamples})")
    shared = shared_items(a, b)
    if not len(shared):
        raise DataError(b.judged, f"no item in common with {a.judged}: nothing to compare")
    scores_a, scores_b = a.scores.loc[shared], b.scores.loc[shared]
    options = {"resamples": resamples, "seed": seed, "level": level, "alpha": alpha}
    scenarios = {}
    for name in SCENARIOS:
        part = scores_a["scenario"] == name
        if part.any():
            figures = compare_scores(scores_a[part], scores_b[part], **options)
            figures.pop("F-score")  # BSA reports no per-scenario F-score
            code = CODES[name]
            scenarios[name] = {"items": int(part.sum()),
                               **{metric.replace("Think", code): value for metric, value in figures.items()}}
    return {"a": a.describe(), "b": b.describe(), "items": len(shared),
            "only_in_a": len(a.scores) - len(shared), "only_in_b": len(b.scores) - len(shared),
            "warnings": mismatches(a, b), **options, "p_value": P_VALUE,
            "overall": compare_scores(scores_a, scores_b, **options), "scenarios": scenarios}


def mismatches(a: Run, b: Run) -> list[str]:
    """What makes the two runs less than comparable: a different k, dataset or benchmark."""
    notes = []
    if a.k != b.k:
        notes.append(f"different k: A has k={a.k}, B has k={b.k} (the @k figures are not comparable)")
    for field in ("dataset_sha256", "benchmark"):
        first, second = (run.run.get(field) if run.run else None for run in (a, b))
        if first and second and first != second:
            notes.append(f"different {field} in metrics.json: A {first}, B {second}")
    notes += [f"{side} has no {METRICS}: its k and dataset are not checked against the other's"
              for side, run in (("A", a), ("B", b)) if run.run is None]
    return notes


def compare_paths(a: str | Path, b: str | Path, **options: Any) -> dict[str, Any]:
    """`bsa compare A B`: the comparison of two run directories or judged CSVs."""
    return compare_runs(load_run(a), load_run(b), **options)


# -- presentation --------------------------------------------------------------------------------------------

def _rows(scope: str, figures: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for metric, value in figures.items():
        if not isinstance(value, dict):
            continue
        test = value.get("mcnemar")
        rows.append({"scope": scope, "metric": metric, "A": value["a"], "B": value["b"],
                     "B - A": value["difference"],
                     "95% CI": "-" if not value["ci95"] else f"{value['ci95'][0]:.2f} to {value['ci95'][1]:.2f}",
                     "p": None if value["p"] is None else f"{value['p']:.4f}",
                     "A only / B only": f"{test['a_only']} / {test['b_only']}" if test else None,
                     "McNemar p": f"{test['p']:.4f}" if test else None})
    return rows


def comparison_text(result: dict[str, Any]) -> str:
    """The comparison as Markdown: what was compared, any warning, and one table."""
    lines = [f"{side.upper()}: {info['model']} ({info['path']}; {info['items']} items, k={info['k']}"
             f"{', with safety rules' if info['rules'] else ''})" for side, info in
             (("a", result["a"]), ("b", result["b"]))]
    lines.append(f"Compared on the {result['items']} items both hold; left out: {result['only_in_a']} only in A, "
                 f"{result['only_in_b']} only in B.")
    lines += [f"Warning: {note}" for note in result["warnings"]]
    rows = _rows("all", result["overall"])
    for name, figures in result["scenarios"].items():
        rows += _rows(f"{name} ({figures['items']})", figures)
    lines += ["", markdown_table(TABLE_COLUMNS, rows), "",
              f"B - A in percentage points. {result['level']:.0%} CI: paired bootstrap over items "
              f"({result['resamples']} resamples within scenario, seed {result['seed']}). p: {P_VALUE} "
              f"({result['resamples']} resamples). McNemar: exact binomial test on the items whose @k outcome "
              "is known in both runs; 'A only / B only' counts the items only A (only B) got right."]
    return "\n".join(lines)


# -- the leaderboard -----------------------------------------------------------------------------------------

def marks_against_top(runs: Sequence[str | Path], metric: str = "F-score", *, significance: float = SIGNIFICANCE,
                      resamples: int = RESAMPLES, seed: int = 0) -> dict[Path, str | None]:
    """For runs ranked best first: "#1" for the first, NOT_DIFFERENT for each later run whose paired
    sign-flip test against it on `metric` (over their shared items) gives p >= `significance`, else None
    (also when the two share no item)."""
    if not runs:
        return {}
    top, *rest = (load_run(path) for path in runs)
    marks: dict[Path, str | None] = {top.path: "#1"}
    for run in rest:
        shared = shared_items(top, run)
        p = (compare_scores(top.scores.loc[shared], run.scores.loc[shared], resamples=resamples,
                            seed=seed)[metric]["p"] if len(shared) else None)
        marks[run.path] = NOT_DIFFERENT if p is not None and p >= significance else None
    return marks
