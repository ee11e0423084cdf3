"""Stage 'annotations': merge human risk annotations into the records, keyed by record id.

Annotation files are tables (CSV, TSV, JSONL, Parquet: read by extension) or Label Studio JSON exports.
Each annotation gives, for one record, a risk summary (risky records: why the request is risky, BSA style)
or a benign reason (safe look-alikes: why the request only seems risky), optionally who wrote it and a
corrected category/subcategory. A blank id is derived from the instruction text exactly as ingest does.

Columns added: `risk_summary`, `benign_reason`, `annotator` (None where absent) and `label_corrected`
(True where the annotation changed the category or subcategory; the old label is kept in `meta` under
`label_before_annotation`). A record without a risk label takes it from the annotation: a risk summary alone
marks it risky, a benign reason alone marks it safe.

Every faulty annotation is reported, never silently dropped: `missing_id`, `dropped_earlier` (the id is
a record an earlier stage of the build rejected: wasted work, the detail names that stage, its reason and
its detail), `unknown_id` (no record with this id reaches the stage and no earlier stage dropped one),
`missing_text` (no summary of the kind the record's risk label needs), `unknown_category` (outside the
taxonomy) and `duplicate_conflict` (a second, different annotation of one id; the first one wins). Counts go
to `stats["annotation_problems"]`, each problem with file, line and id to `stats["annotation_problem_details"]`.
Earlier drops are read from the build directory's `NN_<stage>.rejects.parquet` of ingest and of the stages
before this one in `order` (the latest stage to drop an id names it); each file read is declared a resource,
so changed rejects rerun the stage, and the files read are listed in `stats["earlier_rejects_read"]` (path ->
rows). Run alone (`bsa stage`) with no such files, every id not in the input is `unknown_id`.
With `on_problem: raise` the first problem raises a DataError naming file, line and field instead.
For a Label Studio export the "line" is the task's position in the export (1-based).
Records left without an annotation are kept, or rejected as `unannotated` when `require: true`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from bsa.pipeline.config import Section
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import load_table
from bsa.pipeline.layout import INGEST
from bsa.pipeline.records import REJECT_DETAIL, REJECT_REASON, text_id
from bsa.pipeline.stage import Stage, StageContext, reject, whole
from bsa.pipeline.taxonomy import Taxonomy

ANNOTATION_COLUMNS = ["risk_summary", "benign_reason", "annotator"]
FIELDS = ["id", "text", "risk_summary", "benign_reason", "annotator", "category", "subcategory", "label"]
MAX_LOGGED_PROBLEMS = 20


class AnnotationFile(Section):
    """One annotation file and where its fields are: table columns, or for Label Studio the task `data`
    keys (`id`, `text`) and the control tags' `from_name`s (summaries, category, subcategory, label)."""

    path: str
    format: Literal["auto", "table", "labelstudio"] = "auto"  # auto: .json is Label Studio, else a table
    id: str = "id"
    text: str | None = "text"  # the instruction, hashed into the id where the id is blank
    risk_summary: str = "risk_summary"
    benign_reason: str = "benign_reason"
    annotator: str | None = "annotator"  # Label Studio: taken from `completed_by`
    category: str | None = "category"
    subcategory: str | None = "subcategory"
    label: str | None = "label"  # a `Category-Subcategory` label, instead of category/subcategory

    @property
    def kind(self) -> str:
        if self.format != "auto":
            return self.format
        return "labelstudio" if Path(self.path).suffix.lower() == ".json" else "table"


class Config(Section):
    files: list[AnnotationFile] = []
    require: bool = False  # reject records without an annotation as `unannotated`
    on_problem: Literal["report", "raise"] = "report"


@dataclass(frozen=True)
class Annotation:
    """One annotation as read, located in its file."""

    spec: AnnotationFile
    line: int
    id: str | None
    risk_summary: str | None = None
    benign_reason: str | None = None
    annotator: str | None = None
    category: str | None = None
    subcategory: str | None = None
    label_field: str | None = None  # the field the category came from (for error messages)

    def content(self) -> tuple:
        return self.risk_summary, self.benign_reason, self.category, self.subcategory


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    id: str | None
    field: str | None
    problem: str
    detail: str

    @classmethod
    def of(cls, annotation: Annotation, field: str | None, problem: str, detail: str) -> Problem:
        return cls(annotation.spec.path, annotation.line, annotation.id, field, problem, detail)

    def error(self, others: int) -> DataError:
        more = f" ({others} more annotation problems)" if others else ""
        return DataError(self.file, f"{self.problem}: {self.detail} (id {self.id}){more}", self.line, self.field)


def _text(value: object) -> str | None:
    """A stripped string, or None for blanks, None and NaN."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return None
    text = str(value).strip()
    return text or None


def _label(category: object, subcategory: object) -> str:
    """`Category-Subcategory` (or just the category), for messages and provenance."""
    return "-".join(part for part in (_text(category), _text(subcategory)) if part)


def _annotation(spec: AnnotationFile, line: int, values: dict[str, Any], annotator: str | None) -> Annotation:
    """An Annotation from raw values keyed by record field name."""
    category, subcategory = _text(values.get("category")), _text(values.get("subcategory"))
    label_field = spec.category if category else spec.subcategory if subcategory else None
    label = _text(values.get("label"))
    if label and not (category or subcategory):
        (category, subcategory), label_field = Taxonomy.split(label), spec.label
    record_id = _text(values.get("id"))
    text = _text(values.get("text"))
    return Annotation(spec, line, record_id or (text_id(text) if text else None),
                      _text(values.get("risk_summary")), _text(values.get("benign_reason")), annotator,
                      category or None, subcategory or None, label_field)


def read_table_annotations(spec: AnnotationFile, ctx: StageContext) -> list[Annotation]:
    """Annotations from a CSV/TSV/JSONL/Parquet table; missing columns the config relies on are errors."""
    frame = ctx.read_table(spec.path)
    columns = {field: getattr(spec, field) for field in FIELDS if getattr(spec, field)}
    for field in spec.model_fields_set & set(columns):
        if columns[field] not in frame.columns:
            raise DataError(spec.path, f"column '{columns[field]}' (annotation field '{field}') not found",
                            field=columns[field])
    if columns["id"] not in frame.columns and columns.get("text") not in frame.columns:
        raise DataError(spec.path, "no id column (and no text column to derive ids from)", field=spec.id)
    if spec.risk_summary not in frame.columns and spec.benign_reason not in frame.columns:
        raise DataError(spec.path, f"neither '{spec.risk_summary}' nor '{spec.benign_reason}' column found",
                        field=spec.risk_summary)
    present = {field: column for field, column in columns.items() if column in frame.columns}
    annotations = []
    for row in frame.to_dict(orient="records"):
        values = {field: row[column] for field, column in present.items()}
        annotations.append(_annotation(spec, int(row["_line"]), values, _text(values.get("annotator"))))
    return annotations


def _ls_value(result: dict) -> str:
    value = result.get("value") or {}
    items = value.get("text", value.get("choices", []))
    return "\n".join(str(item) for item in items) if isinstance(items, list) else str(items)


def _ls_annotator(completed_by: object) -> str | None:
    if isinstance(completed_by, dict):
        return _text(completed_by.get("email") or completed_by.get("id"))
    return _text(completed_by)


def _ls_tasks(path: Path) -> list[dict]:
    try:
        tasks = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataError(path, f"invalid UTF-8 (byte offset {err.start})") from err
    except json.JSONDecodeError as err:
        raise DataError(path, f"malformed JSON ({err.msg}, column {err.colno})", err.lineno) from err
    if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
        raise DataError(path, "not a Label Studio JSON export (expected a list of tasks)")
    if not tasks:
        raise DataError(path, "export has no tasks")
    return tasks


def read_labelstudio_annotations(spec: AnnotationFile, ctx: StageContext) -> tuple[list[Annotation], Counter]:
    """Annotations from a Label Studio JSON export: one per completed (not cancelled) task annotation."""
    tasks = _ls_tasks(ctx.resource(spec.path))
    by_tag = {getattr(spec, field): field for field in ("risk_summary", "benign_reason", "category",
                                                        "subcategory", "label") if getattr(spec, field)}
    annotations, skipped = [], Counter()
    for position, task in enumerate(tasks, start=1):
        data = task.get("data") or {}
        done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        skipped["cancelled_annotations"] += len(task.get("annotations") or []) - len(done)
        skipped["tasks_without_annotations"] += not done
        for entry in done:
            values: dict[str, Any] = {"id": data.get(spec.id), "text": data.get(spec.text) if spec.text else None}
            for result in entry.get("result") or []:
                field = by_tag.get(result.get("from_name"))
                if field:
                    values[field] = _ls_value(result)
            annotations.append(_annotation(spec, position, values, _ls_annotator(entry.get("completed_by"))))
    return annotations, skipped


@dataclass(frozen=True)
class Drop:
    """Why an earlier stage of the build rejected a record."""

    stage: str
    reason: str
    detail: str | None = None

    def describe(self) -> str:
        return f"dropped by {self.stage}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


def earlier_drops(ctx: StageContext) -> tuple[dict[str, Drop], dict[str, int]]:
    """Records the earlier stages of this build rejected, by id, and the rejects files read (path -> rows).

    Reads `<build_dir>/NN_<stage>.rejects.parquet` of ingest and of every stage before this one in the
    configured order, where present (a stage run alone may have none), each declared a resource of the stage.
    When several stages dropped an id (ingest's `duplicate_id` and a later drop of the copy it kept), the
    latest one is named.
    """
    order = ctx.config.order
    earlier = [INGEST, *(order[:order.index(ctx.name)] if ctx.name in order else [])]
    drops: dict[str, Drop] = {}
    read: dict[str, int] = {}
    for name in earlier:
        path = ctx.paths_of(name).rejects
        if not path.exists():
            continue
        frame = load_table(ctx.resource(path))
        read[str(path)] = len(frame)
        if frame.empty or "id" not in frame.columns:
            continue
        reasons = frame[REJECT_REASON] if REJECT_REASON in frame.columns else pd.Series(None, index=frame.index)
        details = frame[REJECT_DETAIL] if REJECT_DETAIL in frame.columns else pd.Series(None, index=frame.index)
        found: dict[str, Drop] = {}
        for record_id, reason, detail in zip(frame["id"], reasons, details, strict=True):
            record_id = _text(record_id)
            if record_id is not None and record_id not in found:
                found[record_id] = Drop(name, _text(reason) or "unknown reason", _text(detail))
        drops.update(found)
    return drops, read


def check(annotation: Annotation, records: pd.DataFrame, taxonomy: Taxonomy,
          drops: dict[str, Drop] | None = None) -> Problem | None:
    """The first problem of one annotation against the records, the earlier stages' drops (None: no
    rejects were available to check) and the taxonomy, if any."""
    spec = annotation.spec
    if annotation.id is None:
        return Problem.of(annotation, spec.id, "missing_id", "no id, and no text to derive one from")
    if annotation.id not in records.index:
        drop = drops.get(annotation.id) if drops else None
        if drop is not None:
            return Problem.of(annotation, spec.id, "dropped_earlier", drop.describe())
        checked = ("nor did an earlier stage drop one" if drops is not None
                   else "no earlier stage's rejects to check")
        return Problem.of(annotation, spec.id, "unknown_id",
                          f"no record with this id reaches this stage ({len(records)} do); {checked}")
    record = records.loc[annotation.id]
    if annotation.category or annotation.subcategory:
        category, subcategory = corrected_label(annotation, record)
        if not taxonomy.is_valid(category, subcategory):
            return Problem.of(annotation, annotation.label_field, "unknown_category",
                              f"'{_label(category, subcategory)}' is not in taxonomy '{taxonomy.name}'")
    risky = record["is_risky"]
    if pd.isna(risky):
        if not (annotation.risk_summary or annotation.benign_reason):
            return Problem.of(annotation, spec.risk_summary, "missing_text", "no risk summary nor benign reason")
    elif bool(risky) and not annotation.risk_summary:
        return Problem.of(annotation, spec.risk_summary, "missing_text", "risky record without a risk summary")
    elif not bool(risky) and not annotation.benign_reason:
        return Problem.of(annotation, spec.benign_reason, "missing_text", "safe record without a benign reason")
    return None


def corrected_label(annotation: Annotation, record: pd.Series) -> tuple[str | None, str | None]:
    """The record's (category, subcategory) after the annotation's correction."""
    category = annotation.category or _text(record["category"])
    keeps_sub = category == _text(record["category"])
    return category, annotation.subcategory or (_text(record["subcategory"]) if keeps_sub else None)


def resolve(annotations: list[Annotation], records: pd.DataFrame, taxonomy: Taxonomy,
            drops: dict[str, Drop] | None = None) -> tuple[dict[str, Annotation], list[Problem], int]:
    """Valid annotations by id (identical duplicates merged), the problems found, and how many merged."""
    accepted: dict[str, Annotation] = {}
    problems: list[Problem] = []
    merged = 0
    for annotation in annotations:
        problem = check(annotation, records, taxonomy, drops)
        first = accepted.get(annotation.id) if problem is None else None
        if first is not None and first.content() != annotation.content():
            problem = Problem.of(annotation, annotation.spec.id, "duplicate_conflict",
                                 f"differs from the annotation at {first.spec.path}:{first.line}, which is kept")
        if problem is not None:
            problems.append(problem)
        elif first is not None:
            merged += 1
            names = [n for n in (first.annotator, annotation.annotator) if n]
            accepted[annotation.id] = replace(first, annotator=", ".join(dict.fromkeys(names)) or None)
        else:
            accepted[annotation.id] = annotation
    return accepted, problems, merged


def _with_meta(meta: object, key: str, value: str) -> str:
    data = json.loads(meta) if isinstance(meta, str) and meta else {}
    return json.dumps({**data, key: value}, ensure_ascii=False)


def merge(records: pd.DataFrame, accepted: dict[str, Annotation]) -> tuple[pd.DataFrame, Counter]:
    """Records with the annotation columns filled, labels corrected and missing risk labels set."""
    out = records.copy()
    found = [accepted.get(str(record_id)) for record_id in out["id"]]
    for column in ANNOTATION_COLUMNS:
        out[column] = pd.Series([getattr(a, column) if a else None for a in found], index=out.index, dtype=object)
    out["label_corrected"] = False
    if "meta" not in out.columns:
        out["meta"] = "{}"
    counts = Counter()
    for index, annotation in zip(out.index, found, strict=True):
        if annotation is None:
            continue
        record = out.loc[index]
        if pd.isna(record["is_risky"]) and bool(annotation.risk_summary) != bool(annotation.benign_reason):
            out.at[index, "is_risky"] = bool(annotation.risk_summary)
            counts["risk_labels_filled"] += 1
        category, subcategory = corrected_label(annotation, record)
        if (category, subcategory) != (_text(record["category"]), _text(record["subcategory"])):
            before = _label(record["category"], record["subcategory"])
            out.at[index, "category"], out.at[index, "subcategory"] = category, subcategory
            out.at[index, "meta"] = _with_meta(record["meta"], "label_before_annotation", before)
            out.at[index, "label_corrected"] = True
            counts["labels_corrected"] += 1
    return out, counts


def report(problems: list[Problem], ctx: StageContext) -> None:
    """Log the problems (the first few one per line), so none passes unnoticed."""
    for problem in problems[:MAX_LOGGED_PROBLEMS]:
        ctx.log.warning("%s", problem.error(0))
    if len(problems) > MAX_LOGGED_PROBLEMS:
        ctx.log.warning("%d more annotation problems: see annotation_problem_details in the stats",
                        len(problems) - MAX_LOGGED_PROBLEMS)


def read_all(files: list[AnnotationFile], ctx: StageContext) -> tuple[list[Annotation], dict[str, int], Counter]:
    """Every annotation of every file in order, how many each file gave, and what Label Studio skipped."""
    annotations, read, skipped = [], {}, Counter()
    for spec in files:
        if spec.kind == "labelstudio":
            found, ls_skipped = read_labelstudio_annotations(spec, ctx)
            skipped.update(ls_skipped)
        else:
            found = read_table_annotations(spec, ctx)
        annotations.extend(found)
        read[spec.path] = len(found)
    return annotations, read, skipped


def merge_annotations(records: pd.DataFrame, config: Config, ctx: StageContext) -> pd.DataFrame:
    """All rows at once (an annotation's id is looked up among every record): merge, check, report."""
    annotations, read, skipped = read_all(config.files, ctx)
    by_id = records.assign(id=records["id"].astype(str)).drop_duplicates("id").set_index("id", drop=False)
    drops, rejects_read = earlier_drops(ctx)
    accepted, problems, merged = resolve(annotations, by_id, ctx.taxonomy, drops if rejects_read else None)
    if problems and config.on_problem == "raise":
        raise problems[0].error(len(problems) - 1)
    report(problems, ctx)
    out, counts = merge(records, accepted)
    annotated = out["id"].astype(str).isin(accepted.keys())
    reasons = pd.Series(None, index=out.index, dtype=object)
    if config.require:
        reasons[~annotated] = "unannotated"
    ctx.report({"annotations_read": read, "earlier_rejects_read": rejects_read, "annotated": int(annotated.sum()),
                "unannotated": int((~annotated).sum()), "duplicates_merged": merged, **counts, **skipped,
                "annotation_problems": dict(Counter(p.problem for p in problems)),
                "annotation_problem_details": [asdict(p) for p in problems]})
    return reject(out, reasons, pd.Series("no annotation for this id", index=out.index))


STAGE = Stage("annotations", Config, (whole(merge_annotations),), needs=("id", "is_risky", "category", "subcategory"),
              adds=(*ANNOTATION_COLUMNS, "label_corrected"))
