"""Leaderboard rows of multimodal runs (metrics.json with `kind: multimodal`): USB's columns, the Safety
Rate per combination, both means and the refusal rate, whether the model saw the images (a text-only
fallback run says no); `build` writes them as `leaderboard.multimodal.csv`, a section of `leaderboard.md` (each
row linking its run's samples.html) and a table of `leaderboard.html`, beside the text runs' (bsa.eval.leaderboard,
which leaves them out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bsa.eval.leaderboard import build_leaderboard
from bsa.eval.viewer import board_table, samples_link, write_board_page
from bsa.multimodal import fields
from bsa.multimodal.metrics import HEADLINE, NOTICED_ITEMS
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import write_table, write_text
from bsa.text.markdown import markdown_table

KIND = "multimodal"
MODEL_SEES = "model sees images"
TEXT_ONLY_ROW = "no (text-only fallback)"
COLUMNS = ["model", MODEL_SEES, "benchmark", "items", "k", "judge", "judge sees images", *HEADLINE,
           *fields.COMBINATIONS, NOTICED_ITEMS]
FIGURES = [*HEADLINE, *fields.COMBINATIONS, NOTICED_ITEMS]
TITLE = "Multimodal (USB-style)"
NOTE = (f"Combination columns: Safety Rate per combination (item mean). {NOTICED_ITEMS}: only for models that "
        f"reason. '{MODEL_SEES}: {TEXT_ONLY_ROW}': the model never saw an image, it read each image's description "
        "or printed text; such a row is not a vision model's measurement.")


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
        return {"model": metrics["model"], MODEL_SEES: "yes" if run.get("model_sees_images", True) else TEXT_ONLY_ROW,
                "benchmark": run["benchmark"], "items": metrics["items"],
                "k": metrics["k"], "judge": f"{run['judge']}{' (toy)' if run.get('judge_is_toy') else ''}",
                "judge sees images": "yes" if run["judge_sees_images"] else "no (descriptions)",
                **{name: metrics[name] for name in HEADLINE},
                **{name: (metrics["combinations"].get(name) or {}).get("Safety Rate")
                   for name in fields.COMBINATIONS}, NOTICED_ITEMS: metrics.get(NOTICED_ITEMS), "run": path.parent}
    except (KeyError, TypeError) as err:
        raise DataError(path, f"not a multimodal metrics.json written by `bsa eval` ({err!r})") from err


def rows(paths: list[Path]) -> list[dict[str, Any]]:
    """Rows, best Safety Rate (cell mean) first."""
    found = [row(path) for path in paths]
    return sorted(found, key=lambda r: (r[HEADLINE[0]] is None, -(r[HEADLINE[0]] or 0), r["model"]))


def markdown(found: list[dict[str, Any]], board: Path) -> str:
    """The section of leaderboard.md (at `board`): the table, each run's samples page linked."""
    links = [samples_link(row["run"], board) for row in found]
    table = [{**row, "samples": f"[samples.html]({link})" if link else "-"} for row, link in zip(found, links, strict=True)]
    return "\n".join([f"## {TITLE}", "", markdown_table([*COLUMNS, "samples"], table), "", NOTE, ""])


def build(results: str | Path, output: str | Path | None = None) -> list[Path]:
    """`bsa leaderboard`: the text runs' files (when there are any, or no run at all: then its error), plus
    `leaderboard.multimodal.csv`, a section of `leaderboard.md` and a table of `leaderboard.html` for the
    multimodal runs."""
    results = Path(results)
    out = Path(output) if output else results
    paths = sorted(results.glob("*/metrics.json"))
    found = rows([path for path in paths if is_multimodal_run(path)])
    page = out / "leaderboard.html"
    more = [board_table(found, COLUMNS, FIGURES, page, title=TITLE, note=NOTE)] if found else []
    written = build_leaderboard(results, out, more) if len(found) < len(paths) or not paths else []
    if found:
        board = out / "leaderboard.md"
        text = board.read_text(encoding="utf-8") if written else "# Leaderboard\n"
        written += [write_table(pd.DataFrame(found, columns=COLUMNS), out / "leaderboard.multimodal.csv"),
                    write_text(f"{text}\n{markdown(found, board)}", board)]
        if not any(path == page for path in written):
            written.append(write_board_page(more, page))
    return written
