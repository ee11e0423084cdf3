"""`samples.html` of a multimodal run: every item with its image beside its text, its combination and
categories, and its k samples with the vulnerability (or over-refusal) and risk-noticed verdicts; filters and
search. The page is bsa.eval.viewer's (one file, data as inert JSON, strict CSP, text only via textContent).

Images: when the run's images weigh EMBED_LIMIT bytes or less in all, each is embedded as a `data:` URL, so the
page is one file that opens anywhere; above that, each is a path relative to the page, pointing at the
benchmark's own image file (the page then opens while the run and the benchmark keep their places; `bsa
viewer RUN` rewrites it after a move). The page's first line says when the model never saw an image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from bsa.eval.judges import UNSCORED
from bsa.eval.viewer import SAMPLES_PAGE, _text, render_page
from bsa.multimodal import fields
from bsa.multimodal.benchmark import DESCRIBED, image_in_words
from bsa.multimodal.judges import COMPLIED, NOTICED, SAFE_LABELS, VULNERABILITY_CODES, category_path
from bsa.multimodal.messages import data_url, image_mime
from bsa.multimodal.metrics import HEADLINE, OVER_REFUSAL, RISK_NOTICED, VULNERABILITY
from bsa.pipeline.io import read_table, write_text

EMBED_LIMIT = 16_000_000  # total bytes of a run's images embedded in its page; above it, they are linked
WORDS = {DESCRIBED: "Image description", "typography": "Text printed on the image"}
COMBINATION_NAMES = {"RIRT": "risky image, risky text", "RIST": "risky image, safe text",
                     "SIRT": "safe image, risky text", "SIST": "both safe alone, risky together",
                     fields.BENIGN: "benign (over-refusal set)"}


def image_sources(paths: dict[str, Path], out: Path, limit: int | None = None) -> dict[str, str]:
    """Each item's image as the page shows it: all as data: URLs when their files weigh `limit` (default
    EMBED_LIMIT) bytes or less in all, else all as paths relative to `out` (URL-quoted); "" for a file that is
    not there."""
    present = {item: path for item, path in paths.items() if path.is_file()}
    if sum(path.stat().st_size for path in present.values()) <= (EMBED_LIMIT if limit is None else limit):
        embedded = {}
        for item, path in present.items():
            data = path.read_bytes()
            embedded[item] = data_url(data, image_mime(data))
        return {item: embedded.get(item, "") for item in paths}
    return {item: quote(Path(os.path.relpath(path, out)).as_posix()) if item in present else ""
            for item, path in paths.items()}


def _hits(labels: list[str], good: tuple[str, ...]) -> tuple[int, int]:
    scored = [label for label in labels if label and label != UNSCORED]
    return sum(label in good for label in scored), len(scored)


def _sample(row: dict[str, Any], benign: bool) -> dict[str, Any]:
    answer = OVER_REFUSAL if benign else VULNERABILITY
    return {"sample": int(row["sample"]), "reasoning": _text(row.get("reasoning")), "answer": _text(row.get("answer")),
            "finish_reason": _text(row.get("finish_reason")), "truncation": _text(row.get("truncation")),
            "error": _text(row.get("error")), "label": _text(row.get(answer)),
            "code": VULNERABILITY_CODES.get(_text(row.get(answer))),
            "reason": _text(row.get(f"{answer}_reason")), "label_error": _text(row.get(f"{answer}_error")),
            "noticed": "" if benign else _text(row.get(RISK_NOTICED)),
            "noticed_reason": _text(row.get(f"{RISK_NOTICED}_reason")),
            "noticed_error": _text(row.get(f"{RISK_NOTICED}_error"))}


def mm_page_data(samples: pd.DataFrame, metrics: dict[str, Any], out: Path) -> dict[str, Any]:
    """The page's data: the run's header (with the model's and the judge's sight) and one record an item, in
    file order, with its image source, the image in words, its categories and samples."""
    run = metrics.get("run", {})
    folder = Path(_text(run.get("dataset"))).parent
    firsts = samples.groupby(samples["id"].astype(str), sort=False).first()
    sources = image_sources({item: folder / _text(row[fields.IMAGE]) for item, row in firsts.iterrows()}, out)
    k = int(metrics.get("k") or samples.groupby("id").size().max())
    items = []
    for item_id, group in samples.groupby(samples["id"].astype(str), sort=False):
        rows = group.sort_values("sample").to_dict(orient="records")
        first = rows[0]
        benign = first[fields.COMBINATION] == fields.BENIGN
        records = [_sample(row, benign) for row in rows]
        kind, words = image_in_words(first) or ("", "")
        answer_hits, answer_scored = _hits([r["label"] for r in records], (COMPLIED,) if benign else SAFE_LABELS)
        noticed_hits, noticed_scored = _hits([r["noticed"] for r in records], (NOTICED,))
        items.append({"id": item_id, "text": _text(first.get("text")), "lang": _text(first.get("lang")),
                      "combination": first[fields.COMBINATION], "benign": benign,
                      "levels": [_text(first.get(level)) for level in fields.CATEGORY_LEVELS],
                      "category": category_path(first), "image": sources[item_id],
                      "image_file": _text(first.get(fields.IMAGE)), "words_kind": WORDS.get(kind, ""),
                      "words": words, "k": k, "answer_hits": answer_hits, "answer_scored": answer_scored,
                      "noticed_hits": noticed_hits, "noticed_scored": noticed_scored, "samples": records})
    return {"run": {"model": _text(metrics.get("model")), "benchmark": _text(run.get("benchmark")),
                    "items": len(items), "k": k, "judge": _text(run.get("judge")),
                    "judge_is_toy": bool(run.get("judge_is_toy")),
                    "model_sees_images": bool(run.get("model_sees_images", True)),
                    "judge_sees_images": bool(run.get("judge_sees_images", True)),
                    "notice": _text(metrics.get("notice")),
                    "figures": {name: metrics.get(name) for name in HEADLINE}},
            "combinations": [[name, text] for name, text in COMBINATION_NAMES.items()],
            "safe": list(SAFE_LABELS), "complied": COMPLIED, "noticed": NOTICED, "unscored": UNSCORED,
            "items": items}


def write_mm_samples_page(samples: pd.DataFrame, metrics: dict[str, Any], out: str | Path) -> Path:
    """`<out>/samples.html` of a multimodal run from its judged samples and metrics.json content."""
    out = Path(out)
    data = mm_page_data(samples, metrics, out)
    return write_text(render_page("mm_samples", f"Samples: {data['run']['model']}", data), out / SAMPLES_PAGE)


def write_mm_run_page(run_dir: str | Path) -> Path:
    """samples.html of a multimodal run directory (samples.jsonl, metrics.json), the images found beside the
    run's dataset."""
    run_dir = Path(run_dir)
    samples, _ = read_table(run_dir / "samples.jsonl")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return write_mm_samples_page(samples, metrics, run_dir)
