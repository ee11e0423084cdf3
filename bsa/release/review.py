"""The human double check BSA ends with: every release candidate reviewed by two or more people, and the
release keeping what they accept.

`export_review` (`bsa review export`) writes `build/review/`: `review.csv` (one row per candidate: what
the reviewer reads, then `decision` accept|reject|fix, `corrected_risk_summary`, `note`, `reviewer`) and
`tasks.json` with its labeling config `tasks.xml` for Label Studio. Every row carries the sha256 of the
item as shown (`item_sha256`) and of the whole candidate set (`candidates_sha256`).
`import_reviews` (`bsa review import FILE...`) reads one file per reviewer (that CSV, or Label Studio's
JSON export), checks it against the candidates, writes `build/review/reviews.json` and reports the
agreement on the decision (Cohen's kappa for two reviewers, Fleiss' for more) and the disagreements.
`apply_review` (called by `write_release`) decides each candidate by the `review:` rule: kept items carry
a `review` provenance column, and every decision goes to the release's `review.json`. Reviews of another
candidate set (the candidates changed since the export) stop the release with what changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bsa.benchmark import PAIRED_SCENARIO, query_letters
from bsa.eval.metrics import agreement
from bsa.pipeline.config import BuildConfig
from bsa.pipeline.errors import DataError
from bsa.pipeline.human_check import read_filled_sheet, spreadsheet_safe
from bsa.pipeline.io import read_table, write_json, write_table
from bsa.pipeline.labelstudio import NOTE, Question, labeling_config, read_export, write_tasks
from bsa.release.config import ReviewConfig, review_config
from bsa.release.files import release_candidates

DECISIONS = ("accept", "reject", "fix")  # fix: accept with the corrected risk summary
ACCEPTING = ("accept", "fix")
DECISION, CORRECTED, REVIEWER = "decision", "corrected_risk_summary", "reviewer"
ITEM_SHA, SET_SHA = "item_sha256", "candidates_sha256"
SHOWN = {"id": "Item id", "scenario": "Scenario", "query": "Query", "label": "Label (Category-Subcategory)",
         "risk_summary": "Risk summary"}  # what a reviewer reads, by sheet column (release columns renamed)
FROM_RELEASE = {"dataset_name": "scenario"}
SHEET, TASKS, REVIEWS = "review.csv", "tasks.json", "reviews.json"  # in build/review/
RELEASE_FILE = "review.json"  # in build/release/: every candidate's decision
KEPT, CORRECTED_OUTCOME, REJECTED, HELD_BACK = "kept", "corrected", "rejected", "held back"


def review_dir(config: BuildConfig) -> Path:
    return config.build_path / "review"


def reviews_path(config: BuildConfig) -> Path:
    """Where `bsa review import` records the reviews (their presence turns the review on)."""
    return review_dir(config) / REVIEWS


@dataclass(frozen=True)
class Candidates:
    """The release candidates as reviewers see them, with the sha256 of each item and of the whole set."""

    shown: pd.DataFrame  # SHOWN columns, indexed by id
    items: dict[str, str]  # id -> sha256 of the item as shown
    sha256: str  # of the whole set: every id with its item's sha256

    @classmethod
    def of(cls, release_frame: pd.DataFrame) -> Candidates:
        shown = release_frame.rename(columns=FROM_RELEASE)[list(SHOWN)]
        items = {row[0]: hashlib.sha256(json.dumps(row, ensure_ascii=False).encode()).hexdigest()
                 for row in shown.itertuples(index=False, name=None)}
        digest = hashlib.sha256(json.dumps(sorted(items.items())).encode()).hexdigest()
        return cls(shown.set_index("id", drop=False), items, digest)


# -- export --------------------------------------------------------------------------------------------------

def task_config() -> str:
    """The Label Studio labeling config: the item, the decision, a corrected risk summary, a note."""
    return labeling_config({name: title for name, title in SHOWN.items() if name != "id"},
                           [Question(DECISION, "query", list(DECISIONS),
                                     "Decision: accept, reject, or fix (accept with the corrected risk summary)")],
                           areas={CORRECTED: "Corrected risk summary (decision 'fix' only; Cognitive Shortcut: "
                                             "'Query A: ...' and 'Query B: ...' on two lines)"})


def _refuse_filled(sheet: Path) -> None:
    """DataError when a sheet about to be written anew already holds someone's reviews."""
    if not sheet.exists():
        return
    frame, _ = read_table(sheet, allow_empty=True)
    for column in (DECISION, CORRECTED, NOTE):
        if column in frame.columns and (frame[column].astype(str).str.strip() != "").any():
            raise DataError(sheet, "holds reviews: move it away (or `bsa review import` it) before exporting again",
                            field=column)


def export_review(config: BuildConfig) -> str:
    """Write the review sheet and Label Studio tasks of the release candidates; what to do next."""
    candidates = Candidates.of(release_candidates(config))
    rows = candidates.shown.reset_index(drop=True).assign(**{ITEM_SHA: list(candidates.items.values()),
                                                             SET_SHA: candidates.sha256})
    out = review_dir(config)
    _refuse_filled(out / SHEET)
    sheet = rows.assign(**{DECISION: "", CORRECTED: "", NOTE: "", REVIEWER: ""})
    sheet = sheet[[*SHOWN, DECISION, CORRECTED, NOTE, REVIEWER, ITEM_SHA, SET_SHA]]
    write_table(spreadsheet_safe(sheet, [c for c in SHOWN if c != "id"]), out / SHEET)
    task_file, config_file = write_tasks(out / TASKS, rows.to_dict("records"), task_config())
    return (f"wrote {out / SHEET}, {task_file} (Label Studio tasks) and {config_file} (its labeling config): "
            f"{len(rows)} candidates, set {candidates.sha256[:12]}.\n"
            f"Each reviewer fills '{DECISION}' ({'/'.join(DECISIONS)}) in a copy of the sheet (or labels the "
            f"tasks and exports JSON); then: bsa review import FILE1 FILE2 ...")


# -- import --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Review:
    """One reviewer's decision on one candidate, and where it was read."""

    id: str
    reviewer: str
    decision: str
    corrected: str
    note: str
    file: str
    line: int  # the CSV row's line, or the task's position in a Label Studio export


@dataclass(frozen=True)
class _Row:
    values: dict[str, str]
    line: int
    where: str  # "" for a CSV row (its line is the error's line), "task N: " for a Label Studio task


def _decision(value: str, labels: Sequence[str]) -> str | None:
    return value.lower() if value.lower() in labels else None


def _sheet_rows(path: Path) -> list[_Row]:
    filled = read_filled_sheet(path, {DECISION: lambda row: DECISIONS}, required=["id", ITEM_SHA, SET_SHA],
                               match=_decision, what="a decision", texts=[CORRECTED, NOTE],
                               written_by="bsa review export")
    columns = ["id", ITEM_SHA, SET_SHA, DECISION, CORRECTED, NOTE, REVIEWER]
    filled = filled.reindex(columns=[*columns, "_line"], fill_value="")
    return [_Row({c: str(row[c]).strip() for c in columns}, int(row["_line"]), "")
            for _, row in filled.iterrows()]


def _export_rows(path: Path) -> list[_Row]:
    rows = []
    for task in read_export(path):
        where = f"task {task.position}: "
        if task.other_annotations:
            raise DataError(path, f"{where}{task.other_annotations + 1} completed annotations: export one file "
                                  "per reviewer (each review counts once)", field="annotations")
        decision = task.choices.get(DECISION, "")
        if decision and _decision(decision, DECISIONS) is None:
            raise DataError(path, f"{where}'{decision}' is not a decision (use one of {', '.join(DECISIONS)})",
                            field=DECISION)
        values = {key: str(task.data.get(key) or "") for key in ("id", ITEM_SHA, SET_SHA)}
        values.update({DECISION: decision.lower(), CORRECTED: task.texts.get(CORRECTED, "").strip(),
                       NOTE: task.texts.get(NOTE, "").strip(), REVIEWER: task.annotator or ""})
        rows.append(_Row(values, task.position, where))
    if not any(row.values[DECISION] for row in rows):
        raise DataError(path, "no task has a decision", field=DECISION)
    return rows


def read_reviews(path: Path, candidates: Candidates) -> list[Review]:
    """One reviewer's file (a filled `review.csv`, or a Label Studio JSON export), checked against the
    candidates: DataError naming file, line (or task) and field of the first bad row."""
    rows = _export_rows(path) if path.suffix.lower() == ".json" else _sheet_rows(path)

    def fail(row: _Row, message: str, column: str) -> DataError:
        return DataError(path, row.where + message, line=None if row.where else row.line, field=column)

    names = {row.values[REVIEWER] for row in rows if row.values[DECISION] and row.values[REVIEWER]}
    if len(names) > 1:
        first = next(r for r in rows if r.values[REVIEWER] and r.values[REVIEWER] != min(names))
        raise fail(first, f"several reviewers in one file ({', '.join(sorted(names))}): one file per reviewer",
                   REVIEWER)
    reviewer = names.pop() if names else path.stem
    reviews: list[Review] = []
    seen: dict[str, int] = {}
    for row in rows:
        values = row.values
        decision, item = values[DECISION], values["id"]
        corrected = "\n".join(line.strip() for line in values[CORRECTED].splitlines() if line.strip())
        if not (decision or corrected or values[NOTE]):
            continue  # a Label Studio annotation submitted empty
        if not decision:
            raise fail(row, "a corrected risk summary or note, but no decision", DECISION)
        if values[SET_SHA] != candidates.sha256:
            raise fail(row, f"STALE: reviews of another candidate set ({values[SET_SHA][:12] or 'none'}; the "
                            f"candidates are now {candidates.sha256[:12]}): the candidates changed since this "
                            "sheet was exported; run `bsa review export` again and review the new sheet", SET_SHA)
        if item not in candidates.items:
            raise fail(row, f"unknown id '{item}' (not one of the {len(candidates.items)} release candidates)",
                       "id")
        if values[ITEM_SHA] != candidates.items[item]:
            raise fail(row, "the item differs from the candidate of that id (edited in the sheet?)", ITEM_SHA)
        if item in seen:
            raise fail(row, f"id '{item}' reviewed twice in this file (first at {seen[item]})", "id")
        seen[item] = row.line
        if decision == "fix" and not corrected:
            raise fail(row, "decision 'fix' needs a corrected risk summary", CORRECTED)
        if corrected and decision != "fix":
            raise fail(row, f"a corrected risk summary needs decision 'fix' (got '{decision}')", CORRECTED)
        if corrected and candidates.shown.at[item, "scenario"] == PAIRED_SCENARIO \
                and query_letters(corrected) != ["A", "B"]:
            raise fail(row, f"a {PAIRED_SCENARIO} risk summary is 'Query A: ...' and 'Query B: ...' on two lines",
                       CORRECTED)
        reviews.append(Review(item, reviewer, decision, corrected, values[NOTE], str(path), row.line))
    return reviews


def read_all(paths: Iterable[Path], candidates: Candidates) -> list[Review]:
    """Every reviewer's reviews; two files of the same reviewer are duplicate reviews (DataError)."""
    reviews: list[Review] = []
    files: dict[str, str] = {}
    for path in paths:
        got = read_reviews(Path(path), candidates)
        name = got[0].reviewer
        if name in files:
            raise DataError(path, f"reviewer '{name}' already reviewed in {files[name]}: one file per reviewer",
                            field=REVIEWER)
        files[name] = str(path)
        reviews += got
    return reviews


# -- deciding ------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What the reviews of one candidate decide, by the rule."""

    id: str
    outcome: str  # kept | corrected | rejected | held back
    reason: str
    reviews: list[Review]
    risk_summary: str = ""  # the correction applied (corrected only)
    disagreement: bool = False  # the reviewers' decisions differ, or their corrections do

    @property
    def released(self) -> bool:
        return self.outcome in (KEPT, CORRECTED_OUTCOME)

    def provenance(self, section: ReviewConfig) -> dict[str, Any]:
        """The item's review record: rule, outcome, and each reviewer's decision, correction and note."""
        return {"rule": section.rule, "min_reviewers": section.min_reviewers, "outcome": self.outcome,
                "reason": self.reason,
                "reviews": [{"reviewer": r.reviewer, "decision": r.decision, "corrected_risk_summary": r.corrected,
                             "note": r.note} for r in self.reviews]}


def decide(item: str, reviews: list[Review], section: ReviewConfig) -> Outcome:
    """Kept when the rule's share of reviewers accept (fix counts as accept); corrected when they fixed it
    with one corrected summary; held back with too few reviews or conflicting corrections."""
    count, accepting = len(reviews), [r for r in reviews if r.decision in ACCEPTING]
    corrections = sorted({r.corrected for r in accepting if r.decision == "fix"})
    differ = len({r.decision for r in reviews}) > 1 or len(corrections) > 1
    if count < section.min_reviewers:
        return Outcome(item, HELD_BACK, f"{count} of {section.min_reviewers} reviews", reviews, disagreement=differ)
    keep = len(accepting) == count if section.rule == "unanimous" else 2 * len(accepting) > count
    if not keep:
        return Outcome(item, REJECTED, f"{count - len(accepting)} of {count} reject, rule {section.rule}", reviews,
                       disagreement=differ)
    if len(corrections) > 1:
        return Outcome(item, HELD_BACK, f"{len(corrections)} different corrections to resolve", reviews,
                       disagreement=True)
    if corrections:
        return Outcome(item, CORRECTED_OUTCOME, f"{len(accepting)} of {count} accept, corrected", reviews,
                       corrections[0], differ)
    return Outcome(item, KEPT, f"{len(accepting)} of {count} accept", reviews, disagreement=differ)


def decision_agreement(reviews: list[Review]) -> dict[str, Any]:
    """Agreement on the decision over the items every reviewer decided: Cohen's kappa for two reviewers,
    Fleiss' for more (None when undefined: one reviewer, or one decision only), and the share of those
    items on which all reviewers agree."""
    table = pd.DataFrame([asdict(r) for r in reviews]).pivot(index="id", columns="reviewer", values="decision")
    table = table.dropna()
    raters = table.shape[1]
    figures: dict[str, Any] = {"method": None, "reviewers": raters, "items": len(table), "kappa": None,
                               "all_agree": round(float((table.nunique(axis=1) == 1).mean()), 4) if len(table) else None}
    if raters < 2 or table.empty:
        return figures
    if raters == 2:
        return {**figures, "method": "Cohen's kappa",
                "kappa": agreement(table.iloc[:, 0].tolist(), table.iloc[:, 1].tolist())["kappa"]}
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    counts, _ = aggregate_raters(table.to_numpy())
    kappa = float(fleiss_kappa(counts)) if counts.shape[1] > 1 else None
    return {**figures, "method": "Fleiss' kappa", "kappa": None if kappa is None else round(kappa, 4)}


@dataclass
class ReviewSummary:
    """The review of a candidate set: who reviewed, how much they agree, and each candidate's outcome."""

    rule: ReviewConfig
    candidates_sha256: str
    reviewers: dict[str, dict[str, Any]]  # name -> file and items reviewed
    agreement: dict[str, Any]
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(o.outcome == outcome for o in self.outcomes)

    @property
    def disagreements(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.disagreement]

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule.rule, "min_reviewers": self.rule.min_reviewers,
                "candidates_sha256": self.candidates_sha256, "reviewers": self.reviewers,
                "agreement": self.agreement,
                "counts": {name: self.count(name) for name in (KEPT, CORRECTED_OUTCOME, REJECTED, HELD_BACK)},
                "items": [{"id": o.id, **o.provenance(self.rule), "corrected_risk_summary": o.risk_summary,
                           "disagreement": o.disagreement} for o in self.outcomes]}


def summarise(candidates: Candidates, reviews: list[Review], section: ReviewConfig) -> ReviewSummary:
    """Every candidate decided, in candidate order (one without a review is held back)."""
    by_item: dict[str, list[Review]] = {item: [] for item in candidates.items}
    reviewers: dict[str, dict[str, Any]] = {}
    for review in reviews:
        by_item[review.id].append(review)
        entry = reviewers.setdefault(review.reviewer, {"file": review.file, "items": 0})
        entry["items"] += 1
    return ReviewSummary(section, candidates.sha256, reviewers, decision_agreement(reviews),
                         [decide(item, found, section) for item, found in by_item.items()])


def report(summary: ReviewSummary, candidates: Candidates) -> str:
    """The import's report: reviewers, agreement, outcomes by the rule, then every disagreement."""
    figures = summary.agreement
    kappa = "undefined" if figures["kappa"] is None else f"{figures['kappa']:.3f}"
    lines = [f"{len(summary.reviewers)} reviewers: " + ", ".join(
                 f"{name} ({entry['items']} items)" for name, entry in summary.reviewers.items()),
             f"agreement on the decision: {figures['method'] or 'none (one reviewer)'} = {kappa} over "
             f"{figures['items']} items decided by every reviewer, all agree on "
             + ("-" if figures["all_agree"] is None else f"{figures['all_agree']:.1%}"),
             f"rule {summary.rule.rule} (min_reviewers {summary.rule.min_reviewers}): "
             + ", ".join(f"{summary.count(name)} {name}" for name in (KEPT, CORRECTED_OUTCOME, REJECTED, HELD_BACK))
             + f" of {len(summary.outcomes)} candidates",
             f"{len(summary.disagreements)} disagreements:"]
    for outcome in summary.disagreements:
        decisions = ", ".join(f"{r.reviewer}: {r.decision}" for r in outcome.reviews)
        query = " ".join(str(candidates.shown.at[outcome.id, "query"]).split())
        lines.append(f"  {outcome.id}  {decisions} -> {outcome.outcome} ({outcome.reason})  "
                     f"{json.dumps(query[:60], ensure_ascii=False)}")
    return "\n".join(lines)


def import_reviews(config: BuildConfig, paths: Sequence[Path]) -> str:
    """Read one file per reviewer, record the reviews in `build/review/reviews.json` (replacing those on
    file) and report agreement, outcomes and disagreements."""
    candidates = Candidates.of(release_candidates(config))
    reviews = read_all(paths, candidates)
    summary = summarise(candidates, reviews, review_config(config))
    target = write_json({"candidates_sha256": candidates.sha256, "items": candidates.items,
                         "reviews": [asdict(r) for r in reviews]}, reviews_path(config))
    return f"{report(summary, candidates)}\nwrote {target}; `bsa release` (or `make build-dataset`) applies it"


# -- release -------------------------------------------------------------------------------------------------

def stale_message(recorded: dict[str, str], candidates: Candidates) -> str:
    changed = sum(item in candidates.items and candidates.items[item] != sha for item, sha in recorded.items())
    new = sum(item not in recorded for item in candidates.items)
    gone = sum(item not in candidates.items for item in recorded)
    return (f"STALE REVIEW: the reviews on file are of another candidate set ({changed} items changed, {new} new, "
            f"{gone} gone since `bsa review export`). Run `bsa review export`, have the new sheet reviewed and "
            "`bsa review import` it; or delete this file to release without a human review.")


def apply_review(config: BuildConfig, frame: pd.DataFrame) -> tuple[pd.DataFrame, ReviewSummary | None]:
    """The release frame as the reviews on file decide it: rejected and held-back items out, corrections
    in, a `review` provenance column (JSON); unchanged, with None, when no review is on file."""
    path = reviews_path(config)
    if not path.exists():
        return frame, None
    record = json.loads(path.read_text(encoding="utf-8"))
    candidates = Candidates.of(frame)
    if record.get("candidates_sha256") != candidates.sha256:
        raise DataError(path, stale_message(record.get("items", {}), candidates))
    section = review_config(config)
    summary = summarise(candidates, [Review(**r) for r in record["reviews"]], section)
    released = {o.id: o for o in summary.outcomes if o.released}
    kept = frame[frame["id"].isin(released)].reset_index(drop=True)
    if kept.empty:
        raise DataError(path, "the reviewers kept no item: nothing to release")
    outcomes = [released[item] for item in kept["id"]]
    kept["review"] = [json.dumps({**o.provenance(section), **({"original_risk_summary": text} if o.risk_summary
                                                                else {})}, ensure_ascii=False)
                      for o, text in zip(outcomes, frame.set_index("id").loc[kept["id"], "risk_summary"], strict=True)]
    kept["risk_summary"] = [o.risk_summary or text for o, text in zip(outcomes, kept["risk_summary"], strict=True)]
    return kept, summary
