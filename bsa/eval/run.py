"""`bsa eval`: sample a model k times per item of a BSA-format benchmark, judge every sample's answer and
reasoning, score, and write `results/<run>/` (the run named by its model and settings, bsa.eval.naming):

    samples.jsonl   every sample: reasoning (and its length in tokens and characters), answer, usage,
                    truncation, every judge's verdicts and reasons (`safety`, `safety_2`, ...; with
                    three judges or more the majority's too, `safety_majority`, ...)
    judged.csv      the official BSA format, k rows an id:
                    model_name,id,Safe_Ans_Check,Thk_Acc_Judge,dataset_name
                    (the official verdict: bsa.eval.ensemble)
    judged.first.csv, judged.second.csv, ...   each judge's own, when there are several
    metrics.json    bsa.eval.metrics figures plus the run's provenance (`run`)
    report.md       a short human summary
    samples.html    every item with its k samples and verdicts, filters and search (bsa.eval.viewer)
and `results/llm-cache.sqlite`, every reply of every run in `results/`, so a rerun after a crash resumes and
never pays twice, and runs asking the same (a judge request) share the reply.

Endpoints: `--base-url` names an OpenAI-compatible server; a `--model` that names an endpoint of the config
uses it; `local` is the embedded llama.cpp model, which is not a reasoning model, so it is asked to reason in
`<think>` tags (the engine's elicit option) and the report says so. A judge must be named: `--judge-model`
(with `--judge-base-url` for a remote one) or the config's `eval.judge_endpoint`; `local` is the embedded
toy judge, and the report's first line then says its verdicts come from a toy model. Several judges
(repeated `--judge-model`, `--second-judge-model`, `eval.judges`) and other judge prompts
(`eval.judge_prompts`): bsa.eval.ensemble, bsa.eval.judges.

Honesty rules: a sample that stopped before its final answer (`truncation_of`) is unscored for answer safety
(error `truncated`; `eval.judge_truncated: true` judges it anyway), its reasoning still judged; a sample
without reasoning gets its scenario's failure label by rule (bsa.eval.judges.judge_thinking).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from bsa.benchmark import BSA_COLUMNS, CODES, JUDGED_COLUMNS, SCENARIOS
from bsa.eval import ensemble, spot_check
from bsa.eval.config import Config
from bsa.eval.judges import (
    UNSCORED,
    JudgePrompts,
    Verdict,
    has_reasoning,
    judge_prompts,
    judge_safety,
    judge_thinking,
    override_hashes,
    sample_model,
)
from bsa.eval.metrics import compute_metrics
from bsa.eval.naming import TOP_K, check_free, results_dir, run_name, run_settings, with_sampling
from bsa.eval.viewer import write_samples_page
from bsa.pipeline.config import EMBEDDED, BuildConfig, EndpointConfig, validate_section
from bsa.pipeline.errors import ConfigError, DataError
from bsa.pipeline.io import file_sha256, read_table, write_json, write_table, write_text
from bsa.pipeline.llm import Engine, Response
from bsa.pipeline.prompts import PromptLoader
from bsa.text.charclass import CJK, HAN
from bsa.text.markdown import markdown_table

MODEL, JUDGE = "model", ensemble.JUDGE
# sha256 of the sorted ids of BSA's released set (OpenStellarTeam/BSA data/dataset.csv, 2,000 items): a run
# on it (or on a --limit subset of it) is compared with BSA's published figures on the leaderboard.
BSA_RELEASED_IDS_SHA256 = "0feed470bee09d0f31fc67bb09a6d959e936929d0e76e57697ad8760e9aa0c8d"
BSA_RELEASED = "BSA released set"
_HAN = re.compile(f"[{HAN}]")
# the estimated reasoning-token count: a run of word characters, a punctuation mark, or one CJK character
REASONING_TOKEN = re.compile(f"[{CJK}]|[^\\W{CJK}]+|[^\\w\\s]")
TRUNCATED = "truncated"  # the safety verdict's error for a sample that never gave its final answer
UNTERMINATED, LENGTH_NO_ANSWER, LENGTH_TEMPLATE_OPENED = ("unterminated_think", "length_no_answer",
                                                          "length_template_opened")
NO_JUDGE = ("no judge named: give JUDGE_MODEL=<model> JUDGE_BASE_URL=<url> (a capable model; bsa eval "
            "--judge-model/--judge-base-url, or eval.judge_endpoint in the config), or JUDGE_MODEL=local for "
            "the embedded toy judge (SmolLM2-135M: its verdicts test the pipeline, not the model)")
TOY_WARNING = ("WARNING: the verdicts in this report come from a toy model (the embedded SmolLM2-135M "
               "judge): they test the pipeline, and the figures are not a measurement of the model.")


@dataclass(frozen=True)
class EvalRequest:
    """What `bsa eval` was asked: the model, k, the dataset and the judges (see `bsa eval --help`)."""

    model: str
    k: int = 5
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    dataset: str | None = None
    limit: int | None = None
    judge_model: str | Sequence[str] | None = None  # one or several (an ensemble: bsa.eval.ensemble)
    judge_base_url: str | Sequence[str] | None = None  # the judges' URLs, in the same order
    judge_api_key_env: str | None = None
    second_judge_model: str | None = None
    second_judge_base_url: str | None = None
    rules: bool = False
    output_dir: str = "results"
    lang: str | None = None
    run: str | None = None  # the run's name (default: bsa.eval.naming.run_name)
    temperature: float | None = None  # sampling overrides (over the endpoint's and the eval section's)
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    sample: dict[str, Any] = field(default_factory=dict)  # any other field of the request body (min_p, ...)
    cache: str | None = None  # the reply cache (default: <output_dir>/llm-cache.sqlite, shared by its runs)
    images: str | None = None  # a multimodal benchmark's images: auto, attach, describe (eval.images)

    def overrides(self) -> dict[str, Any]:
        """The sampling this request sets itself, over the endpoint's and the eval section's."""
        given = {name: getattr(self, name) for name in ("temperature", "top_p", "top_k", "max_tokens")}
        return {**{name: value for name, value in given.items() if value is not None}, **self.sample}


# -- the benchmark -------------------------------------------------------------------------------------------

def load_benchmark(path: str | Path) -> pd.DataFrame:
    """A BSA-format benchmark (id, query, risk_summary, dataset_name, label), checked row by row."""
    frame, _ = read_table(path)
    missing = [column for column in BSA_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)} (a BSA benchmark has "
                              f"{', '.join(BSA_COLUMNS)})")
    for column in ["id", "query", "risk_summary", "dataset_name"]:
        empty = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if empty.any():
            raise DataError(path, "empty value", _line(frame, empty.idxmax()), column)
    unknown = ~frame["dataset_name"].isin(SCENARIOS)
    if unknown.any():
        row = unknown.idxmax()
        raise DataError(path, f"unknown scenario '{frame.at[row, 'dataset_name']}' (expected one of "
                              f"{', '.join(SCENARIOS)})", _line(frame, row), "dataset_name")
    duplicated = frame["id"].duplicated()
    if duplicated.any():
        row = duplicated.idxmax()
        raise DataError(path, f"duplicate id {frame.at[row, 'id']}", _line(frame, row), "id")
    return frame[[*BSA_COLUMNS, "_line"]]


def _line(frame: pd.DataFrame, row: Any) -> int | None:
    return int(frame.at[row, "_line"]) if "_line" in frame.columns else None


def stratified_limit(items: pd.DataFrame, limit: int | None, seed: int, by: str = "dataset_name",
                     groups: Sequence[str] = SCENARIOS) -> pd.DataFrame:
    """`limit` items, the `groups` of column `by` (scenarios) in proportion (largest remainders), drawn with
    `seed`, in file order.

    Each group is shuffled once and cut, so a larger limit keeps the items of a smaller one (and their
    cached replies).
    """
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1 (got {limit})")
    counts = items[by].value_counts().reindex(groups).dropna()
    shares = counts / counts.sum() * limit
    quota = shares.astype(int)
    for name in (shares - quota).sort_values(ascending=False, kind="stable").index[: limit - quota.sum()]:
        quota[name] += 1
    picked = [items[items[by] == name].sample(frac=1, random_state=seed).head(int(n))
              for name, n in quota.items() if n]
    return pd.concat(picked).sort_index()


def ids_fingerprint(ids: pd.Series) -> str:
    """sha256 of the sorted ids: identifies a benchmark whatever its file's formatting."""
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def detect_lang(queries: pd.Series) -> str:
    """`zh` when most queries hold CJK characters, else `en` (picks the judge prompts' language)."""
    return "zh" if queries.map(lambda text: bool(_HAN.search(str(text)))).mean() > 0.5 else "en"


def default_dataset(config: BuildConfig) -> Path:
    path = config.build_path / "release" / "benchmark.csv"
    if not path.exists():
        raise ConfigError(f"no dataset given and no built release at {path}: run `make build-dataset` first, "
                          f"or pass DATASET=<a BSA-format CSV>")
    return path


# -- endpoints -----------------------------------------------------------------------------------------------

def settings_of(config: BuildConfig) -> Config:
    """The validated `eval:` section."""
    return validate_section(config, "eval", Config)


def model_endpoint(args: EvalRequest, config: BuildConfig, settings: Config) -> EndpointConfig:
    """The evaluated model's endpoint, sampling at the eval section's settings (temperature, top_p, top_k,
    `sample`) where it sets none of its own, and at the request's overrides over both."""
    defaults = {TOP_K: settings.top_k, **settings.sample}
    return with_sampling(_model_endpoint(args, config, settings), defaults, args.overrides())


def _model_endpoint(args: EvalRequest, config: BuildConfig, settings: Config) -> EndpointConfig:
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p}
    if args.base_url:
        return EndpointConfig(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                              max_tokens=settings.max_tokens, **sampling)
    if args.model in config.endpoints:
        base = config.endpoints[args.model]
    elif args.model == EMBEDDED:
        base = EndpointConfig()
    else:
        raise ConfigError(f"model '{args.model}': give BASE_URL (--base-url) or define "
                          f"endpoints.{args.model} in {config.config_path}")
    update: dict[str, Any] = {name: value for name, value in sampling.items() if getattr(base, name) is None}
    if base.embedded:  # a tiny instruction model: have it reason in <think> tags, keep samples short
        update.update(reasoning="elicit", max_tokens=settings.local_max_tokens,
                      **_local_serving(base, settings))
    return base.model_copy(update=update)


def _local_serving(base: EndpointConfig, settings: Config) -> dict[str, Any]:
    """The embedded server on a slow CPU: a longer timeout (requests in flight: llm.local.parallel)."""
    return {"timeout": max(base.timeout, settings.local_timeout)}


def judge_endpoint(model: str | None, base_url: str | None, api_key_env: str | None, config: BuildConfig,
                   settings: Config) -> EndpointConfig:
    """A judge's endpoint: a URL given, an endpoint of the config, or the embedded model when named `local`.
    Deterministic. ConfigError (NO_JUDGE) when no judge is named."""
    if base_url:
        if not model:
            raise ConfigError(f"a judge base URL ({base_url}) needs a judge model name (JUDGE_MODEL=...)")
        return EndpointConfig(base_url=base_url, model=model, api_key_env=api_key_env, temperature=0.0,
                              max_tokens=settings.judge_max_tokens)
    name = model or settings.judge_endpoint
    if not name:
        raise ConfigError(NO_JUDGE)
    if name in config.endpoints:
        base = config.endpoints[name]
    elif name == EMBEDDED:
        base = EndpointConfig()
    else:
        raise ConfigError(f"judge model '{name}': give JUDGE_BASE_URL (--judge-base-url) or define "
                          f"endpoints.{name} in {config.config_path}")
    update: dict[str, Any] = {"temperature": 0.0}
    if base.embedded:
        update.update(max_tokens=settings.local_judge_max_tokens, **_local_serving(base, settings))
    return base.model_copy(update=update)


def endpoints_for(args: EvalRequest, config: BuildConfig,
                  settings: Config) -> dict[str, EndpointConfig]:
    """The engine's endpoints: the model and the judges."""
    judges = judge_endpoints(args, config, settings)  # no judge: no run
    return {MODEL: model_endpoint(args, config, settings), **judges}


def judges_of(args: EvalRequest, config: BuildConfig, settings: Config) -> list[tuple[str, str | None]]:
    """(name, base URL or None) of each judge, in order (bsa.eval.ensemble.named_judges)."""
    return ensemble.named_judges(args, settings, lambda name: _served_elsewhere(name, config))


def judge_endpoints(args: EvalRequest, config: BuildConfig, settings: Config) -> dict[str, EndpointConfig]:
    """The judges' endpoints: `judge`, `judge2`, ...; ConfigError (NO_JUDGE) when none is named."""
    key = args.judge_api_key_env or args.api_key_env
    judges = judges_of(args, config, settings) or [(None, None)]
    return {ensemble.judge_key(position): judge_endpoint(name, url, key, config, settings)
            for position, (name, url) in enumerate(judges)}


def _served_elsewhere(model: str | None, config: BuildConfig) -> bool:
    """A judge model named without a URL that is neither an endpoint of the config nor the embedded model:
    it is asked on the evaluated model's URL."""
    return bool(model) and model not in config.endpoints and model != EMBEDDED


def is_toy(endpoint: EndpointConfig) -> bool:
    """The embedded model: fine for testing the pipeline, its verdicts are no measurement."""
    return endpoint.embedded


# -- sampling and judging ------------------------------------------------------------------------------------

@dataclass
class Judged:
    """One judge's verdicts on every sample, in sample order."""

    safety: list[Verdict]
    thinking: list[Verdict]


def template_opens_reasoning(setting: bool | str, responses: list[list[Response]]) -> bool:
    """The config's answer, or (auto) whether any sample of the run had only `</think>` (the chat template
    opened the reasoning, so a reply cut off before `</think>` shows no tag at all)."""
    if setting != "auto":
        return bool(setting)
    return any(r.ok and r.reasoning_shape == "close_only" for samples in responses for r in samples)


def truncation_of(response: Response, template_opens: bool) -> str:
    """Which rule says the sample stopped before its final answer ("" when it did not): `<think>` never
    closed; cut by max_tokens with no answer; cut by max_tokens with no tag while the template opens the
    reasoning (the whole reply is then reasoning)."""
    if not response.ok:
        return ""
    if response.reasoning_shape == "unterminated":
        return UNTERMINATED
    cut = response.finish_reason == "length"
    if cut and not response.content.strip():
        return LENGTH_NO_ANSWER
    if cut and template_opens and response.reasoning_shape == "none":
        return LENGTH_TEMPLATE_OPENED
    return ""


def estimate_tokens(text: str) -> int:
    """Tokens of a text by rule (REASONING_TOKEN): each run of word characters, each punctuation mark and each
    CJK character is one."""
    return len(REASONING_TOKEN.findall(text))


def reasoning_tokens(response: Response, reasoning: str, server_counts: bool) -> tuple[int, str]:
    """(tokens, source): the server's `reasoning_tokens` when it gave them for this sample alone, else counted
    from the reasoning ("estimated"); (0, "none") without reasoning."""
    if server_counts and "reasoning_tokens" in response.usage:
        return int(response.usage["reasoning_tokens"]), "server"
    if not has_reasoning(reasoning):
        return 0, "none"
    return estimate_tokens(reasoning), "estimated"


def sample_table(items: pd.DataFrame, responses: list[list[Response]], *, template_opens: bool,
                 server_counts: bool = True) -> pd.DataFrame:
    """One row per sample: the item's fields, what the model said, its truncation and reasoning length.

    `server_counts`: the server's reasoning-token counts are per sample (not when k samples share a request).
    """
    return pd.DataFrame([{"id": item.id, "scenario": item.dataset_name, "label": item.label, "sample": index,
                          "query": item.query, "risk_summary": item.risk_summary,
                          **sample_fields(response, template_opens, server_counts)}
                         for item, samples in zip(items.itertuples(index=False), responses, strict=True)
                         for index, response in enumerate(samples)])


def sample_fields(response: Response, template_opens: bool, server_counts: bool) -> dict[str, Any]:
    """What one sample said: reasoning (and its length), answer, truncation, usage (see sample_table)."""
    truncation = truncation_of(response, template_opens)
    reasoning, answer = response.reasoning or "", response.content
    source = response.reasoning_source if reasoning else "none"
    if truncation == LENGTH_TEMPLATE_OPENED:  # no tag: the whole reply is the unfinished reasoning
        reasoning, answer, source = answer, "", "template_opened"
    tokens, tokens_source = reasoning_tokens(response, reasoning, server_counts)
    return {"ok": response.ok, "error": response.error, "reasoning": reasoning, "reasoning_source": source,
            "reasoning_shape": response.reasoning_shape, "reasoning_tokens": tokens,
            "reasoning_tokens_source": tokens_source, "reasoning_chars": len(reasoning.strip()),
            "answer": answer, "finish_reason": response.finish_reason, "truncated": bool(truncation),
            "truncation": truncation, "elicited": response.elicited, "usage": response.usage,
            "cached": response.cached}


def judge_samples(engine: Engine, endpoint: str, samples: pd.DataFrame, prompts: PromptLoader, *,
                  judge_truncated: bool = False) -> Judged:
    """Both judges on every sample that was generated; a failed sample is unscored by both. A truncated
    sample's answer is unscored (error TRUNCATED) unless `judge_truncated`; its reasoning is judged."""
    done = samples[samples["ok"]]
    answered = done if judge_truncated else done[~done["truncated"]]
    safety = judge_safety(engine, endpoint, [{"query": row.query, "risk_summary": row.risk_summary,
                                              "answer": row.answer} for row in answered.itertuples()],
                          prompts, tag=endpoint)
    thinking = judge_thinking(engine, endpoint, [{"query": row.query, "risk_summary": row.risk_summary,
                                                  "scenario": row.scenario, "reasoning": row.reasoning}
                                                 for row in done.itertuples()], prompts, tag=endpoint)
    failed = {index: Verdict(UNSCORED, error=f"sample failed: {error}")
              for index, error in samples.loc[~samples["ok"], "error"].items()}
    safety_of = {**failed, **dict(zip(answered.index, safety, strict=True))}
    for index, truncation in done.loc[~done.index.isin(answered.index), "truncation"].items():
        safety_of[index] = Verdict(UNSCORED, f"no final answer ({truncation}): not judged", error=TRUNCATED)
    thinking_of = {**failed, **dict(zip(done.index, thinking, strict=True))}
    return Judged(safety=[safety_of[i] for i in samples.index],
                  thinking=[thinking_of[i] for i in samples.index])


def judged_frame(name: str, samples: pd.DataFrame, judged: Judged) -> pd.DataFrame:
    """The official BSA format: model_name,id,Safe_Ans_Check,Thk_Acc_Judge,dataset_name."""
    frame = pd.DataFrame({"model_name": name, "id": samples["id"].to_numpy(),
                          "Safe_Ans_Check": [v.label for v in judged.safety],
                          "Thk_Acc_Judge": [v.label for v in judged.thinking],
                          "dataset_name": samples["scenario"].to_numpy()})
    return frame[JUDGED_COLUMNS]


def with_verdicts(samples: pd.DataFrame, judged: Judged, suffix: str = "") -> pd.DataFrame:
    columns = {}
    for kind, verdicts in (("safety", judged.safety), ("thinking", judged.thinking)):
        columns[f"{kind}{suffix}"] = [v.label for v in verdicts]
        columns[f"{kind}{suffix}_reason"] = [v.reason for v in verdicts]
        columns[f"{kind}{suffix}_error"] = [v.error for v in verdicts]
    columns[f"thinking{suffix}_by_rule"] = [v.by_rule for v in judged.thinking]
    return samples.assign(**columns)


# -- the run -------------------------------------------------------------------------------------------------

def sample_stats(samples: pd.DataFrame, by: str = "scenario", groups: Sequence[str] = SCENARIOS
                 ) -> dict[str, Any]:
    """What the report says about the samples themselves: failures, missing reasoning, truncation, and the
    reasoning's length per group of column `by` (per scenario, under `by_scenario`)."""
    done = samples[samples["ok"]]
    truncated = samples[samples["truncated"]]
    return {"samples": len(samples), "failed": int((~samples["ok"]).sum()),
            "without_reasoning": int((~done["reasoning"].map(has_reasoning)).sum()),
            "reasoning_source": dict(Counter(done["reasoning_source"])),
            "reasoning_elicited": int(samples["elicited"].sum()),
            "cut_by_max_tokens": int((samples["finish_reason"] == "length").sum()),
            "without_answer": int((done["answer"].str.strip() == "").sum()),
            "truncated": len(truncated), "truncation": dict(Counter(truncated["truncation"])),
            "reasoning_tokens_source": dict(Counter(done["reasoning_tokens_source"])),
            "by_scenario": {name: _scenario_stats(samples[samples[by] == name])
                            for name in groups if (samples[by] == name).any()}}


def _scenario_stats(samples: pd.DataFrame) -> dict[str, Any]:
    """Truncation and reasoning length of one scenario's samples (means over its generated samples)."""
    done = samples[samples["ok"]]
    return {"samples": len(samples), "truncated": int(samples["truncated"].sum()),
            "with_reasoning": int(done["reasoning"].map(has_reasoning).sum()),
            "reasoning_tokens_mean": round(float(done["reasoning_tokens"].mean()), 1) if len(done) else None,
            "reasoning_chars_mean": round(float(done["reasoning_chars"].mean()), 1) if len(done) else None,
            "reasoning_tokens_source": dict(Counter(done["reasoning_tokens_source"]))}


@dataclass
class EvalPlan:
    """Everything a run needs, resolved from the command line and the config before any model is called."""

    model: str  # as given (--model)
    name: str  # the run's name: the model's name in judged.csv (bsa.eval.naming)
    out: Path
    cache: Path
    run_settings: dict[str, Any]  # bsa.eval.naming.run_settings: metrics.json's run.settings
    k: int
    dataset_path: Path
    benchmark: pd.DataFrame  # the whole benchmark
    items: pd.DataFrame  # the items evaluated (after --limit)
    lang: str
    prompts: PromptLoader  # the judges' (bsa.eval.judges.judge_prompts) and the rules prompt
    system_prompt: str | None
    endpoints: dict[str, EndpointConfig]
    settings: Config
    config: BuildConfig
    toy_judges: list[str]  # the judges (judge, judge2, ...) played by the embedded model
    generated: dict[str, Any] | None = None  # samples made elsewhere (bsa judge --samples): their file


def plan_eval(args: EvalRequest, config: BuildConfig, items: pd.DataFrame | None = None,
              dataset: Path | None = None) -> EvalPlan:
    """Resolve a run; ConfigError (before any model is called) on a bad option, when no judge is named, or
    when its directory holds a run with other settings. With `items` (a subset of `dataset`'s benchmark),
    the samples come from elsewhere: no model endpoint, the sampling settings unknown."""
    if args.k < 1:
        raise ConfigError(f"K must be at least 1 (got {args.k})")
    settings = settings_of(config)
    endpoints = judge_endpoints(args, config, settings)
    if items is None:
        endpoints = {MODEL: model_endpoint(args, config, settings), **endpoints}
    dataset_path = dataset or (Path(args.dataset) if args.dataset else default_dataset(config))
    benchmark = load_benchmark(dataset_path)
    items = stratified_limit(benchmark, args.limit, config.seed) if items is None else items
    lang = args.lang or detect_lang(items["query"])
    prompts = judge_prompts(lang, settings.judge_prompts, items["dataset_name"], base=config_dir(config))
    overrides = {key: found["sha256"] for key, found in override_hashes(prompts).items()}
    name, out, run, cache = run_place(args, config, settings, endpoints, prompts=overrides)
    return EvalPlan(model=args.model, name=name, out=out, k=args.k, dataset_path=dataset_path,
                    cache=cache, run_settings=run, benchmark=benchmark, items=items, lang=lang, prompts=prompts,
                    system_prompt=prompts.load("safety_rules").system if args.rules and MODEL in endpoints
                    else None, endpoints=endpoints, settings=settings, config=config,
                    toy_judges=[key for key in ensemble.judge_keys(endpoints) if is_toy(endpoints[key])])


def config_dir(config: BuildConfig) -> Path | None:
    """The config file's directory, where its relative paths (eval.judge_prompts) are read from."""
    return Path(config.config_path).parent if config.config_path else None


def run_place(args: EvalRequest, config: BuildConfig, settings: Config, endpoints: dict[str, EndpointConfig],
              prompts: dict[str, str] | None = None, images: str | None = None
              ) -> tuple[str, Path, dict[str, Any], Path]:
    """The run's name, directory, settings and reply cache (`prompts`: the judge prompts' overrides, key ->
    sha256; `images`: how a multimodal run's model got the images, when not attached); ConfigError when the
    directory holds a run made with other settings (a run never overwrites another)."""
    judge = ensemble.deciding([name for name, _ in judges_of(args, config, settings)])
    run = run_settings(endpoints.get(MODEL), judge, args.rules, prompts, images)
    default = default_settings(args, config) if MODEL in endpoints else run_settings(None, "", args.rules)
    name = args.run or run_name(args.model, run, default,
                                ensemble.deciding(ensemble.configured_judges(settings)) or None)
    out = results_dir(args.output_dir, name)
    check_free(out, run)
    return name, out, run, Path(args.cache) if args.cache else Path(args.output_dir) / "llm-cache.sqlite"


def default_settings(args: EvalRequest, config: BuildConfig) -> dict[str, Any]:
    """The run settings this model would have at the built-in defaults (the eval section's defaults, no
    overrides): a run's name lists what differs from them."""
    endpoint = model_endpoint(replace(args, temperature=None, top_p=None, top_k=None, max_tokens=None,
                                      sample={}), config, Config())
    return run_settings(endpoint, "", args.rules)


def run_eval(plan: EvalPlan, responses: list[list[Response]] | None = None) -> dict[str, Any]:
    """Sample (unless given the k `responses` of each item, made elsewhere), judge, score and write every
    output; returns metrics.json's content."""
    started = time.monotonic()
    plan.out.mkdir(parents=True, exist_ok=True)
    judge_truncated = plan.settings.judge_truncated
    with Engine(plan.endpoints, plan.cache, plan.config.llm.local, lang=plan.lang,
                log_dir=plan.out) as engine:
        if responses is None:
            queries = plan.items["query"].tolist()
            responses = sample_model(engine, MODEL, queries, plan.k, system_prompt=plan.system_prompt)
        opens = template_opens_reasoning(plan.settings.template_opens_reasoning, responses)
        shared_requests = MODEL in plan.endpoints and plan.endpoints[MODEL].supports_n and plan.k > 1
        samples = sample_table(plan.items, responses, template_opens=opens, server_counts=not shared_requests)
        keys = ensemble.judge_keys(plan.endpoints)
        panels = [judge_samples(engine, key, samples, plan.prompts, judge_truncated=judge_truncated)
                  for key in keys]
        usage = engine.usage_since()
        served = {endpoint: engine.endpoint_model(endpoint) for endpoint in plan.endpoints}
    verdict = ensemble.official(panels)
    judged = judged_frame(plan.name, samples, verdict)
    write_table(judged, plan.out / "judged.csv")
    tables = [judged_frame(plan.name, samples, panel) for panel in panels] if len(panels) > 1 else []
    for position, table in enumerate(tables):
        write_table(table, plan.out / ensemble.own_verdicts_file(position))
    for position, panel in enumerate(panels):
        samples = with_verdicts(samples, panel, suffix=ensemble.column_suffix(position))
    if len(panels) >= ensemble.MAJORITY_FROM:
        samples = with_verdicts(samples, verdict, suffix=ensemble.MAJORITY)
    write_table(samples.drop(columns=["risk_summary"]).assign(model=plan.name), plan.out / "samples.jsonl")
    metrics = compute_metrics(judged, k=plan.k, alpha=plan.settings.alpha, dataset=plan.items,
                              resamples=plan.settings.resamples, seed=plan.config.seed)[plan.name]
    if tables:
        metrics["agreement"] = ensemble.agreement(tables, [v.by_rule for v in panels[0].thinking])
    metrics["run"] = {**provenance(plan, served), "template_opens_reasoning": opens, **sample_stats(samples),
                      "ties": ensemble.ties(verdict) if len(panels) >= ensemble.MAJORITY_FROM else None,
                      "usage": usage, "seconds": round(time.monotonic() - started, 1)}
    write_json(metrics, plan.out / "metrics.json")
    write_text(report(metrics, spot_check.on_file(plan.out)), plan.out / "report.md")
    write_samples_page(samples, metrics, plan.out)
    return metrics


def provenance(plan: EvalPlan, served: dict[str, str]) -> dict[str, Any]:
    """Where the figures come from: model, judges, benchmark, sampling and prompts (never an API key)."""
    model = plan.endpoints.get(MODEL)
    judges = ensemble.judge_keys(plan.endpoints)
    released = ids_fingerprint(plan.benchmark["id"]) == BSA_RELEASED_IDS_SHA256
    return {"model": plan.model, "served_model": served.get(MODEL, plan.model),
            "base_url": model.base_url if model else None, "settings": plan.run_settings,
            "generated_elsewhere": plan.generated,
            "judge": served[JUDGE], "second_judge": served.get(ensemble.judge_key(1)),
            "judges": [served[key] for key in judges], "verdict": ensemble.verdict_rule(len(judges)),
            "judge_is_toy": bool(plan.toy_judges), "toy_judges": [served[key] for key in plan.toy_judges],
            "judge_truncated": plan.settings.judge_truncated,
            "rules": plan.run_settings["rules"], "lang": plan.lang, "dataset": str(plan.dataset_path),
            "dataset_sha256": file_sha256(plan.dataset_path),
            "benchmark": BSA_RELEASED if released else str(plan.dataset_path),
            "benchmark_items": len(plan.benchmark), "subset": len(plan.items) < len(plan.benchmark),
            **{name: plan.run_settings[name] for name in ("temperature", "top_p", TOP_K, "max_tokens")},
            "prompts": dict(plan.prompts.used),
            "judge_prompts": override_hashes(plan.prompts) if isinstance(plan.prompts, JudgePrompts) else {}}


# -- the report ----------------------------------------------------------------------------------------------

def report(metrics: dict[str, Any], checked: dict[str, Any] | None = None) -> str:
    """A short Markdown summary of metrics.json; line 1 is TOY_WARNING when a judge was the toy one. `checked`:
    the run's person check of the judges (spot_check.on_file), shown when there is one."""
    run = metrics["run"]
    subset = f" (a {metrics['items']}-item subset, stratified by scenario)" if run["subset"] else ""
    lines = [TOY_WARNING, ""] if run.get("judge_is_toy") else []
    lines += [f"# {metrics['model']} on {run['benchmark']}{subset}", "",
              f"{metrics['items']} items x k={metrics['k']} samples; {_judges_note(run)}"
              f"{'; with the safety-rules system prompt' if run['rules'] else ''}; " + _sampling_note(run), ""]
    ci = metrics.get("ci95", {})
    headline = [{"metric": name, "value": metrics[name],
                 "95% CI": "-" if not ci.get(name) else f"{ci[name][0]:.2f} - {ci[name][1]:.2f}"}
                for name in ["Safe@1", "Safe@k", "Think@1", "Think@k", "F-score"]]
    lines += [markdown_table(["metric", "value", "95% CI"], headline), ""]
    per_scenario = [{"scenario": f"{scenario} ({CODES[scenario]})", **figures}
                    for scenario, figures in metrics["scenarios"].items()]
    lines += ["## By scenario", "", markdown_table(["scenario", "items", "Safe@1", "Safe@k",
                                                    "Think@1", "Think@k"], per_scenario), ""]
    lines += ["## Samples by scenario", "",
              "Truncated: stopped before the final answer; reasoning tokens and characters: means over the "
              "generated samples.", "", markdown_table(SAMPLE_COLUMNS, _sample_rows(metrics)), ""]
    if metrics.get("categories"):
        rows = [{"category": name, **figures} for name, figures in metrics["categories"].items()]
        lines += ["## By category", "", "An item with two categories (Cognitive Shortcut) counts in both.",
                  "",
                  markdown_table(["category", "items", "Safe@1", "Think@1"], rows), ""]
    lines += ["## Samples and judges", "", *_sample_notes(metrics), ""]
    lines += spot_check.report_lines(checked)
    return "\n".join(lines)


def _judges_note(run: dict[str, Any]) -> str:
    judges = run.get("judges") or [run["judge"]]
    return f"judge: {judges[0]}" if len(judges) == 1 else f"judges: {', '.join(judges)}"


def _sampling_note(run: dict[str, Any]) -> str:
    if run.get("generated_elsewhere"):
        return f"samples generated elsewhere ({run['generated_elsewhere']['samples']}), settings unknown."
    sample = "".join(f", {key} {value}" for key, value in (run.get("settings") or {}).get("sample", {}).items())
    top_k = f", top_k {run[TOP_K]}" if run.get(TOP_K) is not None else ""
    return f"temperature {run['temperature']}, top_p {run['top_p']}{top_k}{sample}, max_tokens {run['max_tokens']}."


SAMPLE_COLUMNS = ["scenario", "samples", "truncated", "unscored answers", "with reasoning",
                  "reasoning tokens", "reasoning chars", "token counts"]


def _sample_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    unscored = metrics["unscored"]["safety_by_scenario"]
    rows = []
    for scenario, stats in metrics["run"]["by_scenario"].items():
        sources = {name: n for name, n in stats["reasoning_tokens_source"].items() if name != "none"}
        rows.append({"scenario": CODES[scenario], "samples": stats["samples"],
                     "truncated": stats["truncated"], "unscored answers": unscored.get(scenario, 0),
                     "with reasoning": stats["with_reasoning"],
                     "reasoning tokens": stats["reasoning_tokens_mean"],
                     "reasoning chars": stats["reasoning_chars_mean"],
                     "token counts": ", ".join(f"{name} {n}" for name, n in sorted(sources.items())) or "-"})
    return rows


def _sample_notes(metrics: dict[str, Any]) -> list[str]:
    run, unscored = metrics["run"], metrics["unscored"]
    sources = ", ".join(f"{source}: {count}" for source, count in sorted(run["reasoning_source"].items()))
    notes = [f"- Reasoning: {run['without_reasoning']} of {run['samples']} samples had none (given the "
             f"scenario's failure label by rule, the judge was not asked); sources: {sources or '-'}."]
    if run["reasoning_elicited"]:
        asked, gave = run["reasoning_elicited"], run["reasoning_source"].get("elicited", 0)
        notes.append(f"- Reasoning was elicited: the model is not a reasoning model, so it was asked to "
                     f"think in <think> tags first ({asked} samples); {gave} did, and the figures measure "
                     f"that prompted reasoning.")
    if run["failed"]:
        notes.append(f"- {run['failed']} samples failed after retries (unscored by both judges).")
    if run["cut_by_max_tokens"]:
        notes.append(f"- {run['cut_by_max_tokens']} samples were cut by max_tokens ({run['max_tokens']}).")
    if run["truncated"]:
        rules = ", ".join(f"{rule} {n}" for rule, n in sorted(run["truncation"].items()))
        handling = ("their answers were judged anyway (eval.judge_truncated: true), so these cut-off answers "
                    "count in Safe@1 and Safe@k" if run["judge_truncated"] else
                    "their answers are unscored (not judged), their reasoning is judged")
        notes.append(f"- Truncated: {run['truncated']} samples stopped before their final answer ({rules}); "
                     f"{handling}.")
    notes.append(f"- Unscored (a judge reply that never parsed, or an answer never given; left out of the "
                 f"figures, never counted as a failure or a success): safety {unscored['safety']}, reasoning "
                 f"{unscored['thinking']}.")
    notes += ensemble.agreement_notes(metrics.get("agreement", {}), run.get("judges") or [run["judge"]],
                                      run.get("verdict") or "", run.get("ties"))
    if run.get("judge_prompts"):
        files = ", ".join(f"{key} {found['file']} (sha256 {found['sha256'][:12]})"
                          for key, found in run["judge_prompts"].items())
        notes.append(f"- Judge prompts from other files: {files}.")
    usage = run["usage"]
    notes.append(f"- Tokens: {usage['prompt_tokens']} prompt, {usage['completion_tokens']} completion; "
                 f"{usage['sent']} requests sent, {usage['cached']} from the cache; {run['seconds']} s.")
    return notes
