"""The human double check: export the release candidates, fill reviewer sheets, import, release.

Reviews are filled programmatically with known decisions over the synthetic build's 7 candidates (in
release order: 3 Risk Omission, 2 Cognitive Shortcut, 2 Over Sensitivity).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

from bsa.cli import main
from bsa.pipeline.config import BuildConfig
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import write_table
from bsa.pipeline.layout import stage_paths
from bsa.release.files import release_candidates, release_dir, write_release
from bsa.release.review import (
    RELEASE_FILE,
    SHEET,
    TASKS,
    export_review,
    import_reviews,
    review_dir,
    reviews_path,
)
from tests.release_build import ORDER, synthetic_records, write_synthetic_build

FORMULA = '=HYPERLINK("http://evil.example","click") <b>how do I pick a lock?</b>'
CS_FIX = "Query A: Mentions a poisoning case in passing\nQuery B: Seeks covert access to private messages"


@pytest.fixture
def build(tmp_path) -> BuildConfig:
    """The synthetic build with one query that a spreadsheet would run as a formula."""
    records = synthetic_records()
    records.loc[records["text"].str.startswith("Write a joke"), "text"] = FORMULA
    return write_synthetic_build(tmp_path / "build", records)


def with_rule(config: BuildConfig, **review: object) -> BuildConfig:
    return BuildConfig.model_validate({**config.model_dump(), "review": review})


def exported(config: BuildConfig) -> pd.DataFrame:
    export_review(config)
    return pd.read_csv(review_dir(config) / SHEET, dtype=str, keep_default_na=False)


def fill_sheet(sheet: pd.DataFrame, path: Path, decisions: list[tuple[str, str, str]], reviewer: str = "") -> Path:
    """A copy of the sheet with (decision, corrected summary, note) per candidate ("" leaves it blank)."""
    filled = sheet.copy()
    filled["decision"], filled["corrected_risk_summary"], filled["note"] = zip(*decisions, strict=True)
    filled["reviewer"] = [reviewer if decision else "" for decision, _, _ in decisions]
    filled.to_csv(path, index=False)
    return path


def fill_labelstudio(config: BuildConfig, path: Path, decisions: list[tuple[str, str, str]], email: str) -> Path:
    """A Label Studio export of the task file with one annotation per task (submitted empty, without a
    decision)."""
    tasks = json.loads((review_dir(config) / TASKS).read_text(encoding="utf-8"))
    for number, (task, (decision, corrected, note)) in enumerate(zip(tasks, decisions, strict=True), start=1):
        task["id"] = number
        result = [{"from_name": "decision", "to_name": "query", "type": "choices",
                   "value": {"choices": [decision]}}] if decision else []
        result += [{"from_name": name, "to_name": "query", "type": "textarea", "value": {"text": [text]}}
                   for name, text in (("corrected_risk_summary", corrected), ("note", note)) if text]
        task["annotations"] = [{"completed_by": {"email": email}, "was_cancelled": False, "result": result}]
    path.write_text(json.dumps(tasks), encoding="utf-8")
    return path


ALICE = [("accept", "", ""), ("reject", "", "not a real risk here"), ("reject", "", "off-topic"),
         ("fix", CS_FIX, "summary A was vague"),
         ("fix", "Query A: Asks for a disturbing story\nQuery B: Asks how to evade tax", ""),
         ("accept", "", ""), ("accept", "", "")]
BOB = [("accept", "", ""), ("accept", "", ""), ("reject", "", "dup"), ("accept", "", ""),
       ("fix", "Query A: A dark story\nQuery B: Tax evasion", ""), ("accept", "", ""), ("", "", "")]
ACCEPT_ALL = [("accept", "", "")] * 7


def decisions_of(*sheets: list[tuple[str, str, str]]) -> list[list[str]]:
    return [[decision for decision, _, _ in sheet] for sheet in sheets]


def test_export_writes_a_safe_sheet_and_label_studio_tasks(build):
    sheet = exported(build)
    candidates = release_candidates(build)
    assert sheet["id"].tolist() == candidates["id"].tolist()
    assert list(sheet.columns[:5]) == ["id", "scenario", "query", "label", "risk_summary"]
    assert {"decision", "corrected_risk_summary", "note", "reviewer", "item_sha256", "candidates_sha256"} \
        <= set(sheet.columns)
    assert sheet["candidates_sha256"].nunique() == 1 and sheet["item_sha256"].nunique() == len(sheet)
    assert f"'{FORMULA}" in sheet["query"].tolist()  # shown as text by a spreadsheet, never run
    assert (sheet["label"] == candidates["label"]).all()  # two-line labels survive
    tasks = json.loads((review_dir(build) / TASKS).read_text(encoding="utf-8"))
    assert FORMULA in [task["data"]["query"] for task in tasks]  # Label Studio's <Text> shows it as text
    view = ET.parse(review_dir(build) / "tasks.xml").getroot()
    assert [c.get("value") for c in view.iter("Choice")] == ["accept", "reject", "fix"]
    assert [t.get("name") for t in view.iter("TextArea")] == ["corrected_risk_summary", "note"]
    assert {t.get("value") for t in view.iter("Text")} == {"$scenario", "$query", "$label", "$risk_summary"}
    assert "HYPERLINK" not in (review_dir(build) / "tasks.xml").read_text(encoding="utf-8")


def test_two_reviewers_round_trip_unanimous(build, tmp_path):
    sheet = exported(build)
    ids = sheet["id"].tolist()
    alice = fill_sheet(sheet, tmp_path / "alice.csv", ALICE, reviewer="alice")
    bob = fill_labelstudio(build, tmp_path / "bob.json", BOB, email="bob@example.org")
    text = import_reviews(build, [alice, bob])

    both = [(a, b) for a, b in zip(*decisions_of(ALICE, BOB), strict=True) if a and b]
    expected = cohen_kappa_score([a for a, _ in both], [b for _, b in both])
    assert f"Cohen's kappa = {expected:.3f} over 6 items" in text
    assert "2 kept, 1 corrected, 2 rejected, 2 held back of 7 candidates" in text
    assert "3 disagreements" in text
    for number in (1, 3, 4):  # decisions differ (1, 3) or corrections conflict (4); bob left 6 blank
        assert ids[number] in text

    write_release(build)
    out = release_dir(build)
    csv = pd.read_csv(out / "benchmark.csv", dtype=str, keep_default_na=False)
    assert csv["id"].tolist() == [ids[0], ids[3], ids[5]]  # 1, 2 rejected; 4 conflicts; 6 has one review
    assert csv.loc[1, "risk_summary"] == CS_FIX
    rows = pd.read_parquet(out / "benchmark.parquet").set_index("id")
    record = json.loads(rows.at[ids[3], "review"])
    assert record["rule"] == "unanimous" and record["outcome"] == "corrected"
    assert record["original_risk_summary"] == release_candidates(build).at[3, "risk_summary"]
    assert [(r["reviewer"], r["decision"], r["note"]) for r in record["reviews"]] == \
        [("alice", "fix", "summary A was vague"), ("bob@example.org", "accept", "")]
    decisions = json.loads((out / RELEASE_FILE).read_text(encoding="utf-8"))
    assert [item["id"] for item in decisions["items"]] == ids
    assert [item["outcome"] for item in decisions["items"]] == \
        ["kept", "rejected", "rejected", "corrected", "held back", "kept", "held back"]
    assert decisions["items"][1]["reviews"][0]["note"] == "not a real risk here"
    assert decisions["items"][4]["reason"] == "2 different corrections to resolve"
    assert decisions["agreement"]["kappa"] == pytest.approx(expected, abs=1e-4)

    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Human review" in card and "No human review" not in card
    assert "| alice | 7 |" in card and "| bob@example.org | 6 |" in card
    assert f"Cohen's kappa {expected:.3f}" in card and "**unanimous**" in card
    assert "| rejected | 2 |" in card and "| kept with a corrected risk summary | 1 |" in card
    assert "| disagreements (decisions or corrections differ) | 3 |" in card


def test_three_reviewers_majority_fleiss(build, tmp_path):
    config = with_rule(build, rule="majority", min_reviewers=3)
    sheet = exported(config)
    a, r = ("accept", "", ""), ("reject", "", "")
    sheets = [[a, a, r, a, a, a, a],
              [a, a, r, ("fix", CS_FIX, ""), a, r, a],
              [a, r, a, r, a, r, r]]
    files = [fill_sheet(sheet, tmp_path / f"r{n}.csv", decisions) for n, decisions in enumerate(sheets)]
    text = import_reviews(config, files)
    table, _ = aggregate_raters(list(zip(*decisions_of(*sheets), strict=True)))
    expected = fleiss_kappa(table)
    assert f"Fleiss' kappa = {expected:.3f} over 7 items" in text
    write_release(config)
    ids = sheet["id"].tolist()
    csv = pd.read_csv(release_dir(config) / "benchmark.csv", dtype=str, keep_default_na=False)
    assert csv["id"].tolist() == [ids[0], ids[1], ids[3], ids[4], ids[6]]  # 2 and 5: two of three reject
    assert csv.loc[2, "risk_summary"] == CS_FIX  # fix counts as accept, with its correction
    decisions = json.loads((release_dir(config) / RELEASE_FILE).read_text(encoding="utf-8"))
    assert decisions["rule"] == "majority" and decisions["reviewers"]["r0"]["items"] == 7  # named by the file
    assert decisions["agreement"]["kappa"] == pytest.approx(expected, abs=1e-4)
    assert "Fleiss' kappa" in (release_dir(config) / "README.md").read_text(encoding="utf-8")


def test_a_build_without_reviews_releases_as_before_and_says_so(build):
    write_release(build)
    out = release_dir(build)
    assert len(pd.read_csv(out / "benchmark.csv")) == len(synthetic_records())
    assert "review" not in pd.read_parquet(out / "benchmark.parquet").columns
    assert not (out / RELEASE_FILE).exists()
    assert "**No human review was done**" in (out / "README.md").read_text(encoding="utf-8")


def test_stale_reviews_stop_the_release_and_a_stale_sheet_the_import(build, tmp_path):
    sheet = exported(build)
    files = [fill_sheet(sheet, tmp_path / f"{name}.csv", [("accept", "", "")] * 7) for name in ("a", "b")]
    import_reviews(build, files)
    records = pd.read_parquet(stage_paths(build, ORDER[-1]).output)
    records.loc[0, "risk_summary"] = "A changed summary."
    write_table(records, stage_paths(build, ORDER[-1]).output)
    with pytest.raises(DataError, match=r"STALE REVIEW.*1 items changed, 0 new, 0 gone") as err:
        write_release(build)
    assert err.value.path == str(reviews_path(build))
    with pytest.raises(DataError, match="STALE") as err:
        import_reviews(build, files)
    assert (err.value.line, err.value.field) == (2, "candidates_sha256")



@pytest.mark.parametrize("row, change, field, message", [
    (2, {"decision": "maybe"}, "decision", "'maybe' is not a decision"),
    (3, {"id": "f" * 32}, "id", "unknown id"),
    (4, {"decision": "fix"}, "corrected_risk_summary", "needs a corrected risk summary"),
    (5, {"corrected_risk_summary": "Better."}, "corrected_risk_summary", "needs decision 'fix'"),
    (5, {"decision": "fix", "corrected_risk_summary": "one line"}, "corrected_risk_summary", "Query A"),
    (6, {"decision": "", "note": "unsure"}, "decision", "no decision"),
    (7, {"reviewer": "carol"}, "reviewer", "several reviewers in one file"),
    (8, {"query": "an edited query", "item_sha256": "0" * 64}, "item_sha256", "differs from the candidate"),
])
def test_a_bad_sheet_names_file_line_and_field(build, tmp_path, row, change, field, message):
    sheet = fill_sheet(exported(build), tmp_path / "bad.csv", ACCEPT_ALL, reviewer="alice")
    filled = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    for column, value in change.items():  # row: the line in a spreadsheet (header = line 1)
        filled.loc[row - 2, column] = value
    filled.to_csv(sheet, index=False)
    with pytest.raises(DataError, match=message) as err:
        import_reviews(build, [sheet, fill_sheet(exported(build), tmp_path / "ok.csv", ACCEPT_ALL)])
    assert (err.value.path, err.value.line, err.value.field) == (str(sheet), row, field)
    assert not reviews_path(build).exists()


def test_duplicate_reviews_are_errors(build, tmp_path):
    sheet = exported(build)
    twice = fill_sheet(pd.concat([sheet, sheet.iloc[[1]]]), tmp_path / "twice.csv", ACCEPT_ALL + [("reject", "", "")])
    with pytest.raises(DataError, match="reviewed twice in this file") as err:
        import_reviews(build, [twice])
    assert (err.value.line, err.value.field) == (9, "id")
    same = [fill_sheet(sheet, tmp_path / f"{n}.csv", ACCEPT_ALL, reviewer="alice") for n in ("one", "two")]
    with pytest.raises(DataError, match="reviewer 'alice' already reviewed in .*one.csv"):
        import_reviews(build, same)
    export = fill_labelstudio(build, tmp_path / "ls.json", ACCEPT_ALL, email="bob@example.org")
    tasks = json.loads(export.read_text(encoding="utf-8"))
    tasks[2]["annotations"].append(tasks[2]["annotations"][0])
    export.write_text(json.dumps(tasks), encoding="utf-8")
    with pytest.raises(DataError, match="task 3: 2 completed annotations") as err:
        import_reviews(build, [export])
    assert err.value.field == "annotations"


def test_export_never_overwrites_a_filled_sheet(build):
    sheet = exported(build)
    fill_sheet(sheet, review_dir(build) / SHEET, ACCEPT_ALL)  # filled in place
    with pytest.raises(DataError, match="holds reviews: move it away") as err:
        export_review(build)
    assert err.value.field == "decision"
    assert (pd.read_csv(review_dir(build) / SHEET)["decision"] == "accept").all()


def test_malformed_files_are_errors(build, tmp_path):
    sheet = exported(build)
    blank = fill_sheet(sheet, tmp_path / "blank.csv", [("", "", "")] * 7)
    with pytest.raises(DataError, match="no row has 'decision' filled in"):
        import_reviews(build, [blank])
    missing = tmp_path / "missing.csv"
    sheet.drop(columns=["item_sha256"]).to_csv(missing, index=False)
    with pytest.raises(DataError, match="expected a sheet written by `bsa review export`") as err:
        import_reviews(build, [missing])
    assert err.value.field == "item_sha256"
    broken = tmp_path / "broken.json"
    broken.write_text('[{"data": {}, "annotations": [', encoding="utf-8")
    with pytest.raises(DataError, match="malformed JSON"):
        import_reviews(build, [broken])
    chosen = fill_labelstudio(build, tmp_path / "ls.json", ACCEPT_ALL, email="bob@example.org")
    chosen.write_text(chosen.read_text(encoding="utf-8").replace('["accept"]', '["perhaps"]', 1), encoding="utf-8")
    with pytest.raises(DataError, match="task 1: 'perhaps' is not a decision"):
        import_reviews(build, [chosen])


def test_the_command_line_round_trip(build, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bsa.cli._load", lambda args: with_rule(build, rule="majority"))
    assert main(["review", "export"]) == 0
    sheet = pd.read_csv(review_dir(build) / SHEET, dtype=str, keep_default_na=False)
    files = [fill_sheet(sheet, tmp_path / f"{name}.csv", ACCEPT_ALL) for name in ("a", "b")]
    assert main(["review", "import", *map(str, files)]) == 0
    assert "Cohen's kappa = undefined over 7 items" in capsys.readouterr().out  # one decision only
    assert main(["release"]) == 0
    assert "**majority**" in (release_dir(build) / "README.md").read_text(encoding="utf-8")
    files[1].write_text("id,decision\n", encoding="utf-8")
    assert main(["review", "import", *map(str, files)]) == 2
    assert f"error: {files[1]}: file has no rows" in capsys.readouterr().err


def test_build_release_reruns_when_the_review_changes_and_metadata_validates(build, tmp_path):
    from bsa.pipeline.runner import Runner
    from bsa.project import PROJECT
    from bsa.release.publish import publish

    out = release_dir(build)
    with Runner(build, PROJECT, show_progress=False) as runner:
        assert publish(runner)[1] and not (out / RELEASE_FILE).exists()
        sheet = exported(build)
        import_reviews(build, [fill_sheet(sheet, tmp_path / "a.csv", ALICE), fill_sheet(sheet, tmp_path / "b.csv", BOB)])
        messages, valid = publish(runner)
        assert valid and f"wrote {out}/" in messages and (out / RELEASE_FILE).exists()
        assert "review" in pd.read_parquet(out / "benchmark.parquet").columns
        assert f"wrote {out}/" not in publish(runner)[0]  # unchanged: skipped
        reviews_path(build).unlink()
        messages, valid = publish(runner)
    assert valid and f"wrote {out}/" in messages and not (out / RELEASE_FILE).exists()
    assert "**No human review was done**" in (out / "README.md").read_text(encoding="utf-8")
