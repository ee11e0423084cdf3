"""Self-contained HTML pages of a run: `samples.html` (every item with its k samples, both judges' verdicts,
filters and search) and `leaderboard.html` (the leaderboard's table, linking each run's samples.html).

A page is one file that opens from disk: its data embedded as JSON in a `<script type="application/json">`
(every `<`, `>`, `&`, U+2028 and U+2029 escaped, so no text can close the element), its script and style
inline and allowed by their sha256 in a strict Content-Security-Policy, nothing fetched. The pages' script
(package data beside this module, vanilla JS) builds the DOM with createElement and textContent only: text
from models, benchmarks and judges is shown as text, never read as markup or code.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

import pandas as pd

from bsa.benchmark import (
    CODES,
    SAFE,
    SAFETY_COLUMN,
    SCENARIO_COLUMN,
    SCENARIOS,
    SUCCESS,
    THINK_COLUMN,
    label_categories,
)
from bsa.eval.judges import UNSCORED, has_reasoning
from bsa.eval.metrics import HEADLINE, item_outcomes
from bsa.pipeline.io import read_table, write_text

SAMPLES_PAGE, LEADERBOARD_PAGE = "samples.html", "leaderboard.html"
IMAGE = "image"  # an optional sample field: a data: URL or a path relative to the page, shown beside it
# the flags a sample can carry, in the order the page lists them
FAILED, UNSCORED_FLAG, TRUNCATED, EMPTY_REASONING, EMPTY_ANSWER, JUDGES_DISAGREE = (
    "failed", "unscored", "truncated", "empty reasoning", "empty answer", "judges disagree")
FLAGS = (FAILED, UNSCORED_FLAG, TRUNCATED, EMPTY_REASONING, EMPTY_ANSWER, JUDGES_DISAGREE)
_JUDGE_LABEL = re.compile(r"^safety(?P<suffix>_\d+)?$")  # run.with_verdicts' columns: safety, safety_2, ...
_UNSAFE_IN_JSON = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_ASSETS = files(__name__)


# -- embedding and the page ----------------------------------------------------------------------------------

def embed_json(data: Any) -> str:
    """JSON for a `<script type="application/json">` element: no `<`, `>` or `&` (so nothing in it can end
    the element or open a comment) and no U+2028/U+2029; `JSON.parse` reads it back unchanged."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda match: _UNSAFE_IN_JSON[match.group()], text)


def csp_hash(source: str) -> str:
    """A CSP source expression allowing exactly this inline script or style."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def content_security_policy(script: str, style: str) -> str:
    """Nothing but the page's own inline script and style, and images from data: URLs or beside the page
    (plain text for a double-quoted attribute: quotes are single, hashes base64)."""
    return (f"default-src 'none'; script-src {csp_hash(script)}; style-src {csp_hash(style)}; "
            "img-src data: 'self'; base-uri 'none'; form-action 'none'")


def _asset(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


def render_page(page: str, title: str, data: Any) -> str:
    """The page `page` (`samples`, `mm_samples` or `leaderboard`: its `<page>.body.html`, where `$run_header`
    stands for the shared run_header.html, and `<page>.js`, after the shared common.js, in the shared page.html
    with viewer.css) holding `data`."""
    script, style = _asset("common.js") + _asset(f"{page}.js"), _asset("viewer.css")
    for source, tag in ((script, "script"), (style, "style")):
        if f"</{tag}" in source.lower():
            raise ValueError(f"the viewer's {tag} must not contain '</{tag}'")
    return Template(_asset("page.html")).substitute(
        csp=content_security_policy(script, style), title=html.escape(title), style=style,
        body=Template(_asset(f"{page}.body.html")).substitute(run_header=_asset("run_header.html")), script=script,
        data=embed_json(data))


# -- the samples page ----------------------------------------------------------------------------------------

def _text(value: Any) -> str:
    """A field as text: missing (None, NaN) is empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _number(value: Any) -> int | None:
    return None if _text(value) == "" else int(value)


def judge_suffixes(samples: pd.DataFrame) -> list[str]:
    """The verdict columns' suffixes of the judges in a samples table ("" for the first, "_2", ...)."""
    found = [match.group("suffix") or "" for column in samples.columns if (match := _JUDGE_LABEL.match(column))]
    return sorted(found, key=lambda suffix: (suffix != "", suffix))


def sample_flags(row: dict[str, Any], verdicts: list[dict[str, Any]]) -> list[str]:
    """What a person should notice about a sample (of FLAGS, in their order)."""
    ok = bool(row.get("ok", True))
    first = verdicts[0]
    flags = [FAILED] if not ok else []
    if UNSCORED in (first["safety"], first["thinking"]):
        flags.append(UNSCORED_FLAG)
    if bool(row.get("truncated")):
        flags.append(TRUNCATED)
    if ok and not has_reasoning(_text(row.get("reasoning"))):
        flags.append(EMPTY_REASONING)
    if ok and not _text(row.get("answer")).strip():
        flags.append(EMPTY_ANSWER)
    if _judges_disagree(verdicts):
        flags.append(JUDGES_DISAGREE)
    return flags


def _judges_disagree(verdicts: list[dict[str, Any]]) -> bool:
    """Two judges scored the same thing differently (labels given by rule are no judge's reading)."""
    for kind in ("safety", "thinking"):
        read = {v[kind] for v in verdicts if v[kind] != UNSCORED and not (kind == "thinking" and v["by_rule"])}
        if len(read) > 1:
            return True
    return False


def _verdicts(row: dict[str, Any], suffixes: list[str], names: list[str]) -> list[dict[str, Any]]:
    return [{"judge": name, "by_rule": bool(row.get(f"thinking{suffix}_by_rule") is True),
             **{f"{kind}{part}": _text(row.get(f"{kind}{suffix}{part}")) for kind in ("safety", "thinking")
                for part in ("", "_reason", "_error")}}
            for suffix, name in zip(suffixes, names, strict=True)]


def is_ssa(scenario: str, safety: str, thinking: str) -> bool:
    """Superficial safety alignment: a safe answer whose reasoning was scored and is not a success."""
    return safety == SAFE and thinking not in (UNSCORED, SUCCESS[scenario])


def sample_record(row: dict[str, Any], suffixes: list[str], names: list[str]) -> dict[str, Any]:
    """One sample as the page shows it; an IMAGE field is carried when the sample has one."""
    verdicts = _verdicts(row, suffixes, names)
    record = {"sample": _number(row.get("sample")), "reasoning": _text(row.get("reasoning")),
              "reasoning_source": _text(row.get("reasoning_source")),
              "reasoning_tokens": _number(row.get("reasoning_tokens")),
              "reasoning_tokens_source": _text(row.get("reasoning_tokens_source")),
              "reasoning_chars": _number(row.get("reasoning_chars")), "answer": _text(row.get("answer")),
              "finish_reason": _text(row.get("finish_reason")), "truncation": _text(row.get("truncation")),
              "error": _text(row.get("error")), "verdicts": verdicts, "flags": sample_flags(row, verdicts),
              "ssa": is_ssa(row["scenario"], verdicts[0]["safety"], verdicts[0]["thinking"])}
    if _text(row.get(IMAGE)):
        record[IMAGE] = _text(row[IMAGE])
    return record


def _disagree(labels: list[str]) -> bool:
    return len({label for label in labels if label != UNSCORED}) > 1


def samples_page_data(samples: pd.DataFrame, metrics: dict[str, Any]) -> dict[str, Any]:
    """The samples page's data: the run's header and one record an item (in file order) with its samples,
    its counts (metrics.item_outcomes of the first judge's labels) and whether its samples disagree."""
    run = metrics.get("run", {})
    suffixes = judge_suffixes(samples)
    known = [_text(name) for name in run.get("judges") or [run.get("judge"), run.get("second_judge")]]
    names = [(known[i] if i < len(known) else "") or f"judge {i + 1}" for i in range(len(suffixes))]
    judged = pd.DataFrame({"id": samples["id"].astype(str), SCENARIO_COLUMN: samples["scenario"],
                           SAFETY_COLUMN: samples["safety"], THINK_COLUMN: samples["thinking"]})
    outcomes = item_outcomes(judged)
    k = int(metrics.get("k") or samples.groupby("id").size().max())
    items = []
    for item_id, group in samples.groupby(samples["id"].astype(str), sort=False):
        rows = group.sort_values("sample").to_dict(orient="records")
        first = rows[0]
        records = [sample_record(row, suffixes, names) for row in rows]
        counts = outcomes.loc[item_id]
        items.append({"id": item_id, "scenario": first["scenario"], "code": CODES.get(first["scenario"], ""),
                      "label": _text(first.get("label")), "categories": label_categories(_text(first.get("label"))),
                      "query": _text(first.get("query")), "risk_summary": _text(first.get("risk_summary")),
                      "k": k, **{name: int(counts[name]) for name in
                                 ("safe_hits", "safe_scored", "think_hits", "think_scored")},
                      "ssa": any(record["ssa"] for record in records),
                      "samples_disagree": _disagree([r["safety"] for r in rows])
                      or _disagree([r["thinking"] for r in rows]),
                      "samples": records})
    return {"run": {"model": _text(metrics.get("model")), "benchmark": _text(run.get("benchmark")),
                    "items": len(items), "k": k, "judges": names, "judge_is_toy": bool(run.get("judge_is_toy")),
                    "figures": {name: metrics.get(name) for name in HEADLINE}},
            "scenarios": [[name, CODES[name]] for name in SCENARIOS],
            "success": SUCCESS, "safe": SAFE, "unscored": UNSCORED,
            "flags": list(FLAGS),
            "items": items}


def write_samples_page(samples: pd.DataFrame, metrics: dict[str, Any], out: str | Path) -> Path:
    """`<out>/samples.html` from a run's judged samples (run.with_verdicts' columns, with the risk summary)
    and its metrics.json content."""
    data = samples_page_data(samples, metrics)
    return write_text(render_page("samples", f"Samples: {data['run']['model']}", data), Path(out) / SAMPLES_PAGE)


def write_run_page(run_dir: str | Path) -> Path:
    """samples.html of a run directory written by `bsa eval` (samples.jsonl, metrics.json); the risk
    summaries, which samples.jsonl leaves out, come from the run's dataset when it is still readable."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    samples, _ = read_table(run_dir / "samples.jsonl")
    dataset = Path(_text(metrics.get("run", {}).get("dataset")))
    if "risk_summary" not in samples.columns:
        summaries: dict[str, str] = {}
        if dataset.is_file():
            benchmark, _ = read_table(dataset)
            summaries = dict(zip(benchmark["id"].astype(str), benchmark["risk_summary"].map(_text), strict=True))
        samples = samples.assign(risk_summary=samples["id"].astype(str).map(summaries).fillna(""))
    return write_samples_page(samples, metrics, run_dir)


# -- the leaderboard page ------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A table cell as JSON: numbers and text as they are, missing as None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, int | float | str | bool) else str(value)


def samples_link(run: str | Path | None, page: Path) -> str | None:
    """The URL-quoted path from `page` to a run's samples.html (None without a run or a page there)."""
    target = Path(run) / SAMPLES_PAGE if run else None
    return quote(Path(os.path.relpath(target, page.parent)).as_posix()) if target and target.exists() else None


def board_table(rows: list[dict[str, Any]], columns: list[str], figures: list[str], page: str | Path,
                title: str = "", note: str = "") -> dict[str, Any]:
    """One table of leaderboard.html: `rows` under `columns` (`figures` to 2 decimals); a row with a `run`
    directory (this project's) is highlighted and links its samples.html by a path relative to `page`."""
    return {"title": title, "note": note, "columns": columns, "figures": [name for name in figures if name in columns],
            "rows": [[_plain(row.get(column)) for column in columns] for row in rows],
            "links": [samples_link(row.get("run"), Path(page)) for row in rows],
            "ours": [bool(row.get("run")) for row in rows]}


def write_board_page(tables: list[dict[str, Any]], path: str | Path) -> Path:
    """`leaderboard.html` holding the board_table tables, in order."""
    return write_text(render_page("leaderboard", "Leaderboard", {"tables": tables}), Path(path))


def write_leaderboard_page(rows: list[dict[str, Any]], columns: list[str], path: str | Path,
                           more: list[dict[str, Any]] | None = None) -> Path:
    """`leaderboard.html`: the text runs' leaderboard (the HEADLINE figures to 2 decimals; each run of this
    project linking its samples.html), then the `more` tables (board_table: the multimodal runs')."""
    note = ("Best F-score first. A model name links to its run's samples page where the run has one. A judge "
            "marked \"(toy)\" is the embedded SmolLM2-135M: those rows measure nothing.")
    return write_board_page([board_table(rows, columns, HEADLINE, path, note=note), *(more or [])], path)
