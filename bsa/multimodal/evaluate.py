"""`bsa eval` on an image + text benchmark (bsa.multimodal.benchmark): k samples an item from a vision model
endpoint, the image sent as a `data:` URL content part; the USB judges (bsa.multimodal.judges) on every
sample, the reasoning judge on risky pairs; USB's figures (bsa.multimodal.metrics). It reuses the text eval's
endpoints, sampling, truncation and reasoning rules (bsa.eval.run) and writes the same files into
`results/<model>/`: samples.jsonl, judged.csv (one row a sample: JUDGED_COLUMNS), metrics.json (`kind:
multimodal`), report.md (the 12-cell table), llm-cache.sqlite (images keyed by their sha256).

Images (`eval.images`, `--images`, IMAGES=): `auto` attaches them for a model endpoint marked `vision: true`
in the config and otherwise runs the text-only fallback: the model reads each image's description, or a
typography card's printed text (MODEL_NOTES), the run is named `<model>__text-only`, and every output says
on its first line or in a field that the model never saw an image (MODEL_BLIND); `attach` makes a model
without vision an error; `describe` runs text only even on a vision model (a baseline: what seeing adds). A
judge endpoint without vision reads the image in words too, and the report says so on top.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from bsa.eval.judges import UNSCORED, Verdict, has_reasoning, sample_model
from bsa.eval.run import (
    JUDGE,
    MODEL,
    TOY_WARNING,
    TRUNCATED,
    EvalPlan,
    EvalRequest,
    default_dataset,
    endpoints_for,
    is_toy,
    judges_of,
    provenance,
    run_place,
    sample_fields,
    sample_stats,
    settings_of,
    stratified_limit,
    template_opens_reasoning,
)
from bsa.multimodal import fields
from bsa.multimodal.benchmark import IMAGE_PATH, MIME, is_multimodal, load_multimodal
from bsa.multimodal.judges import (
    VULNERABILITY_CODES,
    MultimodalJudge,
    check_describable,
    is_benign,
    model_message,
)
from bsa.multimodal.metrics import (
    HEADLINE,
    JUDGED_COLUMNS,
    NOTICED_ITEMS,
    OVER_REFUSAL,
    REASONING_HEADLINE,
    REFUSAL_RATE,
    RISK_NOTICED,
    SR_CELLS,
    SR_ITEMS,
    VULNERABILITY,
    multimodal_metrics,
)
from bsa.multimodal.viewer import write_mm_samples_page
from bsa.pipeline.config import EMBEDDED, BuildConfig
from bsa.pipeline.errors import BsaError, ConfigError
from bsa.pipeline.io import write_json, write_table, write_text
from bsa.pipeline.llm import Engine
from bsa.pipeline.prompts import PromptLoader
from bsa.text.markdown import markdown_table

GROUPS = (*fields.COMBINATIONS, fields.BENIGN)
AUTO, ATTACH, DESCRIBE = "auto", "attach", "describe"  # eval.images
TEXT_ONLY = "text-only"  # the run settings' `images` (and its name's last part) in the fallback
MODEL_SAW_IMAGE = "model_saw_image"  # judged.csv's and samples.jsonl's column: true, or false in the fallback
MODEL_BLIND = ("NOTE: text-only fallback: the model never saw an image; it read each image's description (or, "
               "for a typography card, the text printed on it) instead, so these figures are not a vision "
               "model's.")
JUDGE_BLIND = ("NOTE: the judge saw no image: it read each image's description (or, for a typography card, "
               "the text printed on it).")
INTERNAL = [IMAGE_PATH, MIME, "_line"]  # loader columns left out of samples.jsonl


def dataset_of(args: EvalRequest, config: BuildConfig) -> Path:
    return Path(args.dataset) if args.dataset else default_dataset(config)


def is_multimodal_run(args: EvalRequest, config: BuildConfig) -> bool:
    """Whether `bsa eval` was given a multimodal benchmark (False when there is none to read: the text eval
    then says what is wrong, in its order)."""
    try:
        return is_multimodal(dataset_of(args, config))
    except BsaError:
        return False


def plan_multimodal(args: EvalRequest, config: BuildConfig) -> EvalPlan:
    """Resolve a run before any model is called: ConfigError when the model endpoint cannot see images or
    the options do not apply; DataError for a bad benchmark or an item a blind judge could not read."""
    if args.k < 1:
        raise ConfigError(f"K must be at least 1 (got {args.k})")
    settings = settings_of(config)
    judges = judges_of(args, config, settings)
    if len(judges) > 1:
        raise ConfigError(f"{len(judges)} judges named ({', '.join(name for name, _ in judges)}): a multimodal "
                          f"benchmark is judged by one judge; name one (JUDGE_MODEL=..., or eval.judge_endpoint)")
    if settings.judge_prompts:
        raise ConfigError(f"eval.judge_prompts in {config.config_path} sets the text eval's judge prompts: a "
                          f"multimodal benchmark uses its own judges' prompts; unset it for this run")
    endpoints = endpoints_for(args, config, settings)
    path = dataset_of(args, config)
    sees = model_sees_images(args, config, settings.images, endpoints[MODEL].vision, path)
    benchmark = load_multimodal(path)
    items = stratified_limit(benchmark, args.limit, config.seed, by=fields.COMBINATION, groups=GROUPS)
    if not sees:
        check_describable(items.to_dict("records"), path, reader="the model")
    if not endpoints[JUDGE].vision:
        check_describable(items.to_dict("records"), path)
    lang = args.lang or str(items["lang"].mode().iloc[0])
    prompts = PromptLoader(lang)
    name, out, run, cache = run_place(args, config, settings, endpoints, images=None if sees else TEXT_ONLY)
    return EvalPlan(model=args.model, name=name, out=out, cache=cache, run_settings=run, k=args.k,
                    dataset_path=path, benchmark=benchmark, items=items, lang=lang, prompts=prompts,
                    system_prompt=prompts.load("safety_rules").system if args.rules else None,
                    endpoints=endpoints, settings=settings, config=config,
                    toy_judges=[JUDGE] if is_toy(endpoints[JUDGE]) else [])


def vision_hint(args: EvalRequest, config: BuildConfig) -> str:
    """How to have the model see the images."""
    if args.model in config.endpoints:
        return f"set `vision: true` on endpoints.{args.model} in {config.config_path}"
    served = "the embedded model has no vision: serve a vision model and " if args.model == EMBEDDED else ""
    return (f"{served}define it under `endpoints:` in {config.config_path} (base_url, model, vision: true) and "
            f"pass its name as MODEL")


def model_sees_images(args: EvalRequest, config: BuildConfig, default: str, vision: bool, path: Path) -> bool:
    """Whether the model gets the images (`args.images`, else the eval section's `images`): `attach` on a
    model without vision is a ConfigError; `describe`, or `auto` without vision, is the text-only fallback."""
    mode = args.images or default
    if mode not in (AUTO, ATTACH, DESCRIBE):
        raise ConfigError(f"images '{mode}': expected one of {AUTO}, {ATTACH}, {DESCRIBE}")
    if mode == ATTACH and not vision:
        raise ConfigError(f"{path} holds image + text items, IMAGES=attach asks to send them, and model "
                          f"'{args.model}' is not marked vision-capable: {vision_hint(args, config)} (or drop "
                          f"IMAGES=attach for the text-only fallback)")
    return vision and mode != DESCRIBE


def sees_images(plan: EvalPlan) -> bool:
    """Whether the planned run sends the images to the model (not the text-only fallback)."""
    return plan.run_settings.get("images") != TEXT_ONLY


def sample_table(items: pd.DataFrame, responses: list, *, template_opens: bool,
                 server_counts: bool) -> pd.DataFrame:
    """One row per sample: the item's fields, then what the model said (bsa.eval.run.sample_fields)."""
    return pd.DataFrame([{**item, "sample": index, **sample_fields(response, template_opens, server_counts)}
                         for item, samples in zip(items.to_dict("records"), responses, strict=True)
                         for index, response in enumerate(samples)])


def judge_samples(judge: MultimodalJudge, samples: pd.DataFrame, *, judge_truncated: bool
                  ) -> dict[str, list[Verdict | None]]:
    """The answer verdict (vulnerability on risky pairs, over-refusal on benign ones) and the reasoning
    verdict (risky pairs; None on benign ones) of every sample; a failed sample is unscored by both, a
    truncated one's answer unscored (error TRUNCATED) unless `judge_truncated`."""
    done = samples[samples["ok"]]
    answered = done if judge_truncated else done[~done["truncated"]]
    risky = done[done[fields.COMBINATION] != fields.BENIGN]
    answers = dict(zip(answered.index, judge.answers(answered.to_dict("records")), strict=True))
    reasoning = dict(zip(risky.index, judge.reasoning(risky.to_dict("records")), strict=True))
    for index, row in samples.iterrows():
        if not row["ok"]:
            answers[index] = reasoning[index] = Verdict(UNSCORED, error=f"sample failed: {row['error']}")
        elif index not in answers:
            answers[index] = Verdict(UNSCORED, f"no final answer ({row['truncation']}): not judged",
                                     error=TRUNCATED)
    benign = samples[fields.COMBINATION] == fields.BENIGN
    return {"answer": [answers[i] for i in samples.index],
            "reasoning": [None if benign[i] else reasoning[i] for i in samples.index]}


def with_verdicts(samples: pd.DataFrame, verdicts: dict[str, list[Verdict | None]]) -> pd.DataFrame:
    """The samples with each judge's label, reason and error (empty where a judge does not apply)."""
    benign = samples[fields.COMBINATION] == fields.BENIGN
    answers = verdicts["answer"]
    columns: dict[str, list[Any]] = {}
    for column, applies in ((VULNERABILITY, ~benign), (OVER_REFUSAL, benign)):
        for suffix, value in (("", "label"), ("_reason", "reason"), ("_error", "error")):
            columns[column + suffix] = [getattr(v, value) if ok else "" for v, ok in zip(answers, applies, strict=True)]
    columns["vulnerability_code"] = [VULNERABILITY_CODES.get(label) for label in columns[VULNERABILITY]]
    thinking = verdicts["reasoning"]
    for suffix, value in (("", "label"), ("_reason", "reason"), ("_error", "error"), ("_by_rule", "by_rule")):
        columns[RISK_NOTICED + suffix] = [getattr(v, value) if v is not None else "" for v in thinking]
    return samples.assign(**columns)


def run_multimodal(plan: EvalPlan) -> dict[str, Any]:
    """Sample, judge, score and write every output; returns metrics.json's content."""
    started = time.monotonic()
    plan.out.mkdir(parents=True, exist_ok=True)
    vision, sees = plan.endpoints[JUDGE].vision, sees_images(plan)
    with Engine(plan.endpoints, plan.cache, plan.config.llm.local, lang=plan.lang) as engine:
        contents = [model_message(item, plan.prompts, sees) for item in plan.items.to_dict("records")]
        responses = sample_model(engine, MODEL, contents, plan.k, system_prompt=plan.system_prompt)
        opens = template_opens_reasoning(plan.settings.template_opens_reasoning, responses)
        shared = plan.endpoints[MODEL].supports_n and plan.k > 1  # one usage for k samples
        samples = sample_table(plan.items, responses, template_opens=opens, server_counts=not shared)
        judge = MultimodalJudge(engine, JUDGE, plan.prompts, vision=vision)
        verdicts = judge_samples(judge, samples, judge_truncated=plan.settings.judge_truncated)
        usage = engine.usage_since()
        served = {endpoint: engine.endpoint_model(endpoint) for endpoint in plan.endpoints}
    samples = with_verdicts(samples, verdicts).assign(model_name=plan.name, **{MODEL_SAW_IMAGE: sees})
    judged = samples[JUDGED_COLUMNS].fillna("")
    write_table(judged.assign(**{MODEL_SAW_IMAGE: sees})[[JUDGED_COLUMNS[0], MODEL_SAW_IMAGE, *JUDGED_COLUMNS[1:]]],
                plan.out / "judged.csv")
    write_table(samples.drop(columns=INTERNAL, errors="ignore"), plan.out / "samples.jsonl")
    risky = samples[~samples.apply(is_benign, axis=1)]
    reasons = bool(risky["ok"].any() and risky["reasoning"].map(has_reasoning).any())
    metrics = multimodal_metrics(judged, plan.k, reasons=reasons, resamples=plan.settings.resamples,
                                 seed=plan.config.seed)
    stats = sample_stats(samples, by=fields.COMBINATION, groups=GROUPS)
    stats["by_combination"] = stats.pop("by_scenario")
    metrics["run"] = {**provenance(plan, served), "model_sees_images": sees, "judge_sees_images": vision,
                      "template_opens_reasoning": opens, **stats, "usage": usage,
                      "seconds": round(time.monotonic() - started, 1)}
    if not sees:  # the first field, so that it is the first thing a reader of the file sees
        metrics = {"notice": MODEL_BLIND, **metrics}
    write_json(metrics, plan.out / "metrics.json")
    write_text(report(metrics), plan.out / "report.md")
    write_mm_samples_page(samples, metrics, plan.out)
    return metrics


# -- the report ----------------------------------------------------------------------------------------------

def _ci(interval: list[float] | None) -> str:
    return "-" if not interval else f"{interval[0]:.2f} - {interval[1]:.2f}"


def cell_rows(cells: dict[str, dict[str, float | None]], by_combination: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """The USB table: a row per primary area, a column per combination and the row's mean; then, given the
    per-combination figures, a row over all areas."""
    rows = []
    for area, values in sorted(cells.items()):
        known = [value for value in values.values() if value is not None]
        rows.append({"primary area": area, **values,
                     "mean": round(sum(known) / len(known), 2) if known else None})
    if by_combination:
        rows.append({"primary area": "all areas (item mean)",
                     **{name: figures["Safety Rate"] for name, figures in by_combination.items()}})
    return rows


def _group_rows(groups: dict[str, dict[str, Any]], key: str, reasons: bool) -> list[dict[str, Any]]:
    return [{key: name, "risky items": figures["risky_items"], SR_CELLS: figures[SR_CELLS],
             SR_ITEMS: figures[SR_ITEMS], "benign items": figures["benign_items"],
             REFUSAL_RATE: figures[REFUSAL_RATE], **({NOTICED_ITEMS: figures[NOTICED_ITEMS]} if reasons else {})}
            for name, figures in groups.items()]


def report(metrics: dict[str, Any]) -> str:
    """A Markdown summary of a multimodal metrics.json: the notices on top (notices: the text-only fallback's
    first), the headline figures, the area x combination table, then languages, secondary categories, notes."""
    run, reasons = metrics["run"], metrics["reasons"]
    lines = [line for line in notices(run) if line]
    subset = f" (a {metrics['items']}-item subset, stratified by combination)" if run["subset"] else ""
    lines += [""] if lines else []
    lines += [f"# {metrics['model']} on {run['benchmark']}{subset}", "",
              f"{metrics['risky_items']} risky pairs and {metrics['benign_items']} benign ones x k={metrics['k']} "
              f"samples; the model {'saw the images' if run['model_sees_images'] else 'read each image in words'}; "
              f"judge: {run['judge']} ({'sees the images' if run['judge_sees_images'] else 'reads descriptions'})"
              f"{'; with the safety-rules system prompt' if run['rules'] else ''}; temperature "
              f"{run['temperature']}, top_p {run['top_p']}, max_tokens {run['max_tokens']}.", ""]
    names = HEADLINE + (REASONING_HEADLINE if reasons else [])
    ci = metrics["ci95"]
    lines += [markdown_table(["metric", "value", "95% CI"], [{"metric": name, "value": metrics[name],
                                                               "95% CI": _ci(ci.get(name))} for name in names]),
              "", f"{SR_CELLS}: the unweighted mean of the {metrics['cells_scored']} primary area x combination "
                  f"cells that hold scored items (USB's Total over its 12 cells); {SR_ITEMS}: the mean over risky "
                  f"pairs. Safe = judged safe with refusal or safe with warning.", ""]
    columns = ["primary area", *fields.COMBINATIONS, "mean"]
    lines += ["## Safety Rate by primary area and combination", "",
              markdown_table(columns, cell_rows(metrics["cells"], metrics["combinations"])), ""]
    lines += ["## Vulnerability labels (share of scored samples, item mean)", "",
              markdown_table(list(metrics["labels"]), [metrics["labels"]]), ""]
    if reasons:
        lines += ["## Reasoning: did it notice the risk where it sits?", "",
                  markdown_table(columns, cell_rows(metrics["noticed_cells"])), ""]
    group_columns = ["risky items", SR_CELLS, SR_ITEMS, "benign items", REFUSAL_RATE,
                     *([NOTICED_ITEMS] if reasons else [])]
    for title, key, label in (("By language", "by_language", "language"),
                              ("By secondary category", "by_secondary", "secondary category")):
        if metrics[key]:
            lines += [f"## {title}", "", markdown_table([label, *group_columns],
                                                        _group_rows(metrics[key], label, reasons)), ""]
    lines += ["## Samples and judges", "", *_notes(metrics), ""]
    return "\n".join(lines)


def _notes(metrics: dict[str, Any]) -> list[str]:
    run, unscored = metrics["run"], metrics["unscored"]
    notes = [f"- Reasoning: {run['without_reasoning']} of {run['samples']} samples had none"
             + ("; a risky pair's sample without reasoning is 'Missed' by rule (the judge was not asked)."
                if metrics["reasons"] else "; the model gave no reasoning, so there are no reasoning figures.")]
    if run["reasoning_elicited"]:
        notes.append(f"- Reasoning was elicited: the model is not a reasoning model, so it was asked to think in "
                     f"<think> tags first ({run['reasoning_elicited']} samples); "
                     f"{run['reasoning_source'].get('elicited', 0)} did.")
    if run["failed"]:
        notes.append(f"- {run['failed']} samples failed after retries (unscored).")
    if run["truncated"]:
        handling = ("judged anyway (eval.judge_truncated: true)" if run["judge_truncated"] else
                    "their answers are unscored, their reasoning judged")
        notes.append(f"- Truncated: {run['truncated']} samples stopped before their final answer; {handling}.")
    notes.append(f"- Unscored samples (left out of the figures, never counted as safe or unsafe): vulnerability "
                 f"{unscored[VULNERABILITY]}, over-refusal {unscored[OVER_REFUSAL]}, reasoning "
                 f"{unscored[RISK_NOTICED]}; items without any scored sample: {unscored['items_without_score']}.")
    usage = run["usage"]
    notes.append(f"- Tokens: {usage['prompt_tokens']} prompt, {usage['completion_tokens']} completion; "
                 f"{usage['sent']} requests sent, {usage['cached']} from the cache; {run['seconds']} s.")
    return notes


def notices(run: dict[str, Any]) -> list[str]:
    """What a reader must know first, in order: the model saw no image, the judge is a toy, the judge saw no
    image ("" where it does not apply)."""
    return [MODEL_BLIND if not run.get("model_sees_images", True) else "",
            TOY_WARNING if run.get("judge_is_toy") else "", "" if run["judge_sees_images"] else JUDGE_BLIND]


def print_runs(results: list[tuple[EvalPlan, dict[str, Any]]], config: BuildConfig) -> None:
    """`bsa eval`'s summary of multimodal runs: their notices first, the headline, where the outputs are."""
    for line in dict.fromkeys(line for _, metrics in results for line in notices(metrics["run"]) if line):
        print(line)
    for plan, metrics in results:
        if not metrics["run"]["model_sees_images"] and plan.endpoints[MODEL].vision is False:
            print(f"model '{plan.model}' is not marked vision-capable; to send it the images, "
                  f"{vision_hint(EvalRequest(model=plan.model), config)}")
    print(markdown_table(["model", "items", *HEADLINE], [metrics for _, metrics in results]))
    for plan, _ in results:
        print(f"wrote {plan.out}/: samples.jsonl, judged.csv, metrics.json, report.md, samples.html")
