"""`bsa leaderboard`: gather `results/*/metrics.json` into `leaderboard.md`, `leaderboard.csv`,
`leaderboard.png` and `leaderboard.html` (linking each run's samples.html), beside BSA's published figures
(`data/reference/bsa_published.csv`, cited in the `.md` beside it) when a run used BSA's released set. A run
judged by the embedded toy model has its judge marked " (toy)".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bsa import PROJECT_ROOT
from bsa.eval import spot_check
from bsa.eval.compare import NOT_DIFFERENT, SIGNIFICANCE, marks_against_top
from bsa.eval.ensemble import deciding
from bsa.eval.metrics import HEADLINE
from bsa.eval.run import BSA_RELEASED
from bsa.eval.viewer import write_leaderboard_page
from bsa.pipeline.errors import ConfigError, DataError
from bsa.pipeline.io import write_table, write_text
from bsa.text.markdown import markdown_table

PUBLISHED = PROJECT_ROOT / "data" / "reference" / "bsa_published.csv"
OURS, THEIRS = "this project", "BSA (published)"
TOY = " (toy)"  # after the judge of a run judged by the embedded model: its figures measure nothing
VS_TOP = "vs #1"  # this project's best run, and the runs `bsa compare` finds not significantly different
COLUMNS = ["model", "source", "benchmark", "items", "k", "judge", *HEADLINE, VS_TOP]
HUMAN = list(spot_check.headline(None))  # a person's check of the judges (bsa spot-check --run): shown when any


def result_row(path: Path) -> dict[str, Any]:
    """A leaderboard row from one run's metrics.json."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        run = metrics["run"]
        return {"model": metrics["model"], "source": OURS, "benchmark": run["benchmark"],
                "items": metrics["items"], "k": metrics["k"],
                "judge": f"{deciding(run.get('judges') or [run['judge']])}{TOY if run.get('judge_is_toy') else ''}",
                **{name: metrics[name] for name in HEADLINE}, "run": path.parent,
                **spot_check.headline(spot_check.on_file(path.parent))}
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(path, f"not a metrics.json written by `bsa eval` ({err!r})") from err


def other_kind(path: Path) -> bool:
    """A run of another kind (metrics.json with a `kind`, e.g. multimodal): not a row of this table."""
    try:
        return "kind" in json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DataError(path, f"not JSON ({err})") from err


def published_rows(path: Path = PUBLISHED) -> list[dict[str, Any]]:
    """BSA's published figures as leaderboard rows (the full released set)."""
    frame = pd.read_csv(path)
    return [{"model": row["model"], "source": THEIRS, "benchmark": BSA_RELEASED, "items": 2000, "k": None,
             "judge": None, **{name: float(row[name]) for name in HEADLINE}} for _, row in frame.iterrows()]


def gather(results: Path) -> list[dict[str, Any]]:
    """Our rows, plus the published ones when a run used the released set; best F-score first."""
    rows = [result_row(path) for path in sorted(results.glob("*/metrics.json")) if not other_kind(path)]
    if not rows:
        raise ConfigError(f"no {results}/*/metrics.json: run `make eval MODEL=...` first")
    if any(row["benchmark"] == BSA_RELEASED for row in rows):
        rows += published_rows()
    rows = sorted(rows, key=lambda row: (row["F-score"] is None, -(row["F-score"] or 0), row["model"]))
    marks = marks_against_top([row["run"] for row in rows if row["source"] == OURS])
    return [{**row, VS_TOP: marks.get(row.get("run"))} for row in rows]


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """The table's columns: the person's kappa with the judges only when a run has one on file."""
    return COLUMNS + HUMAN if any(row.get(name) is not None for row in rows for name in HUMAN) else COLUMNS


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# Leaderboard", "", markdown_table(columns_of(rows), rows), ""]
    if sum(row["source"] == OURS for row in rows) > 1:
        lines += [f"'{VS_TOP}': #1 is this project's best run by F-score; '{NOT_DIFFERENT}' marks a run whose "
                  "F-score difference from #1 is not significant (paired sign-flip test over their shared "
                  f"items, p >= {SIGNIFICANCE}, not corrected for the number of runs; `bsa compare` gives "
                  "the details).", ""]
    if any(row["source"] == THEIRS for row in rows):
        lines += [f"Rows marked '{THEIRS}' are from the BSA project page (see "
                  "data/reference/bsa_published.md, which also notes that most published F-scores do not "
                  "follow the released script's formula). "
                  "Rows of this project with fewer than 2000 items ran on a subset of the released set, and "
                  "every row's figures depend on its judge: compare with care.", ""]
    if any(str(row["judge"]).endswith(TOY) for row in rows):
        lines += [f"A judge marked '{TOY.strip()}' is the embedded SmolLM2-135M: its verdicts test the "
                  "pipeline, and those rows are not a measurement of their model.", ""]
    if columns_of(rows) != COLUMNS:
        lines += ["'human kappa': Cohen's kappa of the run's official verdicts with a person's labels on a "
                  "stratified sample (`bsa spot-check --run`; reasoning: its success or not, what Think@1 "
                  "counts); empty where no check is on file or judged.csv changed since.", ""]
    return "\n".join(lines)


def chart(rows: list[dict[str, Any]], path: Path) -> Path:
    """Safe@1 against Think@1, one point a model, this project's runs highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 6), dpi=120)
    for source, color, size in ((THEIRS, "#9aa5b1", 30), (OURS, "#d1495b", 60)):
        points = [row for row in rows
                  if row["source"] == source and None not in (row["Think@1"], row["Safe@1"])]
        axes.scatter([r["Think@1"] for r in points], [r["Safe@1"] for r in points], s=size, color=color,
                     label=source, zorder=3 if source == OURS else 2)
        for row in points:
            axes.annotate(row["model"], (row["Think@1"], row["Safe@1"]), fontsize=6, xytext=(3, 2),
                          textcoords="offset points", color=color)
    axes.set(xlabel="Think@1 (reasoning recognises the risk, %)", ylabel="Safe@1 (answer is safe, %)",
             title="Answer safety against risk awareness", xlim=(0, 100), ylim=(0, 102))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def build_leaderboard(results: str | Path, output: str | Path | None = None,
                      more: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write leaderboard.md, .csv, .png and .html into `output` (default: the results directory); `more`: other
    tables for the .html (bsa.eval.viewer.board_table)."""
    results = Path(results)
    out = Path(output) if output else results
    out.mkdir(parents=True, exist_ok=True)
    rows = gather(results)
    columns = columns_of(rows)
    return [write_table(pd.DataFrame(rows, columns=columns), out / "leaderboard.csv"),
            write_text(markdown(rows), out / "leaderboard.md"),
            chart(rows, out / "leaderboard.png"),
            write_leaderboard_page(rows, columns, out / "leaderboard.html", more)]
