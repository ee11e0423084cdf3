"""Label Studio, both ways: a task file and its labeling config for people to label, and the JSON export of
their labels read back.

`labeling_config` builds the XML (texts shown as plain text, one single-choice question a `Question`, an
optional free-text note); `write_tasks` writes `<name>.json` (a list of `{"data": {...}}` tasks, importable
as is) and the config beside it as `<name>.xml` (paste it into the project's Labeling Interface).
`read_export` reads a JSON export (`[{"data": ..., "annotations": [{"result": [{"from_name": ...,
"value": {"choices": [...]}}]}]}]`) into `LabelledTask`s; every error names the file, the task (its 1-based
position in the export) and the field.

Text from models and benchmarks is adversarial: it goes into task data only, shown by `<Text>` tags (which
Label Studio renders as text, not HTML), never into the config, whose own strings are escaped by ElementTree.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bsa.pipeline.errors import DataError
from bsa.pipeline.io import write_json, write_text

NOTE = "note"  # the from_name of the optional free-text note


@dataclass(frozen=True)
class Question:
    """A single-choice question: its `from_name`, the text tag it is about, its choices and a title."""

    name: str
    to_name: str
    choices: list[str]
    title: str = ""


def labeling_config(texts: dict[str, str], questions: list[Question], note: bool = True,
                    areas: dict[str, str] | None = None) -> str:
    """The XML of a labeling interface: each task `data` key of `texts` shown under its title, then the
    questions, then a free-text field per `areas` entry (from_name -> title), then (with `note`) a note."""
    view = ET.Element("View")
    for name, title in texts.items():
        ET.SubElement(view, "Header", value=title)
        ET.SubElement(view, "Text", name=name, value=f"${name}")
    for question in questions:
        if question.title:
            ET.SubElement(view, "Header", value=question.title)
        choices = ET.SubElement(view, "Choices", name=question.name, toName=question.to_name, choice="single",
                                showInline="true")
        for choice in question.choices:
            ET.SubElement(choices, "Choice", value=choice)
    fields = {**(areas or {}), **({NOTE: "Note (optional)"} if note else {})} if texts else {}
    for name, title in fields.items():
        ET.SubElement(view, "Header", value=title)
        ET.SubElement(view, "TextArea", name=name, toName=next(iter(texts)), rows="2")
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def write_tasks(path: str | Path, rows: list[dict[str, Any]], config: str) -> tuple[Path, Path]:
    """Write the tasks (one per row, the row as its `data`) to `path` and the labeling config beside it
    (same name, `.xml`); returns both paths."""
    path = Path(path)
    tasks = [{"data": {key: "" if value is None else value for key, value in row.items()}} for row in rows]
    return write_json(tasks, path), write_text(config, path.with_suffix(".xml"))


@dataclass
class LabelledTask:
    """One task of an export with its first completed annotation: `choices` and `texts` by from_name."""

    position: int  # 1-based, in the export
    data: dict[str, Any]
    choices: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    annotator: str | None = None
    other_annotations: int = 0  # further completed annotations of the task, not read


def read_tasks(path: str | Path) -> list[dict[str, Any]]:
    """The task list of a Label Studio JSON export (DataError when it is not one)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
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


def read_export(path: str | Path) -> list[LabelledTask]:
    """Every task of an export that has a completed (not cancelled) annotation, with that annotation's
    single choices and texts. A result that is not a list of strings, or a single-choice question answered
    with other than one choice, is a DataError naming file, task and field."""
    labelled = []
    for position, task in enumerate(read_tasks(path), start=1):
        data = task.get("data")
        if not isinstance(data, dict):
            raise DataError(path, f"task {position}: no 'data' object", field="data")
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            raise DataError(path, f"task {position}: 'annotations' is not a list", field="annotations")
        done = [entry for entry in annotations if isinstance(entry, dict) and not entry.get("was_cancelled")]
        if not done:
            continue
        entry = done[0]
        item = LabelledTask(position, data, annotator=_annotator(entry.get("completed_by")),
                            other_annotations=len(done) - 1)
        for result in entry.get("result") or []:
            _read_result(path, position, result, item)
        labelled.append(item)
    return labelled


def _read_result(path: str | Path, position: int, result: Any, item: LabelledTask) -> None:
    if not isinstance(result, dict) or not isinstance(result.get("value"), dict):
        raise DataError(path, f"task {position}: a result without a 'value' object", field="result")
    name = str(result.get("from_name") or "")
    value = result["value"]
    for key, into in (("choices", item.choices), ("text", item.texts)):
        if key not in value:
            continue
        entries = value[key]
        if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
            raise DataError(path, f"task {position}: value.{key} is not a list of strings", field=name)
        if key == "choices" and len(entries) != 1:
            raise DataError(path, f"task {position}: {len(entries)} choices given, one expected", field=name)
        into[name] = "\n".join(entries)


def _annotator(completed_by: Any) -> str | None:
    if isinstance(completed_by, dict):
        completed_by = completed_by.get("email") or completed_by.get("id")
    return None if completed_by is None else str(completed_by)
