"""Coverage of an image + text benchmark: items per taxonomy category x kind (RIRT, RIST, SIRT, SIST, benign)
x language, every cell listed, empty ones too.

Synthesis plans its items for the cells with the fewest items first (bsa.multimodal.synthesis); its stats and
the release card show the table. A cell is (category at one taxonomy level, kind, language); the primary level
is the one USB reports, the secondary one is shown where a table of it stays readable (the card).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import pandas as pd

from bsa.multimodal import fields
from bsa.pipeline.taxonomy import Taxonomy

KINDS = (*fields.COMBINATIONS, fields.BENIGN)  # the columns of a coverage table
UNCATEGORISED = "(none)"  # a row without a category at the level


def level_names(taxonomy: Taxonomy, level: int) -> list[str]:
    """The taxonomy's names at a level (0: primary), in file order."""
    names: list[str] = []
    for path in taxonomy.paths():
        if len(path) > level and path[level] not in names:
            names.append(path[level])
    return names


Cell = tuple[str, str, str]  # (category at the level, kind, lang)


def cell_counts(frame: pd.DataFrame, level: int = 0) -> Counter[Cell]:
    """Items per (category at `level`, kind, language) of rows holding fields.COMBINATION."""
    column = fields.CATEGORY_LEVELS[level]
    counts: Counter[Cell] = Counter()
    if frame.empty or fields.COMBINATION not in frame.columns:
        return counts
    categories = frame[column] if column in frame.columns else pd.Series(None, index=frame.index)
    for category, kind, lang in zip(categories, frame[fields.COMBINATION], frame["lang"], strict=True):
        if isinstance(kind, str) and kind:
            name = category if isinstance(category, str) and category else UNCATEGORISED
            counts[(name, kind, str(lang))] += 1
    return counts


def coverage_table(counts: Counter[Cell], categories: Iterable[str], langs: Iterable[str]) -> pd.DataFrame:
    """One row per (category, language), one column per kind, every cell present (0 when empty)."""
    langs = sorted(set(langs))
    names = list(categories) + sorted({c for c, _, _ in counts if c not in categories})
    rows = [{"category": name, "lang": lang, **{kind: counts.get((name, kind, lang), 0) for kind in KINDS}}
            for name in names for lang in langs]
    return pd.DataFrame(rows, columns=["category", "lang", *KINDS])


def coverage_stats(table: pd.DataFrame) -> dict[str, Any]:
    """A coverage table for a stats file: the cells, how many are empty, and which."""
    cells = table.melt(id_vars=["category", "lang"], value_vars=list(KINDS), var_name="kind", value_name="items")
    empty = cells[cells["items"] == 0]
    return {"cells": len(cells), "empty_cells": len(empty),
            "empty": [f"{r.category} / {r.kind} / {r.lang}" for r in empty.itertuples()],
            "items": {f"{r.category} / {r.lang}": {kind: int(getattr(r, kind)) for kind in KINDS}
                      for r in table.itertuples()}}
