"""Leaderboard rows of multimodal runs (metrics.json with `kind: multimodal`): USB's columns, the Safety
Rate per combination, both means and the refusal rate; `build` writes them as `leaderboard.multimodal.csv` and a
section of `leaderboard.md`, beside the text runs' table (bsa.eval.leaderboard, which leaves them out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bsa.eval.leaderboard import build_leaderboard
from bsa.multimodal import fields
from bsa.multimodal.metrics import HEADLINE, NOTICED_ITEMS
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import write_table, write_text
from bsa.text.markdown import markdown_table

KIND = "multimodal"
COLUMNS = ["model", "benchmark", "items", "k", "judge", "judge sees images", *HEADLINE,
           *fields.COMBINATIONS, NOTICED_ITEMS]


def is_multimodal_run(path: Path) -> bool:
    """Whether a metrics.json is a multimodal run's."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") == KIND
    except ValueError as err:
        raise DataError(path, f"not JSON ({err})") from err


def row(path: Path) -> dict[str, Any]:
    """A leaderboard row from one multimodal run's metrics.json."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        run = metrics["run"]
        return {"model": metrics["model"], "benchmark": run["benchmark"], "items": metrics["items"],
                "k": metrics["k"], "judge": f"{run['judge']}{' (toy)' if run.get('judge_is_toy') else ''}",
                "judge sees images": "yes" if run["judge_sees_images"] else "no (descriptions)",
                **{name: metrics[name] for name in HEADLINE},
                **{name: (metrics["combinations"].get(name) or {}).get("Safety Rate")
                   for name in fields.COMBINATIONS}, NOTICED_ITEMS: metrics.get(NOTICED_ITEMS)}
    except (KeyError, TypeError) as err:
        raise DataError(path, f"not a multimodal metrics.json written by `bsa eval` ({err!r})") from err


def rows(paths: list[Path]) -> list[dict[str, Any]]:
    """Rows, best Safety Rate (cell mean) first."""
    found = [row(path) for path in paths]
    return sorted(found, key=lambda r: (r[HEADLINE[0]] is None, -(r[HEADLINE[0]] or 0), r["model"]))


def markdown(found: list[dict[str, Any]]) -> str:
    return "\n".join(["## Multimodal (USB-style)", "", markdown_table(COLUMNS, found), "",
                      f"Combination columns: Safety Rate per combination (item mean). {NOTICED_ITEMS}: only for "
                      "models that reason.", ""])


def build(results: str | Path, output: str | Path | None = None) -> list[Path]:
    """`bsa leaderboard`: the text runs' files (when there are any, or no run at all: then its error), plus
    `leaderboard.multimodal.csv` and a section of `leaderboard.md` for the multimodal runs."""
    results = Path(results)
    out = Path(output) if output else results
    paths = sorted(results.glob("*/metrics.json"))
    found = rows([path for path in paths if is_multimodal_run(path)])
    written = build_leaderboard(results, out) if len(found) < len(paths) or not paths else []
    if found:
        board = out / "leaderboard.md"
        text = board.read_text(encoding="utf-8") if written else "# Leaderboard\n"
        written += [write_table(pd.DataFrame(found, columns=COLUMNS), out / "leaderboard.multimodal.csv"),
                    write_text(f"{text}\n{markdown(found)}", board)]
    return written
