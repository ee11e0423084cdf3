"""People checking a judge: a stratified sample to show them, and the sheet they filled in read back.

`stratified_sample` spreads a sample evenly over strata (seeded); `spreadsheet_safe` keeps text that
starts like a formula from being run by a spreadsheet; `read_filled_sheet` reads a filled CSV sheet, checks
every answer against the labels its row allows and names file, line and field of a bad one. Label Studio
task files and exports: bsa.pipeline.labelstudio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from bsa.pipeline.errors import DataError
from bsa.pipeline.io import read_table

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets may evaluate as a formula
LabelsOf = Callable[[pd.Series], Sequence[str]]  # the labels a row allows
Match = Callable[[str, Sequence[str]], str | None]  # a person's label -> the label it names, or None


def stratified_sample(rows: pd.DataFrame, strata: list[str], n: int, seed: int) -> pd.DataFrame:
    """`n` rows spread evenly over the strata (one of each in turn, in seeded order; a missing value is a
    stratum of its own), sorted by stratum."""
    if n < 1:
        raise ValueError(f"the sample needs at least one row (got n={n})")
    turns = rows.groupby([rows[column] for column in strata], dropna=False).cumcount()
    shuffled = rows.assign(_turn=turns).sample(frac=1.0, random_state=seed).sort_values("_turn", kind="stable")
    return shuffled.head(n).drop(columns="_turn").sort_values(strata, kind="stable", na_position="last")


def spreadsheet_safe(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The frame with each text of `columns` that starts like a formula prefixed by `'`, which spreadsheets
    show as text (the person reads it; no one runs it)."""
    def guard(value: object) -> object:
        return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value

    return frame.assign(**{column: frame[column].map(guard) for column in columns})


def exact(value: str, labels: Sequence[str]) -> str | None:
    """`value` when it is one of `labels` as spelled there."""
    return value if value in labels else None


def read_filled_sheet(path: str | Path, answers: dict[str, LabelsOf], required: Sequence[str] = (),
                      match: Match = exact, what: str = "a label", texts: Sequence[str] = (),
                      written_by: str = "bsa spot-check") -> pd.DataFrame:
    """The rows of a filled sheet with at least one answer or free text (`texts` columns), each answer column
    stripped and spelled as the label it names and each text stripped ("" where left blank). DataError naming
    the file, line and field of a missing column or an answer its row does not allow, and when no row has an
    answer."""
    frame, _ = read_table(path)
    for column in [*required, *answers, *texts]:
        if column not in frame.columns:
            raise DataError(path, f"column '{column}' missing (expected a sheet written by `{written_by}`)",
                            field=column)
    for column in [*answers, *texts]:
        frame[column] = frame[column].fillna("").astype(str).str.strip()
    filled = frame[(frame[[*answers, *texts]] != "").any(axis=1)].copy()
    for index, row in filled.iterrows():
        for column, labels_of in answers.items():
            if not row[column]:
                continue
            allowed = labels_of(row)
            label = match(row[column], allowed)
            if label is None:
                raise DataError(path, f"'{row[column]}' is not {what} (use one of {', '.join(allowed)})",
                                line=int(row["_line"]), field=column)
            filled.at[index, column] = label
    if not (filled[list(answers)] != "").any(axis=None):
        raise DataError(path, f"no row has {' or '.join(repr(c) for c in answers)} filled in",
                        field=next(iter(answers)))
    return filled
