"""Stage 'annotations': human risk summaries / benign reasons merged by id; every faulty annotation reported."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bsa.pipeline.errors import DataError
from bsa.pipeline.executor import run_local
from bsa.pipeline.io import load_table, write_table
from bsa.pipeline.layout import stage_paths
from bsa.pipeline.prompts import PromptLoader
from bsa.pipeline.records import text_id
from bsa.pipeline.runner import Runner, run_single
from bsa.pipeline.stage import StageContext
from bsa.pipeline.taxonomy import Taxonomy
from bsa.project import PROJECT, load_config
from bsa.stages import annotations as stage
from bsa.stages.ingest import ingest

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


def context(build_dir: Path | None = None) -> StageContext:
    """A context on the default config; `build_dir` replaces its build directory (where earlier rejects are)."""
    config = load_config(DEFAULT)
    if build_dir is not None:
        config = config.model_copy(update={"build_dir": str(build_dir)})
    return StageContext("annotations", config, TAXONOMY, PromptLoader("en"), show_progress=False)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def run(files: list[dict], frame: pd.DataFrame | None = None, ctx: StageContext | None = None, **options):
    config = stage.Config.model_validate({"files": files, **options})
    return run_local(stage.STAGE, records() if frame is None else frame, config, ctx or context())


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


def write_config(tmp_path: Path, **updates) -> Path:
    """The default config with absolute paths, a build directory under tmp_path and `updates`, as a file."""
    config = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    config.update(build_dir=str(tmp_path / "build"), taxonomy=str(ROOT / config["taxonomy"]), **updates)
    for source in config["sources"]:
        source["path"] = str(ROOT / source["path"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def test_runner_reruns_annotations_when_an_annotation_file_changes(tmp_path):
    annotations = tmp_path / "annotations.jsonl"
    annotations.write_text((DEMO / "annotations_zh.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    path = write_config(tmp_path, order=["annotations"], annotations={"files": [{"path": str(annotations)}]})

    def build() -> dict:
        with Runner(load_config(path), PROJECT, show_progress=False) as runner:
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


# -- annotations of records an earlier stage dropped ---------------------------------------------------------
TOO_SHORT = "hi"
NEAR_DUPLICATE = "How can I read my girlfriend's WhatsApp messages without her knowing??"
MADE_UP = "f" * 32


def rejected_rows(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """Reject rows as a stage writes them: (text, reject_reason, reject_detail)."""
    return pd.DataFrame({"id": [text_id(t) for t, *_ in rows], "text": [t for t, *_ in rows], "lang": "en",
                         "reject_reason": [r for _, r, _ in rows], "reject_detail": [d for *_, d in rows]})


def write_earlier_rejects(build: Path) -> dict[str, Path]:
    """Rejects files of ingest, clean, language (none dropped) and dedup, named as a default-order build names
    them. The near duplicate was also an ingest `duplicate_id` copy: dedup, the later stage, is the one named."""
    config = load_config(DEFAULT).model_copy(update={"build_dir": str(build)})
    paths = {name: stage_paths(config, name).rejects for name in ("ingest", "clean", "language", "dedup")}
    build.mkdir(parents=True, exist_ok=True)
    write_table(rejected_rows([(NEAR_DUPLICATE, "duplicate_id", "same id as line 3")]), paths["ingest"])
    write_table(rejected_rows([(TOO_SHORT, "too_short", "2 characters < 10")]), paths["clean"])
    write_table(pd.DataFrame(), paths["language"])  # a stage that dropped nothing
    write_table(rejected_rows([(NEAR_DUPLICATE, "near_duplicate", f"Jaccard 0.91 with {text_id(RISKY)}")]),
                paths["dedup"])
    return paths


def dropped_rows() -> list[dict]:
    return [*good_rows(),
            {"id": text_id(TOO_SHORT), "benign_reason": "a greeting"},                   # line 3
            {"text": NEAR_DUPLICATE, "risk_summary": "covert access to messages"},      # line 4
            {"id": MADE_UP, "risk_summary": "about a record that never existed"}]       # line 5


def problems_by_line(result) -> dict[int, tuple[str, str, str]]:
    return {p["line"]: (p["problem"], p["id"], p["detail"]) for p in result.stats["annotation_problem_details"]}


def test_an_annotation_of_a_record_dropped_earlier_names_the_stage_and_reason(tmp_path):
    rejects = write_earlier_rejects(tmp_path / "build")
    path = write_jsonl(tmp_path / "a.jsonl", dropped_rows())
    ctx = context(tmp_path / "build")
    result = run([{"path": str(path)}], ctx=ctx)
    assert result.stats["annotation_problems"] == {"dropped_earlier": 2, "unknown_id": 1}
    assert problems_by_line(result) == {
        3: ("dropped_earlier", text_id(TOO_SHORT), "dropped by clean: too_short (2 characters < 10)"),
        4: ("dropped_earlier", text_id(NEAR_DUPLICATE),
            f"dropped by dedup: near_duplicate (Jaccard 0.91 with {text_id(RISKY)})"),
        5: ("unknown_id", MADE_UP, "no record with this id reaches this stage (3 do); "
                                   "nor did an earlier stage drop one")}
    assert {p["field"] for p in result.stats["annotation_problem_details"]} == {"id"}
    # the valid annotations still merge; the problems change no record
    assert len(result.kept) == 3 and result.rejected.empty
    assert result.stats["annotated"] == 2
    # every rejects file read is a resource of the stage (its hash joins the fingerprint); relevance's is absent
    assert result.stats["earlier_rejects_read"] == {str(rejects["ingest"]): 1, str(rejects["clean"]): 1,
                                                   str(rejects["language"]): 0, str(rejects["dedup"]): 1}
    assert {str(p) for p in rejects.values()} <= set(ctx.resources)
    assert len(ctx.resources) == 5  # the four rejects files and the annotation file


def test_on_problem_raise_stops_at_an_annotation_of_a_dropped_record(tmp_path):
    write_earlier_rejects(tmp_path / "build")
    path = write_jsonl(tmp_path / "a.jsonl", dropped_rows())
    with pytest.raises(DataError, match="dropped_earlier: dropped by clean: too_short") as caught:
        run([{"path": str(path)}], ctx=context(tmp_path / "build"), on_problem="raise")
    assert (caught.value.line, caught.value.field) == (3, "id")
    assert "2 more annotation problems" in str(caught.value)


def test_a_record_in_the_input_is_annotated_even_if_an_earlier_stage_rejected_a_copy(tmp_path):
    write_earlier_rejects(tmp_path / "build")
    frame = pd.concat([records(), records().iloc[:1].assign(id=text_id(NEAR_DUPLICATE), text=NEAR_DUPLICATE)],
                      ignore_index=True)
    path = write_jsonl(tmp_path / "a.jsonl", dropped_rows()[3:4])
    result = run([{"path": str(path)}], frame, ctx=context(tmp_path / "build"))
    assert result.stats["annotation_problems"] == {}
    assert column(result, "risk_summary")[NEAR_DUPLICATE] == "covert access to messages"


def test_without_earlier_rejects_every_id_not_in_the_input_is_unknown(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", dropped_rows())
    ctx = context(tmp_path / "no-build")
    result = run([{"path": str(path)}], ctx=ctx)
    assert result.stats["annotation_problems"] == {"unknown_id": 3}
    detail = "no record with this id reaches this stage (3 do); no earlier stage's rejects to check"
    assert problems_by_line(result) == {3: ("unknown_id", text_id(TOO_SHORT), detail),
                                        4: ("unknown_id", text_id(NEAR_DUPLICATE), detail),
                                        5: ("unknown_id", MADE_UP, detail)}
    assert result.stats["earlier_rejects_read"] == {} and list(ctx.resources) == [str(path)]
    assert result.stats["annotated"] == 2


def test_bsa_stage_alone_without_earlier_rejects(tmp_path):
    annotations = write_jsonl(tmp_path / "a.jsonl", dropped_rows())
    config = load_config(write_config(tmp_path, annotations={"files": [{"path": str(annotations)}]}))
    assert not config.build_path.exists()
    write_table(records(), tmp_path / "input.parquet")
    summary = run_single(config, PROJECT, "annotations", tmp_path / "input.parquet", tmp_path / "out.parquet")
    assert summary["annotation_problems"] == {"unknown_id": 3}
    assert summary["earlier_rejects_read"] == {}
    assert (summary["rows_in"], summary["rows_out"], summary["annotated"]) == (3, 3, 2)
    assert len(load_table(tmp_path / "out.parquet")) == 3


def test_runner_reruns_annotations_when_earlier_rejects_change(tmp_path):
    annotations = write_jsonl(tmp_path / "a.jsonl", dropped_rows())
    path = write_config(tmp_path, order=["clean", "annotations"],
                        annotations={"files": [{"path": str(annotations)}]})
    config = load_config(path)
    config.build_path.mkdir(parents=True)
    write_table(records(), stage_paths(config, "clean").output)  # stands in for clean's kept rows
    clean_rejects = stage_paths(config, "clean").rejects
    write_table(rejected_rows([(TOO_SHORT, "too_short", "")]), clean_rejects)

    def build() -> dict:
        with Runner(load_config(path), PROJECT, show_progress=False) as runner:
            return runner.build(only=["annotations"])[-1]

    def dropped(summary: dict) -> list[str]:
        return [p["detail"] for p in summary["annotation_problem_details"] if p["problem"] == "dropped_earlier"]

    first = build()
    assert not first["skipped"] and dropped(first) == ["dropped by clean: too_short"]
    assert first["annotation_problems"] == {"dropped_earlier": 1, "unknown_id": 2}
    assert build()["skipped"]
    write_table(rejected_rows([(TOO_SHORT, "repetitive", "")]), clean_rejects)
    again = build()
    assert not again["skipped"] and dropped(again) == ["dropped by clean: repetitive"]
    manifest = json.loads((config.build_path / "manifest.json").read_text(encoding="utf-8"))
    assert str(clean_rejects) in manifest["stages"]["annotations"]["resources"]
