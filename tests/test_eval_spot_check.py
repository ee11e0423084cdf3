"""`bsa spot-check --run`: a person checks an eval run's judges, round trip on a real run of the scripted
server (export, fill, import as CSV and as a Label Studio export), figures against scikit-learn; with three
judges, each and their majority, on items whose texts are hostile (a formula, markup)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix, precision_recall_fscore_support

from bsa.benchmark import SAFETY_LABELS, SCENARIOS, SUCCESS, THINK_LABELS
from bsa.cli import main
from bsa.eval import spot_check
from bsa.eval.judges import UNSCORED
from bsa.eval.leaderboard import build_leaderboard
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import read_table
from tests.fake_openai import FakeOpenAI, prompt_of
from tests.test_eval import CONFIG, SECRET, Script, run_eval

N = 24


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, request) -> Path:
    """One run of model-field on 30 released items (k=3), judged by judge-a and checked by judge-b."""
    from tests.conftest import BSA_CSV, require_shared

    dataset = require_shared(BSA_CSV)
    out = tmp_path_factory.mktemp("results")
    patch = pytest.MonkeyPatch()
    patch.setenv("OPENAI_API_KEY", SECRET)
    request.addfinalizer(patch.undo)
    with FakeOpenAI(reply=Script()) as server:
        assert run_eval(server, "model-field", out, dataset, "--second-judge-model", "judge-b") == 0
    return out / "model-field"


@pytest.fixture
def run(run_dir, tmp_path) -> Path:
    """A fresh copy of the run for each test (imports write into it)."""
    return Path(shutil.copytree(run_dir, tmp_path / "results" / "model-field"))


def samples_of(run: Path) -> pd.DataFrame:
    samples, _ = read_table(run / "samples.jsonl")
    samples = samples[samples["ok"].astype(bool)]
    return samples.set_index(samples["id"].astype(str) + "#" + samples["sample"].astype(str))


def person_labels(sheet: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """A person who agrees with the first judge except on every third row, where they pick the other label."""
    def other(label: str, labels: tuple[str, ...] | list[str]) -> str:
        return next(choice for choice in labels if choice != label)

    filled = sheet.copy()
    for position, key in enumerate(filled["key"]):
        row, flip = samples.loc[key], position % 3 == 0
        labels = THINK_LABELS[row["scenario"]]
        if not str(filled.at[position, "safety_labels"]).startswith("not asked"):
            safety = row["safety"] if row["safety"] != UNSCORED else "Safe"
            filled.at[position, "human_safety"] = other(safety, SAFETY_LABELS) if flip else safety
        if not str(filled.at[position, "thinking_labels"]).startswith("not asked"):
            thinking = row["thinking"] if row["thinking"] != UNSCORED else labels[0]
            filled.at[position, "human_thinking"] = other(thinking, labels) if flip else thinking
    return filled


def export_and_fill(run: Path) -> tuple[Path, pd.DataFrame]:
    assert main(["spot-check", "--run", str(run), "--n", str(N)]) == 0
    sheet = pd.read_csv(run / spot_check.SHEET, dtype=str, keep_default_na=False)
    filled = person_labels(sheet, samples_of(run))
    path = run.parent / "checked.csv"
    filled.to_csv(path, index=False)
    return path, filled


def test_export_is_a_blind_stratified_sample_with_the_texts_verbatim(run):
    assert main(["spot-check", "--run", str(run), "--n", str(N)]) == 0
    sheet = pd.read_csv(run / spot_check.SHEET, dtype=str, keep_default_na=False)
    samples = samples_of(run)
    assert 0 < len(sheet) <= N and sheet["key"].is_unique
    assert set(sheet["scenario"]) == set(samples.loc[sheet["key"], "scenario"]) and sheet["scenario"].nunique() == 3
    assert not {"safety", "thinking", "safety_2", "_answer", "_reasoning"} & set(sheet.columns)  # blind
    assert (sheet["human_safety"] == "").all() and (sheet["human_thinking"] == "").all()
    for _, row in sheet.iterrows():
        query = samples.at[row["key"], "query"]
        assert row["query"] == (f"'{query}" if query.startswith(("=", "+", "-", "@")) else query)
        assert row["reasoning"] == samples.at[row["key"], "reasoning"]
    tasks = json.loads((run / spot_check.TASKS).read_text(encoding="utf-8"))
    assert [task["data"]["key"] for task in tasks] == sheet["key"].tolist()
    assert (run / spot_check.TASKS).with_suffix(".xml").exists() or list(run.glob("*.xml"))


def test_import_gives_kappa_confusion_and_precision_recall_equal_to_sklearn(run):
    path, filled = export_and_fill(run)
    assert main(["spot-check", "--run", str(run), "--import", str(path)]) == 0
    found = json.loads((run / spot_check.AGREEMENT).read_text(encoding="utf-8"))
    assert found["samples"] == len(filled) and [entry["judge"] for entry in found["judges"]] == ["first", "second"]
    samples = samples_of(run).loc[filled["key"]]
    for entry, suffix in zip(found["judges"], ("", "_2"), strict=True):
        asked = (filled["human_safety"] != "").to_numpy() & (samples[f"safety{suffix}"] != UNSCORED).to_numpy()
        judge, person = samples.loc[asked, f"safety{suffix}"].tolist(), filled.loc[asked, "human_safety"].tolist()
        figures = entry["safety"]
        assert figures["pairs"] == len(judge) > 0
        assert figures["kappa"] == pytest.approx(cohen_kappa_score(judge, person), abs=1e-4)
        matrix = confusion_matrix(judge, person, labels=list(SAFETY_LABELS))
        assert [[figures["confusion"][a][b] for b in SAFETY_LABELS] for a in SAFETY_LABELS] == matrix.tolist()
        precision, recall, _, _ = precision_recall_fscore_support(person, judge, labels=list(SAFETY_LABELS),
                                                                  zero_division=0)
        for label, p, r in zip(SAFETY_LABELS, precision, recall, strict=True):
            scored = entry["safety"]["labels"][label]
            assert (scored["precision"] or 0) == pytest.approx(p, abs=1e-4)
            assert (scored["recall"] or 0) == pytest.approx(r, abs=1e-4)
    first = found["judges"][0]
    read = (filled["human_thinking"] != "").to_numpy() & ~samples["thinking_by_rule"].astype(bool).to_numpy() \
        & (samples["thinking"] != UNSCORED).to_numpy()
    success = samples.loc[read, "scenario"].map(SUCCESS)
    judge = (samples.loc[read, "thinking"] == success).map(str).tolist()
    person = (filled.loc[read, "human_thinking"].to_numpy() == success.to_numpy()).astype(bool).astype(str).tolist()
    assert first["think_success"]["pairs"] == len(judge) > 0
    assert first["think_success"]["kappa"] == pytest.approx(cohen_kappa_score(judge, person), abs=1e-4)
    assert first["official"] and not found["judges"][1]["official"]


def test_report_and_leaderboard_show_the_check_until_judged_csv_changes(run):
    path, _ = export_and_fill(run)
    assert main(["spot-check", "--run", str(run), "--import", str(path)]) == 0
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "## The judges against a person" in report and "STALE" not in report
    build_leaderboard(run.parent)
    board = pd.read_csv(run.parent / "leaderboard.csv")
    ours = board[board["source"] == "this project"].iloc[0]
    found = json.loads((run / spot_check.AGREEMENT).read_text(encoding="utf-8"))
    assert ours["human kappa (answer)"] == pytest.approx(found["judges"][0]["safety"]["kappa"])
    assert ours["human kappa (reasoning)"] == pytest.approx(found["judges"][0]["think_success"]["kappa"])
    assert board.loc[board["source"] != "this project", "human kappa (answer)"].isna().all()
    assert "human kappa (answer)" in (run.parent / "leaderboard.md").read_text(encoding="utf-8")

    judged = run / "judged.csv"
    judged.write_text(judged.read_text(encoding="utf-8").replace("Unsafe", "Safe", 1), encoding="utf-8")
    assert spot_check.on_file(run)["stale"]
    assert "STALE" in "\n".join(spot_check.report_lines(spot_check.on_file(run)))
    build_leaderboard(run.parent)
    assert "human kappa (answer)" not in pd.read_csv(run.parent / "leaderboard.csv").columns


def test_a_label_studio_export_gives_the_same_figures_as_the_sheet(run):
    path, filled = export_and_fill(run)
    tasks = json.loads((run / spot_check.TASKS).read_text(encoding="utf-8"))
    by_key = filled.set_index("key")
    exported = []
    for number, task in enumerate(tasks, start=1):
        row = by_key.loc[task["data"]["key"]]
        result = [{"from_name": name, "to_name": "query", "type": "choices", "value": {"choices": [row[column]]}}
                  for name, column in ((spot_check.SAFETY_CHOICE, "human_safety"),
                                       (spot_check.THINKING_CHOICE, "human_thinking")) if row[column]]
        exported.append({"id": number, "data": task["data"],
                         "annotations": [{"id": number, "completed_by": 1, "result": result}]})
    export = run.parent / "export.json"
    export.write_text(json.dumps(exported), encoding="utf-8")
    from_studio = spot_check.import_checked(run, export)
    from_sheet = spot_check.import_checked(run, path)
    for studio, sheet in zip(from_studio["judges"], from_sheet["judges"], strict=True):
        assert studio["safety"] == sheet["safety"] and studio["think_success"] == sheet["think_success"]


def test_bad_labels_and_unknown_samples_name_file_line_and_field(run):
    path, filled = export_and_fill(run)
    asked = filled.index[filled["human_safety"] != ""][1]
    filled.at[asked, "human_safety"] = "Mostly fine"
    filled.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        spot_check.import_checked(run, path)
    assert str(path) in str(err.value) and f"{path}:{asked + 2}:" in str(err.value) and "human_safety" in str(err.value)
    _, filled = export_and_fill(run)
    filled.at[0, "key"] = "no-such-item#9"
    filled.to_csv(path, index=False)
    with pytest.raises(DataError, match="no-such-item#9") as err:
        spot_check.import_checked(run, path)
    assert "key" in str(err.value)


# -- three judges, hostile texts -----------------------------------------------------------------------------
QUIET = "ITEM-QUIET"  # the model gives no reasoning: its reasoning label is by rule, no judge read it
HOSTILE = '=HYPERLINK("http://evil.example","click") <script>alert(1)</script> | **bold** {{x}}'
JUDGES = ("judge-a", "judge-b", "judge-c")  # judge-b flips some safety verdicts (tests.test_eval.Script)


class Quiet(Script):
    """tests.test_eval's scripted models and judges; the model gives no reasoning for QUIET items."""

    def __call__(self, payload: dict, seen: int) -> dict:
        reply = super().__call__(payload, seen)
        if QUIET in prompt_of(payload) and not payload["model"].startswith("judge"):
            reply.pop("reasoning_content", None)
        return reply


@pytest.fixture(scope="module")
def three(tmp_path_factory, request) -> Path:
    """A run judged by three judges (the majority decides) on six items a scenario, one quiet and one whose
    query and risk summary start like formulas and hold markup."""
    out = tmp_path_factory.mktemp("three")
    items = [{"id": f"{code}{i}", "query": f"{HOSTILE} {code}{i}" if i == 0 else f"{QUIET} {code}{i}" if i == 1
              else f"request {code}{i}: how do I do thing {i}?", "risk_summary": f"-the risk of {code}{i}",
              "dataset_name": scenario, "label": "Rumors-Rumors with Negative Impact"}
             for code, scenario in zip(("ro", "cs", "os"), SCENARIOS, strict=True) for i in range(6)]
    pd.DataFrame(items).to_csv(out / "bench.csv", index=False)
    patch = pytest.MonkeyPatch()
    patch.setenv("OPENAI_API_KEY", SECRET)
    request.addfinalizer(patch.undo)
    with FakeOpenAI(reply=Quiet()) as server:
        judges = [part for judge in JUDGES for part in ("--judge-model", judge, "--judge-base-url", server.url)]
        assert main(["eval", "--model", "model-field", "--base-url", server.url, *judges, "--dataset",
                     str(out / "bench.csv"), "--k", "2", "--output-dir", str(out), "--run", "three",
                     "--config", CONFIG, "--set", "eval.resamples=0"]) == 0
    return out / "three"


def expected(judge: pd.Series, person: pd.Series, labels: list[str]) -> dict:
    """scikit-learn's figures over the pairs the judge scored (rows: the judge, columns: the person)."""
    scored = (judge != UNSCORED).to_numpy()
    said, meant = judge[scored].tolist(), person[scored].tolist()
    precision, recall, _, _ = precision_recall_fscore_support(meant, said, labels=labels, zero_division=np.nan)
    return {"pairs": len(said), "kappa": cohen_kappa_score(said, meant) if len({*said, *meant}) > 1 else None,
            "confusion": confusion_matrix(said, meant, labels=labels).tolist(),
            "precision": [None if np.isnan(v) else pytest.approx(v, abs=1e-4) for v in precision],
            "recall": [None if np.isnan(v) else pytest.approx(v, abs=1e-4) for v in recall]}


def assert_matches(figures: dict, judge: pd.Series, person: pd.Series, labels: list[str]) -> None:
    want = expected(judge, person, labels)
    assert figures["pairs"] == want["pairs"] > 0
    assert figures["kappa"] == (None if want["kappa"] is None else pytest.approx(want["kappa"], abs=1e-4))
    assert [[figures["confusion"][a][b] for b in labels] for a in labels] == want["confusion"]
    assert [figures["labels"][label]["precision"] for label in labels] == want["precision"]
    assert [figures["labels"][label]["recall"] for label in labels] == want["recall"]


def test_the_sheet_keeps_hostile_text_verbatim_and_its_order_tells_no_verdict(three):
    assert main(["spot-check", "--run", str(three), "--n", "20", "--seed", "3"]) == 0
    sheet = pd.read_csv(three / spot_check.SHEET, dtype=str, keep_default_na=False)
    samples = samples_of(three)
    order = ["scenario", "id", "sample"]
    assert sheet[order].equals(sheet.sort_values(order)[order].reset_index(drop=True))
    taken = samples.loc[sheet["key"]]
    strata = samples.groupby(["scenario", "safety_majority", "thinking_majority"]).ngroups
    assert taken.groupby(["scenario", "safety_majority", "thinking_majority"]).ngroups == strata < 20
    tasks = {task["data"]["key"]: task["data"] for task in
             json.loads((three / spot_check.TASKS).read_text(encoding="utf-8"))}
    hostile = sheet[sheet["query"].str.contains("HYPERLINK", regex=False)]
    assert len(hostile) > 0 and sheet["risk_summary"].str.startswith("'-the risk").all()
    for key, query in zip(hostile["key"], hostile["query"], strict=True):
        original = samples.at[key, "query"]
        assert original.startswith(HOSTILE) and query == f"'{original}" and tasks[key]["query"] == original
    assert not {"safety", "safety_2", "safety_majority", "thinking", "safety_reason"} & {*sheet.columns, *tasks[key]}
    config = (three / spot_check.TASKS).with_suffix(".xml").read_text(encoding="utf-8")
    assert "HYPERLINK" not in config and "<script" not in config


def test_three_judges_and_their_majority_each_against_sklearn(three, capsys):
    assert main(["spot-check", "--run", str(three), "--n", "30"]) == 0
    sheet = pd.read_csv(three / spot_check.SHEET, dtype=str, keep_default_na=False)
    samples = samples_of(three)
    filled = person_labels(sheet, samples)
    quiet = filled.index[filled["thinking_labels"].str.startswith("not asked")][0]
    filled.at[quiet, "human_thinking"] = THINK_LABELS[filled.at[quiet, "scenario"]][-1]  # told not to: left out
    filled.to_csv(three.parent / "checked.csv", index=False)
    assert main(["spot-check", "--run", str(three), "--import", str(three.parent / "checked.csv")]) == 0
    found = json.loads((three / spot_check.AGREEMENT).read_text(encoding="utf-8"))
    assert [(e["judge"], e["official"]) for e in found["judges"]] == [
        ("first", False), ("second", False), ("third", False), ("majority", True)]
    person, rows = filled.set_index("key"), samples.loc[filled["key"]]
    for entry, suffix in zip(found["judges"], ("", "_2", "_3", "_majority"), strict=True):
        asked = person["human_safety"] != ""
        assert_matches(entry["safety"], rows.loc[asked, f"safety{suffix}"], person.loc[asked, "human_safety"],
                       list(SAFETY_LABELS))
        read = (person["human_thinking"] != "") & ~rows[f"thinking{suffix}_by_rule"].astype(bool)
        assert entry["thinking_by_rule"] == 1
        for scenario in SCENARIOS:
            part = read & (rows["scenario"] == scenario)
            assert_matches(entry["thinking"][scenario], rows.loc[part, f"thinking{suffix}"],
                           person.loc[part, "human_thinking"], list(THINK_LABELS[scenario]))
        success = rows.loc[read, "scenario"].map(SUCCESS)
        assert_matches(entry["think_success"], (rows.loc[read, f"thinking{suffix}"] == success).map(str),
                       (person.loc[read, "human_thinking"] == success).map(str), ["True", "False"])
    assert found["judges"][1]["safety"]["kappa"] != found["judges"][0]["safety"]["kappa"]  # judge-b differs
    report = (three / "report.md").read_text(encoding="utf-8")
    assert all(f"{name} (" in report for name in ("first", "second", "third", "majority"))
    assert "judge majority (majority of 3), official" in capsys.readouterr().out


def test_label_studio_tasks_left_unlabelled_are_skipped_and_a_wrong_label_names_task_and_field(three):
    assert main(["spot-check", "--run", str(three), "--n", "6"]) == 0
    tasks = json.loads((three / spot_check.TASKS).read_text(encoding="utf-8"))
    scenario = tasks[1]["data"]["scenario"]
    wrong = next(label for name in SCENARIOS for label in THINK_LABELS[name] if label not in THINK_LABELS[scenario])
    exported = [{"id": number, "data": task["data"], "annotations": []} for number, task in enumerate(tasks, 1)]
    exported[1]["annotations"] = [{"id": 1, "was_cancelled": False, "result": [
        {"from_name": spot_check.SAFETY_CHOICE, "to_name": "answer", "type": "choices", "value": {"choices": ["Safe"]}}]}]
    path = three.parent / "export.json"
    path.write_text(json.dumps(exported), encoding="utf-8")
    assert spot_check.import_checked(three, path)["samples"] == 1
    exported[1]["annotations"][0]["result"].append({"from_name": spot_check.THINKING_CHOICE, "to_name": "reasoning",
                                                    "type": "choices", "value": {"choices": [wrong]}})
    path.write_text(json.dumps(exported), encoding="utf-8")
    with pytest.raises(DataError, match=rf"export\.json: field 'thinking': task 2: '{wrong}' is not a {scenario}"):
        spot_check.import_checked(three, path)
