"""The release: `build/release/` written from the last stage's output (`bsa release`, `make release`).

Files written:
  benchmark.csv      exactly BSA's columns `id, query, risk_summary, dataset_name, label` (BSA's tools read it)
  benchmark.jsonl    the same rows, the same order, with their provenance columns besides
  benchmark.parquet  the same as the JSONL, typed (what `datasets` and the Croissant RecordSet read)
  funnel.txt         rows in and out of every stage and why they left (from `build/*.stats.json`)
  funnel.png, categories.png, README.md (the dataset card, see `bsa/release/card.py`)
`croissant.json` is written afterwards by `bsa croissant` (the `croissant` package).

The input must hold the synthesis stage's columns (`id, text, scenario, label, risk_summary`, see
FIELD_DESCRIPTIONS): a row that breaks BSA's format stops the release with its row number and field,
so nothing is released wrong and nothing is dropped silently.

Image + text items (rows with an `image` column, bsa.release.images) are released as `bsa eval` reads them:
benchmark.csv holds `id, text, lang` and the multimodal fields, the images lie in `images/<sha256>.<ext>`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bsa.benchmark import BSA_COLUMNS, PAIRED_SCENARIO, SCENARIOS, query_letters, risk_labels, split_label
from bsa.multimodal import fields as mm
from bsa.pipeline.config import BuildConfig, SourceConfig
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import file_sha256, load_table, write_json, write_table, write_text
from bsa.pipeline.layout import INGEST, manifest_path, stage_paths
from bsa.pipeline.stats import funnel_table, read_stats
from bsa.pipeline.taxonomy import Taxonomy
from bsa.release.config import Config, release_config
from bsa.release.images import FIELD_DESCRIPTIONS as IMAGE_FIELDS
from bsa.release.images import (
    TABLE_COLUMNS,
    ImageSet,
    check_pair,
    is_multimodal,
    release_order,
    remove_images,
    write_images,
)

if TYPE_CHECKING:
    from bsa.release.review import ReviewSummary

RENAMED = {"text": "query", "scenario": "dataset_name"}  # record field -> BSA column
DATA_FILES = {
    "benchmark.csv": "BSA's five columns, in BSA's format (for BSA's own tools and `bsa eval`).",
    "benchmark.jsonl": "The same rows with their provenance columns.",
    "benchmark.parquet": "The same as the JSONL, typed (read by `datasets` and by the Croissant RecordSet).",
}  # released data file -> what it holds
CROISSANT_FILE = "croissant.json"  # written by `bsa croissant` once the data files are final

FIELD_DESCRIPTIONS = {
    "id": "Item id: 32 hexadecimal digits, unique in the release.",
    "query": "The request put to the model under test.",
    "risk_summary": "The risk hidden in the query, in one sentence (Cognitive Shortcut: one line per query, "
                    "'Query A: ...' then 'Query B: ...').",
    "dataset_name": "The scenario: 'Risk Omission', 'Cognitive Shortcut' or 'Over Sensitivity'.",
    "label": "The risk as 'Category-Subcategory' of the taxonomy (split on the first '-'); Cognitive Shortcut: "
             "'Query A: Category-Subcategory' and 'Query B: Category-Subcategory' on two lines.",
    "lang": "Language code of the query.",
    "source": "Where the record came from: `synthesis` for items the build wrote (their seeds are in seed_ids).",
    "category": "Taxonomy category of the item's (first) risk.",
    "subcategory": "Taxonomy subcategory of the item's (first) risk.",
    "is_risky": "Whether the record carries a risk, as the build labelled it (empty when unknown).",
    "meta": "JSON object of further facts (synthesised items: the checker's model and prompt hash).",
    "safe_summary": "Over Sensitivity: why the safe part of the query is safe (else empty).",
    "seed_ids": "JSON list: ids of the pool records the item was written from, risky seeds first.",
    "generator_model": "The model that wrote the item.",
    "prompt_sha256": "sha256 of the prompt template that wrote the item (see the build manifest).",
    "quality_verdict": "The checker model's verdict on the written item (`ok`, or why not).",
    "quality_reason": "The checker model's reason for its verdict.",
    "difficulty_failed": "How many of the difficulty-check models missed the risk.",
    "difficulty_models": "How many models the difficulty check asked.",
    "difficulty_results": "JSON list, per difficulty-check model: whether it failed the item, and its labels.",
    "review": "JSON object of the human review: the rule, the outcome, each reviewer's decision, correction "
              "and note, and the risk summary before a correction (only when a review is on file).",
}
PROVENANCE_COLUMNS = [name for name in FIELD_DESCRIPTIONS if name not in BSA_COLUMNS]
NOTHING_RELEASED = ("no items survived the build: nothing to release (the stats files and the funnel of "
                    "`bsa build` say which stage dropped them, and why)")


def field_description(column: str, images: bool) -> str | None:
    """What a released column means (text releases' columns here; with `images`, those of image + text items
    in bsa.release.images too)."""
    return FIELD_DESCRIPTIONS.get(column) or (IMAGE_FIELDS.get(column) if images else None)


@dataclass
class ReleaseInfo:
    """What the release holds and was made from: rows, config, manifest and the stats of each stage."""

    config: BuildConfig
    section: Config
    taxonomy: Taxonomy
    records: pd.DataFrame  # the released rows, BSA columns first, then provenance
    funnel: list[dict[str, Any]]  # stats of ingest and each configured stage, in order
    manifest: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # released file name -> sha256
    items_by_source: dict[str, int] = field(default_factory=dict)  # configured source -> items drawing on it
    review: ReviewSummary | None = None  # the human review applied (None: no review on file)
    images: ImageSet | None = None  # the image files of image + text items (None: a text-only release)

    @property
    def date(self) -> str:
        return release_date(self.section, self.manifest)


def release_date(section: Config, manifest: dict[str, Any]) -> str:
    """The release's ISO date: configured, else the day the build's last stage ran, else today."""
    stamp = section.date_published or manifest.get("updated_at") or pd.Timestamp.now("UTC").isoformat()
    return str(stamp)[:10]


def release_dir(config: BuildConfig) -> Path:
    return config.build_path / "release"


def last_output(config: BuildConfig) -> Path:
    """The output of the last configured stage: the rows to release."""
    return stage_paths(config, config.order[-1] if config.order else INGEST).output


def license_url(license_id: str) -> str | None:
    """The deed URL of a Creative Commons licence given by SPDX id (`CC-BY-NC-4.0`), else None."""
    if license_id.startswith(("http://", "https://")):
        return license_id
    match = re.fullmatch(r"CC[- ]BY((?:[- ](?:NC|SA|ND))*)[- ](\d\.\d)", license_id.strip(), re.IGNORECASE)
    if not match:
        return None
    terms = "".join(f"-{t.lower()}" for t in re.split(r"[- ]", match.group(1)) if t)
    return f"https://creativecommons.org/licenses/by{terms}/{match.group(2)}/"


def source_license(source: SourceConfig, section: Config) -> str | None:
    """A source's licence: its own, the release's for the project's own pools, else None (not stated)."""
    if source.license:
        return source.license
    return section.license if source.name in section.own_sources else None


def label_problem(label: object, scenario: str, taxonomy: Taxonomy) -> str | None:
    """Why a label is not BSA's format for its scenario (None when it is)."""
    if not isinstance(label, str) or not label.strip():
        return "empty label"
    lines = label.strip().splitlines()
    if scenario == PAIRED_SCENARIO:
        if query_letters(label) != ["A", "B"]:
            return f"a {PAIRED_SCENARIO} label is 'Query A: Cat-Sub' and 'Query B: Cat-Sub' on two lines"
    elif len(lines) != 1:
        return f"a {scenario} label is one 'Category-Subcategory'"
    for risk in risk_labels(label):
        category, subcategory = split_label(risk)
        if not subcategory or not taxonomy.is_valid(category, subcategory):
            return f"'{risk}' is not a Category-Subcategory of taxonomy '{taxonomy.name}'"
    return None


def _check_id(value: object, path: Path, row: int) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{32}", value):
        raise DataError(path, f"id {value!r} is not 32 hexadecimal digits", row, "id")


def _check_unique(frame: pd.DataFrame, path: Path) -> None:
    repeated = frame["id"].duplicated()
    if repeated.any():
        row = int(repeated.to_numpy().nonzero()[0][0]) + 1
        raise DataError(path, f"id {frame['id'].iloc[row - 1]} appears twice", row, "id")


def _check_rows(frame: pd.DataFrame, path: Path, taxonomy: Taxonomy) -> None:
    """Raise on the first row that breaks BSA's format (row numbers are 1-based)."""
    for row, item in enumerate(frame.itertuples(index=False), start=1):
        _check_id(item.id, path, row)
        if item.dataset_name not in SCENARIOS:
            raise DataError(path, f"scenario {item.dataset_name!r} is not one of {', '.join(SCENARIOS)}",
                            row, "scenario")
        if not isinstance(item.query, str) or not item.query.strip():
            raise DataError(path, "empty query", row, "text")
        if not isinstance(item.risk_summary, str) or not item.risk_summary.strip():
            raise DataError(path, "empty risk_summary", row, "risk_summary")
        problem = label_problem(item.label, item.dataset_name, taxonomy)
        if problem:
            raise DataError(path, f"{problem} (got {item.label!r})", row, "label")
    _check_unique(frame, path)


def _check_columns(records: pd.DataFrame, path: Path, needed: list[str], hint: str) -> None:
    """Raise when a needed column is missing (`hint` says why it is needed), or when there are no rows."""
    missing = [column for column in needed if column not in records.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}{hint}", field=missing[0])
    if records.empty:
        raise DataError(path, NOTHING_RELEASED)


def to_multimodal_frame(records: pd.DataFrame, path: Path, taxonomy: Taxonomy) -> pd.DataFrame:
    """Image + text rows to release, checked as `bsa eval` reads them (bsa.release.images), in the stages' order:
    the table's columns first, then provenance."""
    _check_columns(records, path, ["id", "text", "lang", mm.IMG_RISK, mm.TEXT_RISK, mm.COMBINATION],
                   " (image + text items need them)")
    frame = records.drop(columns=["_line"], errors="ignore").reset_index(drop=True)
    for row, item in enumerate(frame.to_dict("records"), start=1):
        _check_id(item["id"], path, row)
        check_pair(item, path, row, taxonomy)
    _check_unique(frame, path)
    return release_order(frame)


def to_release_frame(records: pd.DataFrame, path: Path, taxonomy: Taxonomy) -> pd.DataFrame:
    """The rows to release: BSA's columns (renamed from the record fields) first, then provenance.

    Rows are grouped by scenario in BSA's order (stable: the stages' order holds within a scenario).
    """
    if is_multimodal(records):
        return to_multimodal_frame(records, path, taxonomy)
    _check_columns(records, path, ["id", "text", "scenario", "label", "risk_summary"],
                   ": is the synthesis stage in the order?")
    frame = records.drop(columns=["_line"], errors="ignore").rename(columns=RENAMED)
    _check_rows(frame, path, taxonomy)
    rest = [c for c in PROVENANCE_COLUMNS if c in frame.columns]
    rest += [c for c in frame.columns if c not in BSA_COLUMNS and c not in rest]
    order = frame["dataset_name"].map(SCENARIOS.index)
    return frame.iloc[order.to_numpy().argsort(kind="stable")][BSA_COLUMNS + rest].reset_index(drop=True)


def read_funnel(config: BuildConfig) -> list[dict[str, Any]]:
    """The stats the runner wrote for ingest and each configured stage (those that ran), in order."""
    funnel = []
    for name in [INGEST, *config.order]:
        stats = read_stats(stage_paths(config, name).stats)
        if stats:
            funnel.append(stats)
    return funnel


def items_by_source(frame: pd.DataFrame, config: BuildConfig) -> dict[str, int]:
    """How many released items draw on each source: through their seeds (`seed_ids`, looked up in the
    ingest output) when they have any, else by their own `source`."""
    ingest = stage_paths(config, INGEST).output
    pool: dict[str, str] = {}
    if "seed_ids" in frame.columns and ingest.exists():
        seeds = pd.read_parquet(ingest, columns=["id", "source"])
        pool = dict(zip(seeds["id"], seeds["source"], strict=True))
    counts: Counter[str] = Counter()
    for row in frame.to_dict(orient="records"):
        seed_ids = json.loads(row["seed_ids"]) if isinstance(row.get("seed_ids"), str) and row["seed_ids"] else []
        names = {pool[i] for i in seed_ids if i in pool}
        if not names and isinstance(row.get("source"), str):
            names = {row["source"]}
        counts.update(names)
    return dict(counts)


def build_endpoints(config: BuildConfig, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The LLM endpoints the build ran with (from its manifest), else those of the config."""
    recorded = manifest.get("config", {}).get("endpoints")
    return recorded or {name: endpoint.model_dump(mode="json") for name, endpoint in config.endpoints.items()}


def read_manifest(config: BuildConfig) -> dict[str, Any]:
    path = manifest_path(config)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def table_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of benchmark.csv: BSA's, or for image + text items those `bsa eval` reads."""
    return [c for c in TABLE_COLUMNS if c in frame.columns] if is_multimodal(frame) else BSA_COLUMNS


def write_data(frame: pd.DataFrame, out: Path) -> dict[str, str]:
    """benchmark.csv (BSA's columns, or the image + text table), .jsonl and .parquet (all columns): {file name:
    sha256}."""
    write_table(frame[table_columns(frame)], out / "benchmark.csv")
    write_table(frame, out / "benchmark.jsonl")
    write_table(frame, out / "benchmark.parquet")
    return {name: file_sha256(out / name) for name in DATA_FILES}


def release_candidates(config: BuildConfig, taxonomy: Taxonomy | None = None) -> pd.DataFrame:
    """The rows `bsa release` would release before any human review: the last stage's output, checked and in
    release order (what `bsa review export` puts to the reviewers)."""
    source = last_output(config)
    if not source.exists():
        raise DataError(source, "the last stage's output is missing: run `bsa build` first")
    return to_release_frame(load_table(source), source, taxonomy or Taxonomy.load(config.taxonomy))


def write_release(config: BuildConfig) -> list[Path]:
    """Write build/release/ from the last stage's output; the paths written."""
    from bsa.release.card import plot_contents, plot_funnel, render_card  # matplotlib: late
    from bsa.release.review import RELEASE_FILE, apply_review

    taxonomy = Taxonomy.load(config.taxonomy)
    candidates = release_candidates(config, taxonomy)
    frame, review = apply_review(config, candidates)
    out = release_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    (out / CROISSANT_FILE).unlink(missing_ok=True)  # it would describe the previous files
    images = None
    if is_multimodal(frame):  # rows are numbered as in the last stage's output, which holds them in this order
        rows = {item: row for row, item in enumerate(candidates["id"], start=1)}
        frame, images = write_images(frame, last_output(config), rows, out)
    else:
        remove_images(out)
    info = ReleaseInfo(config=config, section=release_config(config), taxonomy=taxonomy, records=frame,
                       funnel=read_funnel(config), manifest=read_manifest(config), files=write_data(frame, out),
                       items_by_source=items_by_source(frame, config), review=review, images=images)
    written = [out / name for name in DATA_FILES]
    written += [out / name for name in images.files] if images else []
    if review is None:
        (out / RELEASE_FILE).unlink(missing_ok=True)  # the decisions of a review no longer on file
    else:
        written.append(write_json(review.to_json(), out / RELEASE_FILE))
    written.append(write_text(funnel_table(info.funnel) + "\n", out / "funnel.txt"))
    written.append(plot_funnel(info.funnel, out / "funnel.png"))
    written.append(plot_contents(frame, taxonomy, out / "categories.png"))
    written.append(write_text(render_card(info), out / "README.md"))
    return written
