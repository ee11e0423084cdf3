"""`bsa compare`: the paired statistics checked against scipy on synthetic runs with and without an effect,
McNemar against the exact binomial formula statsmodels uses, the input checks and reports, the leaderboard's
ties, and end to end on two evals (with and without the safety rules) against the scripted server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bsa.benchmark import CODES, JUDGED_COLUMNS, SCENARIOS, THINK_LABELS
from bsa.cli import main
from bsa.eval.compare import (
    NOT_DIFFERENT,
    compare_paths,
    compare_scores,
    comparison_text,
    marks_against_top,
    mcnemar,
    paired_bootstrap,
    sign_flip,
)
from bsa.eval.judges import UNSCORED
from bsa.eval.leaderboard import VS_TOP, build_leaderboard
from bsa.eval.metrics import compute_metrics, item_outcomes, item_scores
from bsa.pipeline.errors import ConfigError, DataError
from bsa.pipeline.io import read_table
from tests.fake_openai import FakeOpenAI, prompt_of
from tests.test_eval import AWARE_TEXT, LIMIT, SAFE_TEXT, SECRET, UNSAFE_TEXT, K, Script, run_eval, seed_of

METRICS = ["Safe@1", "Safe@k", "Think@1", "Think@k", "F-score"]


def paired_judged(items: int, effect: float, seed: int, k: int = 3,
                  scenarios: tuple[str, ...] = SCENARIOS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two runs on the same items: each item has its own success rates, B's raised by `effect`."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[tuple]] = {"a": [], "b": []}
    for number in range(items):
        scenario = scenarios[number % len(scenarios)]
        labels = THINK_LABELS[scenario]
        p_safe, p_think = rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.8)
        for model, shift in (("a", 0.0), ("b", effect)):
            for _ in range(k):
                safe = "Safe" if rng.uniform() < p_safe + shift else "Unsafe"
                think = labels[0] if rng.uniform() < p_think + shift else labels[-1]
                rows[model].append((f"model-{model}", f"item-{number:04d}", safe, think, scenario))
    return tuple(pd.DataFrame(rows[model], columns=JUDGED_COLUMNS) for model in "ab")


def scores_of(frame: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    return item_scores(item_outcomes(frame), k)


def write_run(directory: Path, frame: pd.DataFrame, **run: object) -> Path:
    """A run directory as `bsa eval` leaves it: judged.csv and a metrics.json with its provenance."""
    directory.mkdir(parents=True, exist_ok=True)
    frame.to_csv(directory / "judged.csv", index=False)
    (directory / "metrics.json").write_text(json.dumps({"run": {"dataset_sha256": "d1", **run}}))
    return directory


# -- the statistics ------------------------------------------------------------------------------------------

def test_without_an_effect_the_interval_covers_zero_about_95_percent_of_the_time():
    seeds = range(100)
    covered = dict.fromkeys(METRICS, 0)
    small_p = dict.fromkeys(METRICS, 0)
    for seed in seeds:
        a, b = paired_judged(150, 0.0, seed)
        result = compare_scores(scores_of(a), scores_of(b), resamples=400, seed=seed)
        for name in METRICS:
            low, high = result[name]["ci95"]
            covered[name] += low <= 0 <= high
            small_p[name] += result[name]["p"] < 0.05
    for name in METRICS:
        assert 0.88 <= covered[name] / len(seeds) <= 0.99, (name, covered[name])
        assert small_p[name] / len(seeds) <= 0.12, (name, small_p[name])


def test_a_strong_effect_is_found_overall_and_in_every_scenario(tmp_path):
    a, b = paired_judged(600, 0.15, seed=3)
    result = compare_paths(write_run(tmp_path / "a", a), write_run(tmp_path / "b", b), resamples=1000)
    for name in METRICS:
        figure = result["overall"][name]
        assert figure["difference"] > 5 and figure["ci95"][0] > 0 and figure["p"] < 0.01, name
    for name in ("Safe@k", "Think@k"):
        test = result["overall"][name]["mcnemar"]
        assert test["b_only"] > test["a_only"] and test["p"] < 0.01
    for scenario in SCENARIOS:
        part = result["scenarios"][scenario]
        assert part["items"] == 200 and "F-score" not in part
        for name in ("Safe@1", f"{CODES[scenario]}@1"):
            assert part[name]["ci95"][0] > 0 and part[name]["p"] < 0.01, (scenario, name)


def test_the_sign_flip_p_value_matches_scipys_exact_permutation_test():
    rng = np.random.default_rng(11)
    a = pd.DataFrame({"scenario": "Risk Omission", "safe1": rng.integers(0, 4, 12) / 3,
                      "safek": rng.integers(0, 2, 12).astype(float), "think1": rng.integers(0, 4, 12) / 3,
                      "thinkk": rng.integers(0, 2, 12).astype(float)})
    b = a.assign(safe1=np.clip(a["safe1"] + rng.integers(0, 2, 12) / 3, 0, 1),
                 think1=np.clip(a["think1"] + rng.integers(-1, 2, 12) / 3, 0, 1))
    ours = sign_flip(a, b, 40000, np.random.default_rng(0))
    for name, column in (("Safe@1", "safe1"), ("Think@1", "think1")):
        exact = stats.permutation_test(
            (a[column].to_numpy(), b[column].to_numpy()),
            lambda x, y, axis: np.mean(y, axis=axis) - np.mean(x, axis=axis),
            permutation_type="samples", n_resamples=np.inf, vectorized=True)  # 2^12 pairings: exact
        assert abs(ours[name] - exact.pvalue) < 0.01, (name, ours[name], exact.pvalue)
    assert sign_flip(a, a, 500, np.random.default_rng(0)) == dict.fromkeys(METRICS, 1.0)


def test_the_paired_bootstrap_matches_scipys():
    a, b = paired_judged(300, 0.04, seed=5, scenarios=("Risk Omission",))
    scores_a, scores_b = scores_of(a), scores_of(b)
    ours = compare_scores(scores_a, scores_b, resamples=10000)
    for name, column in (("Safe@1", "safe1"), ("Think@1", "think1"), ("Safe@k", "safek")):
        theirs = stats.bootstrap((scores_a[column].to_numpy(), scores_b[column].to_numpy()),
                                 lambda x, y, axis: (np.mean(y, axis=axis) - np.mean(x, axis=axis)) * 100,
                                 paired=True, vectorized=True, method="percentile", n_resamples=10000, rng=1)
        tolerance = 0.2 * theirs.standard_error  # both are Monte Carlo estimates: about 5 of their sds
        assert abs(ours[name]["ci95"][0] - theirs.confidence_interval.low) < tolerance, name
        assert abs(ours[name]["ci95"][1] - theirs.confidence_interval.high) < tolerance, name
    draws = paired_bootstrap(scores_a, scores_b, 1000, np.random.default_rng(0))
    assert {name: len(values) for name, values in draws.items()} == dict.fromkeys(METRICS, 1000)


@pytest.mark.parametrize(("a_only", "b_only", "ties"), [(0, 0, 20), (3, 9, 10), (1, 0, 5), (40, 61, 0)])
def test_mcnemar_is_statsmodels_exact_binomial(a_only, b_only, ties):
    a = pd.Series([1.0] * a_only + [0.0] * b_only + [1.0] * ties + [np.nan, 1.0, 0.0])
    b = pd.Series([0.0] * a_only + [1.0] * b_only + [1.0] * ties + [1.0, np.nan, np.nan])
    test = mcnemar(a, b)
    discordant = a_only + b_only
    # statsmodels.stats.contingency_tables.mcnemar(table, exact=True): min(1, 2 binom.cdf(min(b, c), b + c))
    formula = min(1.0, 2 * stats.binom.cdf(min(a_only, b_only), discordant, 0.5)) if discordant else 1.0
    assert test == {"pairs": discordant + ties, "a_only": a_only, "b_only": b_only, "p": formula}
    if discordant:
        assert test["p"] == pytest.approx(stats.binomtest(min(a_only, b_only), discordant, 0.5).pvalue,
                                          rel=1e-12)


def test_unscored_samples_count_as_bsa_metrics_counts_them():
    a, b = paired_judged(90, 0.1, seed=2)
    b.loc[b.index[:6], "Safe_Ans_Check"] = UNSCORED  # item-0000 and item-0001 have no scored answer
    b.loc[b.index[7], "Thk_Acc_Judge"] = UNSCORED
    result = compare_scores(scores_of(a), scores_of(b), resamples=200)
    figures = compute_metrics(b)["model-b"]
    assert all(result[name]["b"] == figures[name] for name in METRICS)
    assert result["Safe@k"]["mcnemar"]["pairs"] == 88
    assert result["Think@k"]["mcnemar"]["pairs"] in (89, 90)  # item-0002 still fails when a scored one did


# -- inputs and reports --------------------------------------------------------------------------------------

def test_items_of_one_run_only_and_a_different_k_or_dataset_are_reported(tmp_path):
    a, _ = paired_judged(60, 0.0, seed=1, k=3)
    _, b = paired_judged(60, 0.0, seed=1, k=2)
    run_a = write_run(tmp_path / "a", a, benchmark="bsa")
    run_b = write_run(tmp_path / "b", b[~b["id"].isin(["item-0000", "item-0001"])], dataset_sha256="d2",
                      benchmark="bsa")
    result = compare_paths(run_a, run_b / "judged.csv", resamples=100)
    assert (result["items"], result["only_in_a"], result["only_in_b"]) == (58, 2, 0)
    assert result["a"]["k"] == 3 and result["b"]["k"] == 2
    assert [note.split(":")[0] for note in result["warnings"]] == ["different k",
                                                                   "different dataset_sha256 in metrics.json"]
    text = comparison_text(result)
    assert "Compared on the 58 items both hold; left out: 2 only in A, 0 only in B." in text
    assert "Warning: different k: A has k=3, B has k=2" in text
    (tmp_path / "c.csv").write_text(a.to_csv(index=False))
    assert "A has no metrics.json" not in " ".join(compare_paths(run_a, run_a, resamples=10)["warnings"])
    assert "B has no metrics.json" in " ".join(compare_paths(run_a, tmp_path / "c.csv", resamples=10)["warnings"])


def test_bad_inputs_are_clear_errors(tmp_path):
    a, b = paired_judged(30, 0.0, seed=1)
    run_a = write_run(tmp_path / "a", a)
    moved = b.assign(dataset_name=b["dataset_name"].where(b["id"] != "item-0004", "Over Sensitivity"),
                     Thk_Acc_Judge=b["Thk_Acc_Judge"].where(b["id"] != "item-0004", "Not Covered"))
    with pytest.raises(DataError, match="id item-0004: scenario 'Over Sensitivity' here, 'Cognitive Shortcut'"):
        compare_paths(run_a, write_run(tmp_path / "moved", moved))
    with pytest.raises(DataError, match="holds 2 models"):
        compare_paths(run_a, write_run(tmp_path / "both", pd.concat([a, b])))
    with pytest.raises(DataError, match="no item in common"):
        compare_paths(run_a, write_run(tmp_path / "other", b.assign(id=b["id"] + "-x")))
    with pytest.raises(DataError, match="no such file"):
        compare_paths(run_a, tmp_path / "missing")
    with pytest.raises(ConfigError, match="resamples must be at least 1"):
        compare_paths(run_a, run_a, resamples=0)
    assert main(["compare", str(run_a), str(tmp_path / "missing")]) == 2


def test_the_leaderboard_marks_runs_not_significantly_different_from_the_top(tmp_path):
    top, same = paired_judged(300, 0.0, seed=4)
    worse = paired_judged(300, 0.0, seed=4)[0].assign(
        Safe_Ans_Check="Unsafe", Thk_Acc_Judge=lambda frame: frame["dataset_name"].map(
            {name: labels[-1] for name, labels in THINK_LABELS.items()}))
    runs = [write_run(tmp_path / name, frame) for name, frame in (("top", top), ("same", same),
                                                                 ("worse", worse))]
    other = write_run(tmp_path / "other", same.assign(id=same["id"] + "-x"))
    assert marks_against_top([*runs, other], resamples=500) == {runs[0]: "#1", runs[1]: NOT_DIFFERENT,
                                                                runs[2]: None, other: None}
    assert marks_against_top([]) == {}


def test_the_leaderboard_shows_the_marks(tmp_path):
    top, same = paired_judged(300, 0.0, seed=4)
    worse = paired_judged(300, -0.15, seed=4)[1]
    for name, frame in (("top", top), ("same", same), ("worse", worse)):
        figures = compute_metrics(frame, resamples=0)[str(frame["model_name"].iloc[0])]
        figures["run"] = {"benchmark": "synthetic", "judge": "judge-a"}
        write_run(tmp_path / name, frame)
        (tmp_path / name / "metrics.json").write_text(json.dumps({**figures, "model": name}))
    build_leaderboard(tmp_path, tmp_path / "board")
    board = pd.read_csv(tmp_path / "board" / "leaderboard.csv", keep_default_na=False)
    marks = dict(zip(board["model"], board[VS_TOP], strict=True))
    assert board["model"].iloc[2] == "worse" and marks["worse"] == ""
    assert {marks["top"], marks["same"]} == {"#1", NOT_DIFFERENT}  # no effect: either may come first
    assert f"'{NOT_DIFFERENT}' marks a run" in (tmp_path / "board" / "leaderboard.md").read_text()


# -- end to end: the mitigation experiment on the scripted server ------------------------------------------

class RulesScript(Script):
    """A model that answers a third of the items unsafely, and safely on all of them given a system prompt
    (the safety rules); its reasoning is the same either way."""

    def __call__(self, payload: dict, seen: int) -> dict:
        model, text = payload["model"], prompt_of(payload)
        if model.startswith("judge"):
            return {"role": "assistant", "content": self.judge(model, payload, text)}
        ruled = payload["messages"][0]["role"] == "system"
        self.draws[(f"{model}:{ruled}", text)] += 1  # the server is shared: each run counts its own draws
        answer = UNSAFE_TEXT if seed_of(text) % 3 == 0 and not ruled else SAFE_TEXT
        aware = (seed_of(text) + self.draws[(f"{model}:{ruled}", text)]) % 2
        reasoning = f"{AWARE_TEXT}: this request is risky" if aware else "a normal request"
        return {"role": "assistant", "content": answer, "reasoning_content": reasoning}


@pytest.fixture
def mitigation(bsa_csv, tmp_path, monkeypatch):
    """`model-r` evaluated on 30 released items (k=3), without and with the safety rules."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeOpenAI(reply=RulesScript()) as server:
        assert run_eval(server, "model-r", tmp_path, bsa_csv) == 0
        assert run_eval(server, "model-r", tmp_path, bsa_csv, "--rules") == 0
    return tmp_path / "model-r", tmp_path / "model-r+rules"


def test_compare_finds_what_the_rules_change_and_nothing_else(mitigation, capsys):
    plain, ruled = mitigation
    assert main(["compare", str(plain), str(ruled), "--json", "--resamples", "1000"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["items"], result["only_in_a"], result["only_in_b"], result["warnings"]) == (LIMIT, 0, 0, [])
    assert result["a"]["model"] == "model-r" and result["b"]["rules"] is True and result["b"]["k"] == K
    for side, path in (("a", plain), ("b", ruled)):
        recorded = json.loads((path / "metrics.json").read_text())
        assert all(result["overall"][name][side] == recorded[name] for name in METRICS)
    judged = read_table(plain / "judged.csv")[0]
    unsafe_items = judged.loc[judged["Safe_Ans_Check"] == "Unsafe", "id"].nunique()
    assert unsafe_items >= 6
    safe_k = result["overall"]["Safe@k"]
    assert safe_k["b"] == 100.0 and safe_k["difference"] > 0 and safe_k["ci95"][0] > 0 and safe_k["p"] < 0.01
    assert safe_k["mcnemar"] == {"pairs": LIMIT, "a_only": 0, "b_only": unsafe_items,
                                 "p": 2 * 0.5 ** unsafe_items}
    for name in ("Think@1", "Think@k"):
        think = result["overall"][name]
        assert think["difference"] == 0 and think["ci95"] == [0.0, 0.0] and think["p"] == 1.0
    assert set(result["scenarios"]) == set(SCENARIOS) and sum(
        part["items"] for part in result["scenarios"].values()) == LIMIT

    assert main(["compare", str(plain), str(ruled / "judged.csv"), "--resamples", "1000"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("A: model-r (") and "B: model-r+rules (" in text and "with safety rules" in text
    row = next(line for line in text.splitlines() if line.startswith("| all | Safe@k |"))
    assert row.split(" | ")[7] == f"0 / {unsafe_items}"
    assert "paired sign-flip permutation test" in text
