"""People checking the LLM's verdicts: the spot check of the relevance judge (`bsa spot-check`).

`write_sheet` samples the judged rows of a build, stratified by category and verdict, into a CSV with empty
`human_verdict` / `human_note` columns; `agreement_of` reads the filled sheet back and reports the judge's
agreement with the person (raw and Cohen's kappa, on the verdict and on the keep-or-drop decision it implies).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bsa.eval.metrics import agreement
from bsa.pipeline.config import BuildConfig
from bsa.pipeline.errors import ConfigError, DataError
from bsa.pipeline.human_check import read_filled_sheet, stratified_sample
from bsa.pipeline.io import read_table, write_table
from bsa.pipeline.layout import stage_paths
from bsa.stages.relevance import REASON, RISKY_VERDICTS, SAFE_VERDICTS, VERDICT
from bsa.stages.relevance import STAGE as RELEVANCE

HUMAN_VERDICT, HUMAN_NOTE = "human_verdict", "human_note"


def judged_rows(config: BuildConfig) -> pd.DataFrame:
    """Every row the relevance stage judged, kept or rejected, from the build directory."""
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


def spot_check_sheet(rows: pd.DataFrame) -> pd.DataFrame:
    """The columns a person needs, with empty `human_verdict` / `human_note` to fill in."""
    sheet = rows[["id", "category", "subcategory", "is_risky", "text", VERDICT, REASON]].copy()
    sheet[HUMAN_VERDICT], sheet[HUMAN_NOTE] = "", ""
    return sheet


def read_checked(path: Path) -> pd.DataFrame:
    """The rows of a checked spot-check CSV that carry a human verdict (validated)."""
    known = sorted({*RISKY_VERDICTS, *SAFE_VERDICTS})
    return read_filled_sheet(path, {HUMAN_VERDICT: lambda row: known}, required=[VERDICT], what="a verdict")


def agreement_report(checked: pd.DataFrame, keep_verdicts: list[str]) -> dict[str, object]:
    """Agreement on the verdict itself and on the decision it implies (keep or drop)."""
    decision = {"judge": checked[VERDICT].isin(keep_verdicts), "human": checked[HUMAN_VERDICT].isin(keep_verdicts)}
    confusion = pd.crosstab(checked[VERDICT], checked[HUMAN_VERDICT])
    return {"verdict": agreement(checked[VERDICT].astype(str), checked[HUMAN_VERDICT].astype(str)),
            "keep_or_drop": agreement(decision["judge"].astype(str), decision["human"].astype(str)),
            "confusion (rows: judge, columns: person)": confusion.to_dict(orient="index")}


def _format_report(report: dict[str, object]) -> str:
    lines = []
    for name in ("verdict", "keep_or_drop"):
        figures = report[name]
        kappa = "undefined (one label only)" if figures["kappa"] is None else f"{figures['kappa']:.3f}"
        lines.append(f"{name:<13} n={figures['pairs']}  agreement={figures['agreement']:.1%}  Cohen's kappa={kappa}")
    for judge_label, row in report["confusion (rows: judge, columns: person)"].items():
        counts = ", ".join(f"{human}: {count}" for human, count in row.items() if count)
        lines.append(f"  judge {judge_label:<17} person -> {counts}")
    return "\n".join(lines)


def write_sheet(config: BuildConfig, n: int = 50, output: Path | None = None) -> str:
    """Write the spot-check sheet of a build (`n` rows, stratified); what to do next, for the person."""
    rows = judged_rows(config)
    sample = spot_check_sheet(stratified_sample(rows, ["category", VERDICT], n, config.seed))
    output = output or config.build_path / "spot-check.csv"
    write_table(sample, output)
    strata = sample.groupby(["category", VERDICT], dropna=False).ngroups
    return (f"wrote {output}: {len(sample)} of {len(rows)} judged rows, {strata} (category, verdict) strata.\n"
            f"Fill '{HUMAN_VERDICT}' with your verdict, then run: bsa spot-check --import {output}")


def agreement_of(config: BuildConfig, checked: Path) -> str:
    """The agreement report of a filled sheet, against the build's `keep_verdicts`."""
    section = RELEVANCE.settings(config)
    return _format_report(agreement_report(read_checked(checked), section.keep_verdicts))
