"""`bsa eval` end to end against the scripted server playing three reasoning models (reasoning in a field, in
<think> tags, none) and judges, on items of BSA's released set; plus the eval's own pure parts."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from bsa.benchmark import JUDGED_COLUMNS, SUCCESS, THINK_LABELS
from bsa.cli import main
from bsa.eval.judges import LABEL_FIELD, UNSCORED, verdict_from
from bsa.eval.leaderboard import build_leaderboard
from bsa.eval.metrics import HEADLINE, compute_metrics
from bsa.eval.run import (
    BSA_RELEASED,
    TOY_WARNING,
    EvalRequest,
    detect_lang,
    endpoints_for,
    load_benchmark,
    settings_of,
    stratified_limit,
)
from bsa.pipeline.errors import ConfigError, DataError
from bsa.pipeline.io import read_table
from bsa.pipeline.llm import Response
from bsa.pipeline.prompts import PromptLoader
from bsa.project import load_config
from tests.fake_openai import FakeOpenAI, prompt_of, request_schema

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "default.yaml")
SECRET = "sk-test-never-on-disk"
LIMIT, K = 30, 3
SAFE_TEXT, UNSAFE_TEXT, GARBAGE_TEXT = "ANSWER-SAFE", "ANSWER-UNSAFE", "ANSWER-GARBAGE"
AWARE_TEXT = "RISK-SEEN"


def judge_labels(payload: dict) -> list[str] | None:
    """The labels a judge request's schema allows, in any `response_format` form (None: not a judge)."""
    return (request_schema(payload).get("properties", {}).get(LABEL_FIELD) or {}).get("enum")


def seed_of(query: str) -> int:
    return int(hashlib.sha256(query.encode()).hexdigest()[:8], 16)


def behaviour(model: str, query: str, draw: int) -> tuple[str, str]:
    """The scripted model's (answer, reasoning) for the `draw`-th sample (1..k) of a query."""
    value = seed_of(query) + draw
    answer = UNSAFE_TEXT if value % 3 == 0 else SAFE_TEXT
    if model == "model-plain" and seed_of(query) % 4 == 0 and draw == 1:
        answer = GARBAGE_TEXT  # the safety judge answers this one with garbage
    return answer, (f"{AWARE_TEXT}: this request is risky" if value % 2 == 0 else "just a normal request")


class Script:
    """The server's replies: the three models and two judges (the second flips a few safety verdicts)."""

    def __init__(self) -> None:
        self.draws: Counter[tuple[str, str]] = Counter()

    def __call__(self, payload: dict, seen: int) -> dict:
        model, text = payload["model"], prompt_of(payload)
        if model.startswith("judge"):
            return {"role": "assistant", "content": self.judge(model, payload, text)}
        self.draws[(model, text)] += 1
        answer, reasoning = behaviour(model, text, self.draws[(model, text)])
        if model == "model-field":
            return {"role": "assistant", "content": answer, "reasoning_content": reasoning}
        if model == "model-think":
            return {"role": "assistant", "content": f"<think>{reasoning}</think>\n{answer}"}
        return {"role": "assistant", "content": answer}

    @staticmethod
    def judge(model: str, payload: dict, text: str) -> str:
        labels = judge_labels(payload)
        if labels == ["Safe", "Unsafe"]:
            if GARBAGE_TEXT in text:
                return "I would rather not answer in JSON."
            verdict = "Unsafe" if UNSAFE_TEXT in text else "Safe"
            if model == "judge-b" and seed_of(text) % 5 == 0:
                verdict = "Safe" if verdict == "Unsafe" else "Unsafe"
        else:
            verdict = labels[0] if AWARE_TEXT in text else labels[-1]
        return json.dumps({"label": verdict, "reason": "scripted"})


def expected_labels(model: str, query: str, scenario: str) -> list[tuple[str, str]]:
    """(Safe_Ans_Check, Thk_Acc_Judge) of the k samples, sorted (sample order depends on arrival order)."""
    labels = []
    for draw in range(1, K + 1):
        answer, reasoning = behaviour(model, query, draw)
        safety = UNSCORED if answer == GARBAGE_TEXT else ("Unsafe" if answer == UNSAFE_TEXT else "Safe")
        aware = model != "model-plain" and AWARE_TEXT in reasoning
        labels.append((safety, SUCCESS[scenario] if aware else THINK_LABELS[scenario][-1]))
    return sorted(labels)


def run_eval(server: FakeOpenAI, model: str, out: Path, dataset: Path, *extra: str) -> int:
    """`bsa eval` on the scripted server, judged by judge-a unless `extra` names the judges."""
    judge = () if "--judge-model" in extra else ("--judge-model", "judge-a", "--judge-base-url", server.url)
    return main(["eval", "--model", model, "--base-url", server.url, *judge,
                 "--dataset", str(dataset), "--limit", str(LIMIT),
                 "--k", str(K), "--output-dir", str(out), "--config", CONFIG, *extra])


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, request):
    """Three models evaluated once on 30 released items (k=3); the first also with a second judge."""
    from tests.conftest import BSA_CSV, require_shared

    dataset = require_shared(BSA_CSV)
    out = tmp_path_factory.mktemp("results")
    patch = pytest.MonkeyPatch()
    patch.setenv("OPENAI_API_KEY", SECRET)
    request.addfinalizer(patch.undo)
    script = Script()
    with FakeOpenAI(reply=script) as server:
        assert run_eval(server, "model-field", out, dataset, "--second-judge-model", "judge-b") == 0
        assert run_eval(server, "model-think", out, dataset) == 0
        assert run_eval(server, "model-plain", out, dataset) == 0
        yield {"out": out, "server": server, "dataset": dataset, "script": script}


def evaluated_items(out: Path, model: str, dataset: Path) -> pd.DataFrame:
    ids = pd.read_csv(out / model / "judged.csv", dtype=str, keep_default_na=False)["id"].unique()
    items = pd.read_csv(dataset, dtype=str, keep_default_na=False)
    return items[items["id"].isin(ids)]


@pytest.mark.parametrize("model", ["model-field", "model-think", "model-plain"])
def test_judged_csv_is_the_official_format_with_the_right_labels(evaluated, model):
    out, dataset = evaluated["out"], evaluated["dataset"]
    assert (out / model / "judged.csv").read_text().splitlines()[0] == ",".join(JUDGED_COLUMNS)
    judged = pd.read_csv(out / model / "judged.csv", dtype=str, keep_default_na=False)
    items = evaluated_items(out, model, dataset)
    assert len(items) == LIMIT and len(judged) == LIMIT * K
    assert items["dataset_name"].value_counts().to_dict() == {"Cognitive Shortcut": 18, "Risk Omission": 9,
                                                              "Over Sensitivity": 3}
    assert set(judged["model_name"]) == {model}
    for item in items.itertuples():
        rows = judged[judged["id"] == item.id]
        assert set(rows["dataset_name"]) == {item.dataset_name}
        got = sorted(zip(rows["Safe_Ans_Check"], rows["Thk_Acc_Judge"], strict=True))
        assert got == expected_labels(model, item.query, item.dataset_name), item.id


@pytest.mark.parametrize("model", ["model-field", "model-think", "model-plain"])
def test_metrics_json_matches_the_judged_csv_and_a_plain_recount(evaluated, model):
    out = evaluated["out"]
    metrics = json.loads((out / model / "metrics.json").read_text())
    judged = pd.read_csv(out / model / "judged.csv", dtype=str, keep_default_na=False)
    again = compute_metrics(judged, k=K, resamples=0)[model]
    assert {name: metrics[name] for name in HEADLINE} == {name: again[name] for name in HEADLINE}
    scored = judged[judged["Safe_Ans_Check"] != UNSCORED].groupby("id")["Safe_Ans_Check"]
    assert metrics["Safe@1"] == round(scored.apply(lambda s: (s == "Safe").mean()).mean() * 100, 2)
    assert metrics["run"]["benchmark"] == BSA_RELEASED and metrics["run"]["subset"] is True
    assert metrics["run"]["temperature"] == 0.6 and metrics["run"]["top_p"] == 0.95
    assert metrics["categories"] and all(v["items"] > 0 for v in metrics["categories"].values())
    assert set(metrics["ci95"]) == {"Safe@1", "Safe@k", "Think@1", "Think@k", "F-score"}


def test_reasoning_sources_and_missing_reasoning_are_reported(evaluated):
    out = evaluated["out"]
    runs = {model: json.loads((out / model / "metrics.json").read_text())["run"]
            for model in ("model-field", "model-think", "model-plain")}
    assert runs["model-field"]["reasoning_source"] == {"field": LIMIT * K}
    assert runs["model-think"]["reasoning_source"] == {"think_tags": LIMIT * K}
    assert runs["model-plain"]["reasoning_source"] == {"none": LIMIT * K}
    assert runs["model-plain"]["without_reasoning"] == LIMIT * K
    assert runs["model-field"]["without_reasoning"] == 0 and runs["model-field"]["reasoning_elicited"] == 0
    report = (out / "model-plain" / "report.md").read_text()
    assert f"Reasoning: {LIMIT * K} of {LIMIT * K} samples had none" in report
    assert "elicited" not in report
    samples = pd.read_json(out / "model-think" / "samples.jsonl", lines=True)
    assert len(samples) == LIMIT * K
    assert samples["reasoning"].str.startswith(("RISK-SEEN", "just a normal")).all()
    assert samples["answer"].isin([SAFE_TEXT, UNSAFE_TEXT]).all()  # the <think> block is split off
    assert {"safety", "safety_reason", "thinking", "thinking_reason", "usage"} <= set(samples.columns)


def test_a_judge_answering_garbage_yields_unscored(evaluated):
    out, dataset = evaluated["out"], evaluated["dataset"]
    items = evaluated_items(out, "model-plain", dataset)
    expected = sum(seed_of(query) % 4 == 0 for query in items["query"])
    assert expected > 0
    metrics = json.loads((out / "model-plain" / "metrics.json").read_text())
    assert metrics["unscored"]["safety"] == expected and metrics["unscored"]["thinking"] == 0
    samples = pd.read_json(out / "model-plain" / "samples.jsonl", lines=True)
    garbage = samples[samples["answer"] == GARBAGE_TEXT]
    assert (garbage["safety"] == UNSCORED).all() and garbage["safety_error"].str.contains("unparsable").all()
    assert f"safety {expected}, reasoning 0" in (out / "model-plain" / "report.md").read_text()


def test_second_judge_gives_agreement(evaluated):
    out = evaluated["out"]
    metrics = json.loads((out / "model-field" / "metrics.json").read_text())
    first = pd.read_csv(out / "model-field" / "judged.csv", dtype=str, keep_default_na=False)
    second = pd.read_csv(out / "model-field" / "judged.second.csv", dtype=str, keep_default_na=False)
    agreement = metrics["agreement"]
    assert agreement["safety"]["pairs"] == LIMIT * K
    same = (first["Safe_Ans_Check"] == second["Safe_Ans_Check"]).mean()
    assert agreement["safety"]["agreement"] == round(same, 4)
    assert agreement["safety"]["agreement"] < 1 and agreement["safety"]["kappa"] < 1
    assert agreement["thinking"]["kappa"] == 1.0
    assert "Cohen's kappa" in (out / "model-field" / "report.md").read_text()


def test_rerun_resumes_from_the_cache_and_never_pays_twice(evaluated, monkeypatch):
    out, server, dataset = evaluated["out"], evaluated["server"], evaluated["dataset"]
    before = len(server.payloads)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert run_eval(server, "model-think", out, dataset) == 0
    assert len(server.payloads) == before
    metrics = json.loads((out / "model-think" / "metrics.json").read_text())
    assert metrics["run"]["usage"]["sent"] == 0


def test_the_api_key_is_never_written(evaluated):
    for path in evaluated["out"].rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_k_samples_in_one_request_where_the_server_supports_n(bsa_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAI(reply=Script()) as server:
        endpoint = [f"endpoints.batched.{key}" for key in (f"base_url={server.url}", "model=model-think",
                                                           "supports_n=true", "api_key_env=OPENAI_API_KEY")]
        assert main(["eval", "--model", "batched", "--judge-model", "judge-a", "--judge-base-url", server.url,
                     "--dataset", str(bsa_csv), "--limit", "6", "--k", str(K), "--output-dir", str(tmp_path),
                     "--config", CONFIG, *[arg for key in endpoint for arg in ("--set", key)]]) == 0
        sampled = [p for p in server.payloads if p["model"] == "model-think"]
    assert len(sampled) == 6 and all(p["n"] == K for p in sampled)
    judged = pd.read_csv(tmp_path / "batched" / "judged.csv", dtype=str, keep_default_na=False)
    items = evaluated_items(tmp_path, "batched", bsa_csv)
    for item in items.itertuples():
        rows = judged[judged["id"] == item.id]
        got = sorted(zip(rows["Safe_Ans_Check"], rows["Thk_Acc_Judge"], strict=True))
        assert got == expected_labels("model-think", item.query, item.dataset_name), item.id


def test_rules_add_the_safety_rules_system_prompt(evaluated, monkeypatch):
    out, server, dataset = evaluated["out"], evaluated["server"], evaluated["dataset"]
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    before = len(server.payloads)
    assert main(["eval", "--model", "model-field", "--base-url", server.url, "--judge-model", "judge-a",
                 "--judge-base-url", server.url, "--dataset", str(dataset), "--limit", "3", "--k", "1",
                 "--output-dir", str(out / "rules"), "--config", CONFIG, "--rules"]) == 0
    rules = PromptLoader("en").load("safety_rules").system
    sent = [p for p in server.payloads[before:] if p["model"] == "model-field"]
    assert len(sent) == 3 and all(p["messages"][0] == {"role": "system", "content": rules} for p in sent)
    metrics = json.loads((out / "rules" / "model-field+rules" / "metrics.json").read_text())
    assert metrics["model"] == "model-field+rules" and metrics["run"]["rules"] is True


def test_leaderboard_puts_runs_beside_the_published_figures(evaluated):
    out = evaluated["out"]
    written = build_leaderboard(out, out / "board")
    assert [p.name for p in written] == ["leaderboard.csv", "leaderboard.md", "leaderboard.png", "leaderboard.html"]
    board = pd.read_csv(out / "board" / "leaderboard.csv")
    ours = board[board["source"] == "this project"]
    assert set(ours["model"]) == {"model-field", "model-think", "model-plain"}
    assert len(board) == 3 + 23 and (ours["items"] == LIMIT).all()
    assert board["F-score"].is_monotonic_decreasing
    assert (out / "board" / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "BSA (published)" in (out / "board" / "leaderboard.md").read_text()


def test_leaderboard_without_results_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="run `make eval"):
        build_leaderboard(tmp_path)


# -- the pure parts ------------------------------------------------------------------------------------------

def benchmark(counts: dict[str, int]) -> pd.DataFrame:
    rows = [{"id": f"{name[:2]}{i}", "query": f"q {name} {i}", "risk_summary": "r", "dataset_name": name,
             "label": "Rumors-Rumors with Negative Impact"} for name, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows)


def test_limit_is_stratified_by_scenario_and_deterministic():
    items = benchmark({"Risk Omission": 600, "Cognitive Shortcut": 1200, "Over Sensitivity": 200})
    picked = stratified_limit(items, 20, seed=0)
    assert picked["dataset_name"].value_counts().to_dict() == {"Cognitive Shortcut": 12, "Risk Omission": 6,
                                                               "Over Sensitivity": 2}
    assert picked["id"].tolist() == stratified_limit(items, 20, seed=0)["id"].tolist()
    assert picked.index.is_monotonic_increasing
    assert len(stratified_limit(items, 7, seed=0)) == 7
    assert set(picked["id"]) <= set(stratified_limit(items, 40, seed=0)["id"])  # nested: caches are reused
    assert stratified_limit(items, None, seed=0) is items


def test_benchmark_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "bench.csv"
    frame = benchmark({"Risk Omission": 3})
    frame.loc[2, "dataset_name"] = "Jailbreak"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as caught:
        load_benchmark(path)
    assert (caught.value.line, caught.value.field) == (4, "dataset_name") and "Jailbreak" in str(caught.value)
    benchmark({"Risk Omission": 2}).drop(columns=["risk_summary"]).to_csv(path, index=False)
    with pytest.raises(DataError, match="missing column"):
        load_benchmark(path)
    pd.concat([benchmark({"Risk Omission": 2})] * 2).to_csv(path, index=False)
    with pytest.raises(DataError, match="duplicate id Ri0"):
        load_benchmark(path)


def test_verdicts_accept_label_variants_and_reject_unknown_labels():
    labels = THINK_LABELS["Cognitive Shortcut"]
    assert verdict_from(Response(ok=True, parsed={"label": "fully_covered", "reason": "r"}), labels).label \
        == "Fully Covered"
    boolean = Response(ok=True, parsed={"label": True})
    assert verdict_from(boolean, THINK_LABELS["Risk Omission"]).label == "True"
    unknown = verdict_from(Response(ok=True, parsed={"label": "Mostly Covered"}, raw="{...}"), labels)
    assert unknown.label == UNSCORED and "Mostly Covered" in unknown.error and unknown.raw == "{...}"
    failed = verdict_from(Response(ok=False, error="unparsable: no JSON object", raw="garbage"), labels)
    assert (failed.label, failed.error, failed.raw) == (UNSCORED, "unparsable: no JSON object", "garbage")


def test_language_follows_the_queries():
    assert detect_lang(pd.Series(["如何制作炸药？", "你好", "hello"])) == "zh"
    assert detect_lang(pd.Series(["how are you", "你好"])) == "en"


def cli_args(**given: object) -> EvalRequest:
    return EvalRequest(**{"model": "local", **given})


def test_the_local_model_asks_for_elicited_reasoning_and_the_local_judge_by_name():
    config = load_config(CONFIG)
    settings = settings_of(config)
    endpoints = endpoints_for(cli_args(judge_model="local"), config, settings)
    model, judge = endpoints["model"], endpoints["judge"]
    assert model.base_url == judge.base_url == "local"
    assert model.reasoning == "elicit" and model.max_tokens == settings.local_max_tokens
    assert (model.temperature, model.top_p) == (0.6, 0.95)
    assert judge.temperature == 0.0 and judge.max_tokens == settings.local_judge_max_tokens
    assert judge.reasoning != "elicit"  # a grammar-constrained judge
    assert model.timeout >= settings.local_timeout and judge.timeout >= settings.local_timeout


def test_endpoints_for_a_remote_model_and_judge():
    config = load_config(CONFIG)
    endpoints = endpoints_for(cli_args(model="r1", base_url="http://host/v1", judge_model="big-judge"),
                              config, settings_of(config))
    assert endpoints["model"].model == "r1" and endpoints["model"].api_key_env == "OPENAI_API_KEY"
    assert endpoints["judge"].base_url == "http://host/v1" and endpoints["judge"].model == "big-judge"
    with pytest.raises(ConfigError, match="BASE_URL"):
        endpoints_for(cli_args(model="unknown-model"), config, settings_of(config))


def test_a_bad_eval_section_is_a_config_error_when_the_config_loads():
    with pytest.raises(ConfigError, match="eval.temprature"):
        load_config(CONFIG, ["eval.temprature=0.3"])


@pytest.mark.llama
def test_the_local_model_runs_end_to_end(bsa_csv, tmp_path):
    assert main(["eval", "--model", "local", "--judge-model", "local", "--dataset", str(bsa_csv),
                 "--limit", "3", "--k", "1", "--output-dir", str(tmp_path), "--config", CONFIG]) == 0
    judged, _ = read_table(tmp_path / "local" / "judged.csv")
    assert len(judged) == 3
    metrics = json.loads((tmp_path / "local" / "metrics.json").read_text())
    assert metrics["run"]["base_url"] == "local" and metrics["run"]["samples"] == 3
    assert metrics["run"]["reasoning_elicited"] == 3
    report = (tmp_path / "local" / "report.md").read_text()
    assert "Reasoning was elicited" in report and report.startswith(TOY_WARNING)
