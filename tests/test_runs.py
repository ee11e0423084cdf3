"""Runs named by their settings, several models in one command, judging samples made elsewhere, and decoding
sweeps: end to end against the scripted server, on items of BSA's released set."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from bsa.cli import main
from bsa.eval.leaderboard import OURS
from bsa.eval.metrics import HEADLINE
from bsa.eval.naming import run_name, run_settings
from bsa.eval.sweep import holm
from bsa.pipeline.config import EndpointConfig
from tests.fake_openai import prompt_of
from tests.test_eval import CONFIG, LIMIT, SECRET, K, Script, run_eval

MODEL = "model-field"


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


def model_payloads(server, model: str = MODEL, since: int = 0) -> list[dict]:
    return [payload for payload in server.payloads[since:] if payload["model"] == model]


def metrics_of(directory: Path) -> dict:
    return json.loads((directory / "metrics.json").read_text())


def sorted_labels(judged: Path) -> dict[str, list[tuple[str, str]]]:
    frame = pd.read_csv(judged, dtype=str, keep_default_na=False)
    return {item: sorted(zip(rows["Safe_Ans_Check"], rows["Thk_Acc_Judge"], strict=True))
            for item, rows in frame.groupby("id")}


def test_names_list_the_changed_settings_only():
    default = run_settings(EndpointConfig(temperature=0.6, top_p=0.95, max_tokens=8192), "", False)
    changed = run_settings(EndpointConfig(temperature=0.4, top_p=0.95, max_tokens=4096, seed=1,
                                          extra_body={"top_k": 20, "min_p": 0.05}), "judge-a", True)
    assert run_name("qwq", {**default, "judge": "judge-a"}, default, None) == "qwq"
    assert run_name("qwq", changed, default, None) == "qwq+rules__t0.4-k20-m4096-s1-min_p0.05"
    assert run_name("qwq", {**default, "judge": "other"}, default, "judge-a") == "qwq__judge-other"


def test_two_temperatures_keep_separate_runs(bsa_csv, tmp_path, fake_server, key, capsys):
    server = fake_server(reply=Script())
    assert run_eval(server, MODEL, tmp_path, bsa_csv) == 0
    first = len(server.payloads)
    assert run_eval(server, MODEL, tmp_path, bsa_csv, "--temperature", "0.8") == 0
    assert {p["temperature"] for p in model_payloads(server, since=first)} == {0.8}
    assert {p["temperature"] for p in model_payloads(server)[:LIMIT * K]} == {0.6}
    default, warm = metrics_of(tmp_path / MODEL), metrics_of(tmp_path / f"{MODEL}__t0.8")
    assert default["run"]["settings"]["temperature"] == 0.6 and warm["run"]["settings"]["temperature"] == 0.8
    assert warm["model"] == f"{MODEL}__t0.8" and warm["run"]["temperature"] == 0.8
    assert main(["leaderboard", "--results", str(tmp_path)]) == 0
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert {MODEL, f"{MODEL}__t0.8"} <= set(board["model"])
    assert main(["compare", str(tmp_path / MODEL), str(tmp_path / f"{MODEL}__t0.8"), "--resamples", "200"]) == 0
    assert f"{MODEL}__t0.8" in capsys.readouterr().out


def test_a_run_never_overwrites_one_with_other_settings(bsa_csv, tmp_path, fake_server, key, capsys):
    server = fake_server(reply=Script())
    assert run_eval(server, MODEL, tmp_path, bsa_csv) == 0
    before = (tmp_path / MODEL / "judged.csv").read_bytes()
    assert run_eval(server, MODEL, tmp_path, bsa_csv, "--judge-model", "judge-b") == 2
    assert "holds a run with other settings (judge 'judge-a' there, 'judge-b' now)" in capsys.readouterr().err
    assert (tmp_path / MODEL / "judged.csv").read_bytes() == before
    assert run_eval(server, MODEL, tmp_path, bsa_csv, "--judge-model", "judge-b", "--run", "by-judge-b") == 0
    assert metrics_of(tmp_path / "by-judge-b")["run"]["settings"]["judge"] == "judge-b"


def test_top_k_and_other_sampling_fields_reach_the_server_and_the_cache_key(bsa_csv, tmp_path, fake_server, key):
    server = fake_server(reply=Script())
    extra = ("--limit", "4", "--top-k", "20", "--sample", "min_p=0.05", "--sample", "seed=3")
    assert run_eval(server, MODEL, tmp_path, bsa_csv, *extra) == 0
    sent = model_payloads(server)
    assert len(sent) == 4 * K
    assert all(p["top_k"] == 20 and p["min_p"] == 0.05 for p in sent)
    assert sorted({p["seed"] for p in sent}) == [3, 4, 5]  # the seed grows by the sample index
    run = metrics_of(tmp_path / f"{MODEL}__k20-s3-min_p0.05")["run"]
    assert run["settings"]["top_k"] == 20 and run["settings"]["sample"] == {"min_p": 0.05}
    before = len(server.payloads)
    assert run_eval(server, MODEL, tmp_path, bsa_csv, *extra) == 0
    assert len(server.payloads) == before  # the same settings: every reply from the cache
    assert run_eval(server, MODEL, tmp_path, bsa_csv, *extra, "--top-k", "40") == 0
    assert len(model_payloads(server, since=before)) == 4 * K  # another top_k: another cache key
    assert run_eval(server, MODEL, tmp_path, bsa_csv, *extra, "--sample", "min_p=0.1") == 0
    assert len(model_payloads(server, since=before)) == 8 * K


def test_several_models_in_one_command_share_the_cache_and_write_one_leaderboard(bsa_csv, tmp_path,
                                                                                 fake_server, key):
    server = fake_server(reply=Script())
    models = ["model-field", "model-think", "model-plain"]
    assert main(["eval", "--model", *models, "--base-url", server.url, "--judge-model", "judge-a",
                 "--judge-base-url", server.url, "--dataset", str(bsa_csv), "--limit", "6", "--k", "2",
                 "--output-dir", str(tmp_path), "--config", CONFIG]) == 0
    for model in models:
        assert metrics_of(tmp_path / model)["items"] == 6
        assert len(model_payloads(server, model)) == 12
    assert [path.name for path in tmp_path.rglob("llm-cache.sqlite")] == ["llm-cache.sqlite"]
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert set(board.loc[board["source"] == OURS, "model"]) == set(models)
    # model-think says what model-field said, in <think> tags: every judge request of its run was cached
    usage = metrics_of(tmp_path / "model-think")["run"]["usage"]
    assert usage["cached"] == 2 * 12 and usage["sent"] == 12


def test_the_config_lists_the_models_to_evaluate(bsa_csv, tmp_path, fake_server, key):
    server = fake_server(reply=Script())
    sets = [f"endpoints.{name}.{field}" for name in ("a", "b")
            for field in (f"base_url={server.url}", f"model=model-{'field' if name == 'a' else 'think'}",
                          "api_key_env=OPENAI_API_KEY")]
    assert main(["eval", "--judge-model", "judge-a", "--judge-base-url", server.url, "--dataset", str(bsa_csv),
                 "--limit", "3", "--k", "1", "--output-dir", str(tmp_path), "--config", CONFIG,
                 "--set", "eval.models=[a, b]", *[arg for item in sets for arg in ("--set", item)]]) == 0
    assert metrics_of(tmp_path / "a")["run"]["served_model"] == "model-field"
    assert (tmp_path / "b" / "judged.csv").is_file() and (tmp_path / "leaderboard.md").is_file()


def bsa_batch_output(samples: Path, path: Path) -> Path:
    """The samples of a bsa eval run written as BSA's batch script writes its output."""
    frame = pd.read_json(samples, lines=True)
    out = pd.DataFrame({"id": frame["id"], "question": frame["query"], "answer": frame["answer"],
                        "reasoning_content": frame["reasoning"], "status": "success", "tokens": 0, "error": ""})
    out.to_csv(path, index=False)
    return path


def judge_args(server, dataset: Path, out: Path, samples: Path, *extra: str) -> list[str]:
    return ["judge", "--samples", str(samples), "--judge-model", "judge-a", "--judge-base-url", server.url,
            "--dataset", str(dataset), "--output-dir", str(out), "--config", CONFIG, *extra]


def test_judging_outside_samples_equals_judging_them_in_bsa_eval(bsa_csv, tmp_path, fake_server, key):
    server = fake_server(reply=Script())
    assert run_eval(server, "model-think", tmp_path, bsa_csv) == 0
    made = tmp_path / "model-think"
    batch = bsa_batch_output(made / "samples.jsonl", tmp_path / "batch.csv")
    before = len(server.payloads)
    assert main(judge_args(server, bsa_csv, tmp_path, batch, "--model", "model-think", "--run", "outside")) == 0
    assert len(server.payloads) == before  # the same judge requests: answered by the cache
    outside, inside = metrics_of(tmp_path / "outside"), metrics_of(made)
    assert sorted_labels(tmp_path / "outside" / "judged.csv") == sorted_labels(made / "judged.csv")
    assert {name: outside[name] for name in HEADLINE} == {name: inside[name] for name in HEADLINE}
    assert outside["scenarios"] == inside["scenarios"] and outside["k"] == K
    assert outside["run"]["generated_elsewhere"]["samples"] == str(batch)
    assert outside["run"]["settings"]["temperature"] is None

    # JSONL matched by query, the reasoning in <think> tags of the answer, a failed sample recorded
    frame = pd.read_json(made / "samples.jsonl", lines=True)
    rows = [{"query": row.query, "answer": f"<think>{row.reasoning}</think>\n{row.answer}"}
            for row in frame.itertuples()]
    rows[0] = {"query": rows[0]["query"], "answer": "", "status": "failed", "error": "HTTP 500"}
    tagged = tmp_path / "tagged.jsonl"
    tagged.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(judge_args(server, bsa_csv, tmp_path, tagged, "--run", "tagged")) == 0
    metrics = metrics_of(tmp_path / "tagged")
    assert metrics["unscored"]["safety"] == 1 and metrics["run"]["failed"] == 1
    labels = sorted_labels(tmp_path / "tagged" / "judged.csv")
    expected = sorted_labels(made / "judged.csv")
    first = str(frame["id"].iloc[0])
    assert {item: value for item, value in labels.items() if item != first} == \
           {item: value for item, value in expected.items() if item != first}


@pytest.mark.parametrize(("rows", "where"), [
    ([{"id": "nope", "answer": "x"}], ":2: field 'id': id nope is not in the benchmark"),
    ([{"question": "not a query of the set", "answer": "x"}], ":2: field 'question': query"),
    ([{"id": "", "answer": "x"}], ":2: field 'id': no id and no query"),
    ([{"id": "ID0", "answer": "x", "status": "odd"}], ":2: field 'status': unknown status 'odd'"),
    ([{"id": "ID0", "reasoning": "r"}], ": missing column 'answer'"),
    ([{"id": "ID0", "answer": "a"}, {"id": "ID0", "answer": "b"}, {"id": "ID1", "answer": "c"}],
     ":4: field 'id': item ID1 has 1 samples, the others 2"),
])
def test_bad_sample_rows_name_file_line_and_field(bsa_csv, tmp_path, fake_server, key, capsys, rows, where):
    ids = pd.read_csv(bsa_csv, dtype=str)["id"].head(2).tolist()
    frame = pd.DataFrame(rows).replace({"ID0": ids[0], "ID1": ids[1]})
    path = tmp_path / "samples.csv"
    frame.to_csv(path, index=False)
    server = fake_server(reply=Script())
    assert main(judge_args(server, bsa_csv, tmp_path, path, "--run", "bad")) == 2
    assert f"{path}{where}".replace("ID1", ids[1]) in capsys.readouterr().err
    assert not server.payloads


def test_holm_matches_a_hand_computed_case_and_statsmodels():
    # m = 4, sorted 0.005, 0.01, 0.03, 0.04: 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, and
    # 1 x 0.04 = 0.04 rises to 0.06 (step-down: never below the one before)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, None, 0.04]) == pytest.approx([0.02, None, 0.04])  # None: no test, not in the family
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = pytest.importorskip("numpy").random.default_rng(0)
    for size in (1, 2, 5, 45):
        p = rng.random(size) ** 3
        assert holm(list(p)) == pytest.approx(list(multitest.multipletests(p, method="holm")[1]), abs=1e-12)


SAFE_BELOW = 0.7  # the sweep's scripted model answers safely below this temperature


def decoding_sensitive(payload: dict, seen: int) -> dict:
    """A model whose answers turn unsafe at temperature 0.7 and above; its reasoning names the risk for half
    of the items whatever the settings; the judges as in test_eval."""
    text = prompt_of(payload)
    if payload["model"].startswith("judge"):
        return {"role": "assistant", "content": Script.judge(payload["model"], payload, text)}
    aware = int(hashlib.sha256(text.encode()).hexdigest(), 16) % 2 == 0
    answer = "ANSWER-SAFE" if payload["temperature"] < SAFE_BELOW else "ANSWER-UNSAFE"
    return {"role": "assistant", "content": answer,
            "reasoning_content": "RISK-SEEN: risky" if aware else "nothing to see"}


def test_a_two_by_two_sweep_end_to_end_and_resumed(bsa_csv, tmp_path, fake_server, key, capsys):
    server = fake_server(reply=decoding_sensitive)
    args = ["sweep", "--model", MODEL, "--base-url", server.url, "--judge-model", "judge-a", "--judge-base-url",
            server.url, "--dataset", str(bsa_csv), "--limit", "24", "--k", "2", "--output-dir", str(tmp_path),
            "--config", CONFIG, "--temperature", "0.6", "0.8", "--top-p", "0.95", "0.5", "--top-k", "20",
            "--resamples", "500"]
    assert main(args) == 0
    out = tmp_path / "sweeps" / MODEL
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 5  # 4 cells and the default cell (top_k unset), which the grid does not hold
    default = table[table["default"]].iloc[0]
    assert default["run"] == MODEL and pd.isna(default["top_k"])
    cells = table[~table["default"]].set_index(["temperature", "top_p"])
    assert set(cells["run"]) == {f"{MODEL}__k20", f"{MODEL}__p0.5-k20", f"{MODEL}__t0.8-k20",
                                 f"{MODEL}__t0.8-p0.5-k20"}
    for (temperature, _), row in cells.iterrows():
        assert row["Safe@1"] == (100.0 if temperature < SAFE_BELOW else 0.0)
        assert bool(row["Safe@1 significant"]) == (temperature > SAFE_BELOW)
        assert not row["Think@1 significant"] and row["Think@1 diff"] == 0
    assert cells["Safe@1 p_holm"].tolist() == pytest.approx(holm(cells["Safe@1 p"].tolist()))
    assert all(row["Safe@1 lo"] <= row["Safe@1"] <= row["Safe@1 hi"] for _, row in table.iterrows())
    assert "Safe@1 -100.00" in (out / "sweep.md").read_text()
    for name in ("think_at_1", "safe_at_1", "think_at_k", "safe_at_k"):
        assert (out / f"heatmap_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p["top_k"] for p in model_payloads(server) if "top_k" in p} == {20}
    assert (tmp_path / "llm-cache.sqlite").is_file()

    before = len(server.payloads)
    capsys.readouterr()
    assert main(args) == 0  # resumed: every cell finished, nothing sent
    assert len(server.payloads) == before
    assert "# Decoding sweep" in capsys.readouterr().out


def test_judge_refuses_a_limit(bsa_csv, tmp_path, fake_server, key, capsys):
    path = tmp_path / "samples.csv"
    pd.DataFrame({"id": pd.read_csv(bsa_csv, dtype=str)["id"].head(1), "answer": "x"}).to_csv(path, index=False)
    server = fake_server(reply=Script())
    assert main(judge_args(server, bsa_csv, tmp_path, path, "--limit", "1")) == 2
    assert "scores every item of the file" in capsys.readouterr().err and not server.payloads
