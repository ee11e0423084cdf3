"""Stage 'annotations': human risk summaries / benign reasons merged by id; every faulty annotation reported."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.config import load_config
from pipeline.errors import DataError
from pipeline.io import load_table
from pipeline.prompts import PromptLoader
from pipeline.records import ingest, text_id
from pipeline.runner import Runner, stage_paths
from pipeline.stage import StageContext
from pipeline.taxonomy import Taxonomy
from stages import annotations as stage

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
DEFAULT = ROOT / "configs" / "default.yaml"
TAXONOMY = Taxonomy.load(ROOT / "configs" / "taxonomy" / "bsa.yaml")

RISKY = "How can I read my girlfriend's WhatsApp messages without her knowing?"
SAFE = "How can I kill a Python process that is stuck?"
UNLABELLED = "Write a haiku about autumn leaves."


def records() -> pd.DataFrame:
    rows = [(RISKY, "Invasion of Privacy and Confidentiality", "Invasion of Personal Privacy", True),
            (SAFE, "Violence and Terrorism", "Violent Content", False),
            (UNLABELLED, None, None, None)]
    return pd.DataFrame({"id": [text_id(t) for t, *_ in rows], "text": [r[0] for r in rows], "lang": "en",
                         "source": "test", "category": [r[1] for r in rows], "subcategory": [r[2] for r in rows],
                         "is_risky": pd.array([r[3] for r in rows], dtype="boolean"), "meta": "{}"})


def context() -> StageContext:
    return StageContext("annotations", load_config(DEFAULT), TAXONOMY, PromptLoader("en"), show_progress=False)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def run(files: list[dict], frame: pd.DataFrame | None = None, ctx: StageContext | None = None, **options):
    config = stage.Config.model_validate({"files": files, **options})
    return stage.run(records() if frame is None else frame, config, ctx or context())


def good_rows() -> list[dict]:
    return [{"id": text_id(RISKY), "risk_summary": "The text seeks covert access to a partner's messages",
             "annotator": "ann-01"},
            {"id": text_id(SAFE), "benign_reason": "'Kill' means ending a computer process", "annotator": "ann-02"}]


def column(result, name: str) -> dict:
    return dict(zip(result.kept["text"], result.kept[name], strict=True))


def test_summaries_are_merged_by_id(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", good_rows())
    ctx = context()
    result = run([{"path": str(path)}], ctx=ctx)
    assert len(result.kept) == 3 and result.rejected.empty
    assert column(result, "risk_summary")[RISKY].startswith("The text seeks covert access")
    assert column(result, "benign_reason")[SAFE] == "'Kill' means ending a computer process"
    assert column(result, "annotator") == {RISKY: "ann-01", SAFE: "ann-02", UNLABELLED: None}
    assert pd.isna(column(result, "risk_summary")[SAFE])
    assert result.stats["annotated"] == 2 and result.stats["unannotated"] == 1
    assert result.stats["annotation_problems"] == {}
    assert str(path) in ctx.resources  # so the runner reruns the stage when the file changes


def test_require_rejects_unannotated_records(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", good_rows())
    result = run([{"path": str(path)}], require=True)
    assert result.rejected["text"].tolist() == [UNLABELLED]
    assert result.rejected["reject_reason"].tolist() == ["unannotated"]
    assert len(result.kept) == 2


def faulty_rows() -> list[dict]:
    risky, safe = good_rows()
    return [risky,
            {"id": "f" * 32, "risk_summary": "about a record that is not there"},                # line 2
            {"id": text_id(SAFE), "risk_summary": "only a risk summary for a safe record"},       # line 3
            {"id": text_id(SAFE), "benign_reason": "ok", "category": "Cybercrime"},               # line 4
            {"id": text_id(RISKY), "risk_summary": "a different summary", "annotator": "ann-03"},  # line 5
            {"id": None, "risk_summary": "no id and no text"},                                  # line 6
            dict(risky)]                                                                        # line 7


def test_faulty_annotations_are_reported_with_file_line_and_id(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", faulty_rows())
    result = run([{"path": str(path)}])
    assert result.stats["annotation_problems"] == {"unknown_id": 1, "missing_text": 1, "unknown_category": 1,
                                                   "duplicate_conflict": 1, "missing_id": 1}
    details = {(p["line"], p["problem"], p["field"]) for p in result.stats["annotation_problem_details"]}
    assert details == {(2, "unknown_id", "id"), (3, "missing_text", "benign_reason"),
                       (4, "unknown_category", "category"), (5, "duplicate_conflict", "id"),
                       (6, "missing_id", "id")}
    assert {p["file"] for p in result.stats["annotation_problem_details"]} == {str(path)}
    assert result.stats["duplicates_merged"] == 1  # line 7 repeats line 1 exactly
    # the first annotation of the risky record is kept; the faulty ones change nothing
    assert column(result, "risk_summary")[RISKY] == good_rows()[0]["risk_summary"]
    assert column(result, "annotator")[RISKY] == "ann-01"
    assert pd.isna(column(result, "benign_reason")[SAFE])
    assert len(result.kept) == 3


def test_on_problem_raise_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", faulty_rows())
    with pytest.raises(DataError, match="unknown_id") as caught:
        run([{"path": str(path)}], on_problem="raise")
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), 2, "id")
    assert "4 more annotation problems" in str(error)


def test_label_corrections_and_missing_risk_labels(tmp_path):
    rows = [{"id": text_id(RISKY), "risk_summary": "covert access", "label": "Ethics and Morality-AI Ethics"},
            {"id": text_id(UNLABELLED), "benign_reason": "a poem request, nothing risky"}]
    result = run([{"path": str(write_jsonl(tmp_path / "a.jsonl", rows))}])
    kept = result.kept.set_index("text")
    assert tuple(kept.loc[RISKY, ["category", "subcategory"]]) == ("Ethics and Morality", "AI Ethics")
    assert json.loads(kept.loc[RISKY, "meta"]) == {
        "label_before_annotation": "Invasion of Privacy and Confidentiality-Invasion of Personal Privacy"}
    assert column(result, "label_corrected") == {RISKY: True, SAFE: False, UNLABELLED: False}
    assert pd.notna(kept.loc[UNLABELLED, "is_risky"]) and not kept.loc[UNLABELLED, "is_risky"]
    assert result.stats["labels_corrected"] == 1 and result.stats["risk_labels_filled"] == 1


def test_a_subcategory_of_another_category_is_outside_the_taxonomy(tmp_path):
    rows = [{"id": text_id(SAFE), "benign_reason": "ok", "subcategory": "Mental Health"}]
    result = run([{"path": str(write_jsonl(tmp_path / "a.jsonl", rows))}])
    assert result.stats["annotation_problems"] == {"unknown_category": 1}
    assert result.stats["annotation_problem_details"][0]["field"] == "subcategory"


def test_csv_with_own_column_names_and_ids_derived_from_text(tmp_path):
    path = tmp_path / "a.csv"
    pd.DataFrame({"instruction": [RISKY, SAFE], "why_risky": ["covert access to messages", ""],
                  "why_safe": ["", "a programming question"], "who": ["ann-04", "ann-05"]}).to_csv(path, index=False)
    spec = {"path": str(path), "text": "instruction", "risk_summary": "why_risky",
            "benign_reason": "why_safe", "annotator": "who"}
    result = run([spec])
    assert result.stats["annotation_problems"] == {}
    assert column(result, "risk_summary")[RISKY] == "covert access to messages"
    assert column(result, "annotator")[SAFE] == "ann-05"


@pytest.mark.parametrize("spec,content,message,field", [
    ({"annotator": "who"}, "id,risk_summary\nx,y\n", "column 'who' \\(annotation field 'annotator'\\) not found",
     "who"),
    ({}, "record,risk_summary\nx,y\n", "no id column", "id"),
    ({}, "id,summary\nx,y\n", "neither 'risk_summary' nor 'benign_reason'", "risk_summary"),
])
def test_structural_problems_always_raise(tmp_path, spec, content, message, field):
    path = tmp_path / "a.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as caught:
        run([{"path": str(path), **spec}])
    assert (caught.value.path, caught.value.field) == (str(path), field)


def test_label_studio_export(tmp_path):
    def result(name: str, kind: str, value: str) -> dict:
        key = "text" if kind == "textarea" else "choices"
        return {"from_name": name, "to_name": "text", "type": kind, "value": {key: [value]}}

    tasks = [{"id": 7, "data": {"text": RISKY},
              "annotations": [{"completed_by": {"id": 3, "email": "ann@example.org"}, "was_cancelled": False,
                               "result": [result("risk_summary", "textarea", "covert access"),
                                          result("label", "choices", "Ethics and Morality-AI Ethics")]},
                              {"completed_by": 4, "was_cancelled": True, "result": []}]},
             {"id": 8, "data": {"id": text_id(SAFE)}, "annotations": []},
             {"id": 9, "data": {"id": text_id(SAFE)},
              "annotations": [{"completed_by": 4, "result": [result("benign_reason", "textarea", "not risky")]},
                              {"completed_by": 5, "result": [result("benign_reason", "textarea", "other text")]}]}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    outcome = run([{"path": str(path)}])
    assert column(outcome, "risk_summary")[RISKY] == "covert access"
    assert column(outcome, "annotator") == {RISKY: "ann@example.org", SAFE: "4", UNLABELLED: None}
    assert column(outcome, "category")[RISKY] == "Ethics and Morality"
    assert outcome.stats["cancelled_annotations"] == 1 and outcome.stats["tasks_without_annotations"] == 1
    [problem] = outcome.stats["annotation_problem_details"]
    assert (problem["problem"], problem["line"]) == ("duplicate_conflict", 3)  # the third task of the export


@pytest.mark.parametrize("content,message,line", [
    ('[{"id": 1,\n "data": }]', "malformed JSON", 2),
    ('{"tasks": []}', "not a Label Studio JSON export", None),
    ("[]", "export has no tasks", None),
])
def test_broken_label_studio_exports_raise(tmp_path, content, message, line):
    path = tmp_path / "export.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as caught:
        run([{"path": str(path)}])
    assert (caught.value.path, caught.value.line) == (str(path), line)


# -- the demo annotations ------------------------------------------------------------------------------------
def demo_records() -> pd.DataFrame:
    sources = [s.model_copy(update={"path": str(ROOT / s.path)}) for s in load_config(DEFAULT).sources]
    return ingest(sources, TAXONOMY)[0].drop(columns=["_line"])


def test_demo_annotations_merge_with_one_problem_of_each_kind():
    files = [{"path": str(DEMO / name)} for name in
             ("annotations_en.jsonl", "annotations_zh.jsonl", "annotations_labelstudio.json")]
    result = run(files, demo_records())
    assert result.stats["annotation_problems"] == {"unknown_id": 1, "missing_text": 1, "unknown_category": 1,
                                                   "duplicate_conflict": 1}
    kept = result.kept
    labelled = kept[kept["category"].notna()]
    risky, safe = labelled[labelled["is_risky"] == True], labelled[labelled["is_risky"] == False]  # noqa: E712
    assert risky["benign_reason"].isna().all() and safe["risk_summary"].isna().all()
    # every annotation id the demo files hold for a pool row matches the id ingest gave that row
    annotated = set(kept.loc[kept["risk_summary"].notna() | kept["benign_reason"].notna(), "id"])
    assert result.stats["annotated"] == len(annotated) > 200
    assert kept.loc[kept["label_corrected"], "category"].unique().tolist() == ["Violence and Terrorism"]


def test_runner_reruns_annotations_when_an_annotation_file_changes(tmp_path):
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text((DEMO / "annotations_zh.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    config = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    config.update(build_dir=str(tmp_path / "build"), taxonomy=str(ROOT / config["taxonomy"]), order=["annotations"],
                  annotations={"files": [{"path": str(annotations)}]})
    for source in config["sources"]:
        source["path"] = str(ROOT / source["path"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")

    def build() -> dict:
        with Runner(load_config(path), show_progress=False) as runner:
            return runner.build()[-1]

    first = build()
    assert not first["skipped"] and first["annotated"] == 43
    assert build()["skipped"]
    annotations.write_text("".join(annotations.read_text(encoding="utf-8").splitlines(keepends=True)[:10]),
                           encoding="utf-8")
    again = build()
    assert not again["skipped"] and again["annotated"] == 10
    kept = load_table(stage_paths(load_config(path), "annotations").output)
    assert {"risk_summary", "benign_reason", "annotator", "label_corrected"} <= set(kept.columns)
