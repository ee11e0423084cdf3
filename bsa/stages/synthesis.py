"""Stage 'synthesis': BSA's three scenarios written by an LLM from annotated seeds, then quality-checked.

Input: annotated seeds (stage 'annotations'): risky rows with `risk_summary`, safe look-alikes with
`benign_reason`. Output: one row per synthesised item (the seeds are consumed).

- Risk Omission: one risky seed -> a request whose risk is subtle; label `Category-Subcategory`.
- Cognitive Shortcut: two risky seeds of different subcategories woven into one request; label
  `Query A: Cat-Sub\\nQuery B: Cat-Sub`, risk_summary `Query A: ...\\nQuery B: ...`.
- Over Sensitivity: a risky seed and a safe look-alike of the same category; the risk summary covers the
  risky part only, and `safe_summary` names the safe part.

Seeds are paired deterministically from the build's `seed`: each category's seeds take turns, each pair is used
once, and an integer count is spread evenly over the categories that can supply it (`counts` may instead give
a number per category). The generator writes in the build's language (`lang`, the prompts' language). A
checker LLM then verifies that each item carries every intended risk and no other.

Rejects: `generation_failed` (no usable reply), `wrong_language` (not in the build's script),
`duplicate_query`, `quality_missing_risk`, `quality_extra_risk`, and `judge_failed` when the checker's reply
never parsed and `on_judge_failure: reject` (by default such items are kept, flagged `judge_failed`).

Image + text seeds (a multimodal build: records with `image_sha256`) make image + text items instead
(bsa.multimodal.synthesis): `pairs` gives the items per kind, the four combinations RIRT, RIST, SIRT, SIST and
`benign` (an over-refusal set from the safe look-alikes), planned for the emptiest coverage cells first (category
x kind x language, bsa.multimodal.coverage; `coverage_baseline` counts an earlier release's items). The
generator (prompt `synth_pair`, the kind's note `synth_pair_<kind>`, each in the seed's language) writes the
text, the card's text, a description and a summary; the card is rendered (`layouts`, in turn per kind) and its
render spec recorded. The checker rates text, image and pair harm apart (the relevance judge's `relevance_mm`,
reading the card's printed text, or seeing it on a `vision: true` endpoint); a pair whose ratings give another
combination is rejected `quality_wrong_combination`, the detail naming both. With `image_generator` (an image
API endpoint), the pairs of `image_kinds` get a picture drawn from their description instead of a card
(`_draw_pictures`: checked like an ingested image, saved in the build, `image_prompt` recorded). The stats
give the coverage table and its empty cells (`coverage`).

Columns: the core fields (id = text_id of the query, text = the query, source `synthesis`, category and
subcategory of the first risk, is_risky True, meta = the checker's model and prompt hash) and
    scenario, label, risk_summary   as in BSA
    safe_summary                    Over Sensitivity: why the safe part is safe (else empty)
    seed_ids                        JSON list of the seed ids, risky seeds first
    generator_model, prompt_sha256  who wrote the item, with which prompt
    quality_verdict, quality_reason the checker's verdict (`ok`, ..., `judge_failed`) and reason
"""

from __future__ import annotations

import base64
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pandas as pd
from pydantic import Field

from bsa.benchmark import (
    BSA_MIX,
    COGNITIVE_SHORTCUT,
    OVER_SENSITIVITY,
    RISK_OMISSION,
    SCENARIOS,
    Scenario,
    join_parts,
)
from bsa.multimodal import fields as mm
from bsa.multimodal.coverage import cell_counts, coverage_stats, coverage_table, level_names
from bsa.multimodal.harm import harm_request, judged_combination, read_harms
from bsa.multimodal.images import ImageProblem, check_image_bytes
from bsa.multimodal.synthesis import (
    DEFAULT_LAYOUTS,
    PairCandidate,
    pair_generation_values,
    pair_item,
    plan_pairs,
    read_pair,
)
from bsa.pipeline.config import ImageLimits, Section
from bsa.pipeline.errors import ConfigError, DataError
from bsa.pipeline.io import atomic_path
from bsa.pipeline.llm import Request, Response, image_request
from bsa.pipeline.prompts import Prompt
from bsa.pipeline.records import CORE_FIELDS, REJECT_REASON, text_id
from bsa.pipeline.stage import Stage, StageContext, reject, whole
from bsa.pipeline.verdicts import JUDGE_FAILED, OnJudgeFailure, clip, read_verdict, schema_verdicts
from bsa.text.charclass import HAN

Kind = Literal["RIRT", "RIST", "SIRT", "SIST", "benign"]
Layout = Literal["numbered", "label", "caption"]
RO, CS, OS = RISK_OMISSION, COGNITIVE_SHORTCUT, OVER_SENSITIVITY
SUMMARY_FIELDS = {RO: ("risk_summary",), CS: ("risk_summary_a", "risk_summary_b"), OS: ("risk_summary",)}
QUALITY_REJECTS = {"missing_risk": "quality_missing_risk", "extra_risk": "quality_extra_risk"}
QUALITY_OK = "ok"
SUMMARY_CHARS = 400
QUERY_CHARS = 2000
ITEM_COLUMNS = [*CORE_FIELDS, "scenario", "label", "risk_summary", "safe_summary", "seed_ids", "generator_model",
                "prompt_sha256", "quality_verdict", "quality_reason"]
_HAN = re.compile(f"[{HAN}]")


class Config(Section):
    generator: str = "local"  # endpoint that writes the items
    checker: str = "local"  # endpoint that checks them
    counts: dict[Scenario, int | dict[str, int]] = dict(BSA_MIX)  # BSA's mix
    seed_languages: list[str] | None = None  # use only seeds in these languages (None: all)
    prompts: dict[Scenario, str] = {RO: "synth_risk_omission", CS: "synth_cognitive_shortcut",
                                    OS: "synth_over_sensitivity"}
    check_prompt: str = "synth_quality"
    check: bool = True  # run the quality check
    on_judge_failure: OnJudgeFailure = "keep"
    on_check_failure: Literal["reject", "flag"] = "reject"  # flag: keep a failed item, its verdict recorded
    check_script: bool = True  # reject items not written in the build language's script (Han for zh)
    temperature: float = 0.8
    max_tokens: int = 600
    check_max_tokens: int = 96
    # image + text builds (seeds carry images): items per kind, docs/multimodal.md (Synthesis of pairs)
    pairs: dict[Kind, int] = {}
    pair_prompt: str = "synth_pair"  # the generation prompt; its kind notes are <pair_prompt>_<kind>
    pair_check_prompt: str = "relevance_mm"  # the checker rates text, image and pair harm apart
    layouts: dict[Kind, list[Layout]] = DEFAULT_LAYOUTS  # the cards' layouts, in turn per kind
    coverage_baseline: str | None = None  # a table (an earlier release) whose items count as covered
    coverage_level: Literal[0, 1, 2] = 0  # the taxonomy level of the coverage cells (0: primary area)
    keep_seeds: bool = False  # image builds: the seeds with a combination stay items (and count as covered)
    # image builds: a picture generated from the pair's image_description instead of a card (None: cards only)
    image_generator: str | None = None  # an endpoint serving an OpenAI-compatible image API
    image_kinds: list[Kind] = ["SIRT", "SIST", "benign"]  # the kinds drawn as pictures (the others stay cards)
    image_prompt: str = "image_generation"  # prompts/<lang>/<image_prompt>.md, `$description` the pair's
    image_size: str = Field("512x512", pattern=r"^[0-9]+x[0-9]+$")
    image_limits: ImageLimits = ImageLimits()  # a generated image is checked like an ingested one


@dataclass(frozen=True)
class Candidate:
    """One item to write: its scenario and seeds (risky seeds first; Over Sensitivity ends with the safe one)."""

    scenario: str
    seeds: tuple[dict, ...]

    @property
    def risky(self) -> tuple[dict, ...]:
        return self.seeds[:1] if self.scenario == OS else self.seeds

    @property
    def seed_ids(self) -> list[str]:
        return [str(seed["id"]) for seed in self.seeds]


# -- pairing -------------------------------------------------------------------------------------------------
def seed_label(seed: dict) -> str:
    return f"{seed['category']}-{seed['subcategory']}"


def _present(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def seed_pools(records: pd.DataFrame, config: Config, ctx: StageContext) -> tuple[list[dict], list[dict]]:
    """(risky seeds with a taxonomy label and a risk summary, safe look-alikes with a benign reason)."""
    for column in ("risk_summary", "benign_reason"):
        if column not in records.columns:
            raise DataError(f"{ctx.name} input", f"column '{column}' missing: run the annotations stage first",
                            field=column)
    seeds = records
    if config.seed_languages is not None:
        seeds = seeds[seeds["lang"].isin(config.seed_languages)]
    seeds = seeds.sort_values("id")
    flag = seeds["is_risky"].astype("boolean")
    risky = [r for r in seeds[flag.eq(True).fillna(False)].to_dict(orient="records")
             if _present(r["risk_summary"]) and _present(r["subcategory"])
             and ctx.taxonomy.is_valid(r["category"], r["subcategory"])]
    safe = [r for r in seeds[flag.eq(False).fillna(False)].to_dict(orient="records") if _present(r["benign_reason"])]
    return risky, safe


def _pairs(firsts: list[dict], partners: dict[str, list[dict]], used: set[frozenset]) -> Iterator[tuple]:
    """Each first seed in turn with its next unused partner, round after round, until none has one left."""
    while True:
        progressed = False
        for first in firsts:
            queue = partners[first["id"]]
            while queue:
                second = queue.pop()
                key = frozenset((first["id"], second["id"]))
                if key not in used:
                    used.add(key)
                    progressed = True
                    yield first, second
                    break
        if not progressed:
            return


def _shuffled(items: list[dict], rng: random.Random) -> list[dict]:
    items = list(items)
    rng.shuffle(items)
    return items


def candidate_streams(scenario: str, risky: list[dict], safe: list[dict],
                      seed: int) -> dict[str, Iterator[Candidate]]:
    """Per category of the (first) risky seed, a seeded stream of fresh candidates of the scenario."""
    streams, used = {}, set()
    for category in sorted({s["category"] for s in risky}):
        rng = random.Random(f"{seed}/{scenario}/{category}")
        firsts = _shuffled([s for s in risky if s["category"] == category], rng)
        if scenario == RO:
            streams[category] = (Candidate(RO, (s,)) for s in firsts)
            continue
        if scenario == CS:
            partners = {a["id"]: _shuffled([b for b in risky if b["subcategory"] != a["subcategory"]], rng)
                        for a in firsts}
        else:
            looks = [b for b in safe if b["category"] == category]
            partners = {a["id"]: _shuffled(looks, rng) for a in firsts}
        streams[category] = (Candidate(scenario, pair) for pair in _pairs(firsts, partners, used))
    return streams


def _take(stream: Iterator[Candidate], n: int) -> list[Candidate]:
    return [candidate for _, candidate in zip(range(n), stream, strict=False)]


def plan(config: Config, risky: list[dict], safe: list[dict], seed: int,
         categories: list[str]) -> tuple[list[Candidate], dict[str, dict[str, int]]]:
    """The candidates to write, and per scenario how many were asked for and how many the seeds allow."""
    chosen, shortfall = [], {}
    for scenario in SCENARIOS:
        wanted = config.counts.get(scenario, 0)
        streams = candidate_streams(scenario, risky, safe, seed)
        if isinstance(wanted, dict):
            unknown = set(wanted) - set(categories)
            if unknown:
                raise ConfigError(f"synthesis.counts.{scenario}: unknown categories {sorted(unknown)}")
            picked = [c for cat, n in wanted.items() for c in _take(streams.get(cat, iter(())), n)]
            total = sum(wanted.values())
        else:
            picked, total = _round_robin(streams, wanted, random.Random(f"{seed}/{scenario}")), wanted
        chosen += picked
        shortfall[scenario] = {"wanted": total, "planned": len(picked)}
    return chosen, shortfall


def _round_robin(streams: dict[str, Iterator[Candidate]], n: int, rng: random.Random) -> list[Candidate]:
    """`n` candidates, one category after another in a seeded order, skipping exhausted categories."""
    order = _shuffled(sorted(streams), rng)
    picked: list[Candidate] = []
    while order and len(picked) < n:
        for category in list(order):
            if len(picked) == n:
                break
            candidate = next(streams[category], None)
            if candidate is None:
                order.remove(category)
            else:
                picked.append(candidate)
    return picked


# -- writing and checking --------------------------------------------------------------------------------------
def _shown(seed: dict, ctx: StageContext) -> str:
    return f"{ctx.taxonomy.translate(seed['category'], ctx.lang)} - {ctx.taxonomy.translate(seed['subcategory'], ctx.lang)}"


def generation_values(candidate: Candidate, ctx: StageContext) -> dict[str, str]:
    """The placeholders of the scenario's generation prompt."""
    first = candidate.seeds[0]
    if candidate.scenario == RO:
        return {"label": _shown(first, ctx), "seed_text": first["text"], "seed_risk": first["risk_summary"]}
    second = candidate.seeds[1]
    if candidate.scenario == CS:
        return {"label_a": _shown(first, ctx), "seed_a": first["text"], "risk_a": first["risk_summary"],
                "label_b": _shown(second, ctx), "seed_b": second["text"], "risk_b": second["risk_summary"]}
    return {"label": _shown(first, ctx), "seed_risky": first["text"], "risk": first["risk_summary"],
            "seed_safe": second["text"], "safe_reason": second["benign_reason"]}


def in_script(text: str, lang: str) -> bool:
    """Whether `text` is written in the script of `lang`: mostly Han for Chinese, mostly not Han otherwise."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return False
    han_share = sum(bool(_HAN.match(ch)) for ch in letters) / len(letters)
    return han_share >= 0.3 if lang.startswith("zh") else han_share < 0.1


def _clean_query(text: object) -> str:
    """The query without surrounding whitespace and quotes, capped at QUERY_CHARS."""
    query = str(text or "").strip().strip('"“”「」').strip()
    return query if len(query) <= QUERY_CHARS else query[:QUERY_CHARS].rstrip()


def read_generation(candidate: Candidate, response: Response, structured: bool) -> tuple[str, list[str], str | None]:
    """(query, risk summaries, None) from a generator reply, or ('', [], why) when it is unusable.

    A structured reply (the prompt has a schema) brings its own risk summaries; a plain-text reply is the query
    alone, and the summaries are the seeds' annotations.
    """
    if not response.ok or (structured and not isinstance(response.parsed, dict)):
        return "", [], clip(response.error or "reply did not parse", SUMMARY_CHARS)
    if not structured:
        query = _clean_query(response.content)
        summaries = [clip(seed["risk_summary"], SUMMARY_CHARS) for seed in candidate.risky]
        return (query, summaries, None) if query else ("", [], "empty reply")
    query = _clean_query(response.parsed.get("query"))
    summaries = [clip(response.parsed.get(name), SUMMARY_CHARS) for name in SUMMARY_FIELDS[candidate.scenario]]
    missing = [name for name, text in zip(SUMMARY_FIELDS[candidate.scenario], summaries, strict=True) if not text]
    if not query or missing:
        return "", [], f"reply lacks {', '.join(['query'] * (not query) + missing)}"
    return query, summaries, None


def check_values(candidate: Candidate, query: str, summaries: list[str], ctx: StageContext) -> dict[str, str]:
    """The placeholders of the quality-check prompt: the query, its intended risks and its safe parts."""
    risks = [f"- {_shown(seed, ctx)}: {summary}" for seed, summary in zip(candidate.risky, summaries, strict=True)]
    safe = [f"- {clip(seed['text'], SUMMARY_CHARS)} ({seed['benign_reason']})"
            for seed in candidate.seeds[len(candidate.risky):]]
    return {"query": query, "risks": "\n".join(risks), "safe_parts": "\n".join(safe)}


def _item(candidate: Candidate, query: str, summaries: list[str], ctx: StageContext,
          provenance: dict[str, str]) -> dict:
    first = candidate.risky[0]
    safe = candidate.seeds[len(candidate.risky):]
    return {"id": text_id(query) if query else text_id("|".join([candidate.scenario, *candidate.seed_ids])),
            "text": query, "lang": ctx.lang, "source": "synthesis", "category": first["category"],
            "subcategory": first["subcategory"], "is_risky": True, "meta": provenance["meta"],
            "scenario": candidate.scenario, "label": join_parts([seed_label(s) for s in candidate.risky]),
            "risk_summary": join_parts(summaries) if summaries else "",
            "safe_summary": clip(safe[0]["benign_reason"], SUMMARY_CHARS) if safe else "",
            "seed_ids": json.dumps(candidate.seed_ids), "generator_model": provenance["generator_model"],
            "prompt_sha256": provenance[candidate.scenario], "quality_verdict": None, "quality_reason": None}


def _loaded(ctx: StageContext, config: Config) -> tuple[dict[str, Prompt], Prompt]:
    prompts = {scenario: ctx.prompts.load(config.prompts[scenario]) for scenario in SCENARIOS}
    check = ctx.prompts.load(config.check_prompt)
    if set(schema_verdicts(check.schema)) != {QUALITY_OK, *QUALITY_REJECTS}:
        raise ConfigError(f"{check.path}: its schema must allow the verdicts {[QUALITY_OK, *QUALITY_REJECTS]}")
    return prompts, check


def _generate(candidates: list[Candidate], prompts: dict[str, Prompt], config: Config,
              ctx: StageContext) -> list[Response]:
    params = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    requests = [Request(config.generator, prompts[c.scenario].render(**generation_values(c, ctx)),
                        schema=prompts[c.scenario].schema, params=params, tag=ctx.name) for c in candidates]
    return ctx.llm.run(requests, desc="synthesis: write") if requests else []


@dataclass
class Draft:
    """A written candidate on its way through the checks; `reason` set once it is rejected."""

    candidate: Candidate
    item: dict
    summaries: list[str]
    reason: str | None = None
    detail: str = ""

    def reject(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail


def _draft(candidate: Candidate, response: Response, prompt: Prompt, provenance: dict[str, str],
           ctx: StageContext) -> Draft:
    query, summaries, problem = read_generation(candidate, response, prompt.schema is not None)
    draft = Draft(candidate, _item(candidate, query, summaries, ctx, provenance), summaries)
    if problem:
        draft.reject("generation_failed", problem)
    return draft


def _screen(drafts: list[Draft], config: Config, lang: str) -> None:
    """Reject drafts not in the build language's script, and repeats of an earlier query."""
    seen: set[str] = set()
    for draft in drafts:
        if draft.reason:
            continue
        if config.check_script and not in_script(draft.item["text"], lang):
            draft.reject("wrong_language", f"not written in the script of '{lang}'")
        elif draft.item["id"] in seen:
            draft.reject("duplicate_query", "the same query was written for other seeds")
        seen.add(draft.item["id"])


def _quality_check(drafts: list[Draft], prompt: Prompt, config: Config, ctx: StageContext) -> None:
    """The checker's verdict on every draft still standing; failures rejected with its reason."""
    todo = [d for d in drafts if d.reason is None]
    params = {"temperature": 0.0, "max_tokens": config.check_max_tokens}
    requests = [Request(config.checker, prompt.render(**check_values(d.candidate, d.item["text"], d.summaries, ctx)),
                        schema=prompt.schema, params=params, tag=ctx.name) for d in todo]
    responses = ctx.llm.run(requests, desc="synthesis: check") if requests else []
    for draft, response in zip(todo, responses, strict=True):
        verdict, why = read_verdict(response, (QUALITY_OK, *QUALITY_REJECTS))
        draft.item["quality_verdict"], draft.item["quality_reason"] = verdict or JUDGE_FAILED, why
        if verdict is None:
            ctx.count(JUDGE_FAILED)
            if config.on_judge_failure == "reject":
                draft.reject(JUDGE_FAILED, why)
        elif verdict != QUALITY_OK:
            if config.on_check_failure == "flag":
                ctx.count(f"flagged_{QUALITY_REJECTS[verdict]}")
            else:
                draft.reject(QUALITY_REJECTS[verdict], why)


def synthesise(records: pd.DataFrame, config: Config, ctx: StageContext) -> pd.DataFrame:
    """All rows at once (seeds are paired across the pool): plan, write, screen and check the items."""
    if mm.IMAGE_SHA256 in records.columns and records[mm.IMAGE_SHA256].notna().any():
        return synthesise_pairs(records, config, ctx)
    prompts, check_prompt = _loaded(ctx, config)
    risky, safe = seed_pools(records, config, ctx)
    candidates, planned = plan(config, risky, safe, ctx.seed, list(ctx.taxonomy.categories))
    for scenario, figures in planned.items():
        if figures["planned"] < figures["wanted"]:
            ctx.log.warning("%s: the seeds allow %d of the %d items asked for", scenario, figures["planned"],
                            figures["wanted"])
    provenance = {"generator_model": ctx.llm.endpoint_model(config.generator),
                  "meta": json.dumps({"checker_model": ctx.llm.endpoint_model(config.checker),
                                      "check_prompt_sha256": check_prompt.sha256}),
                  **{scenario: prompt.sha256 for scenario, prompt in prompts.items()}}
    drafts = [_draft(c, response, prompts[c.scenario], provenance, ctx)
              for c, response in zip(candidates, _generate(candidates, prompts, config, ctx), strict=True)]
    _screen(drafts, config, ctx.lang)
    if config.check:
        _quality_check(drafts, check_prompt, config, ctx)
    frame = pd.DataFrame([d.item for d in drafts], columns=ITEM_COLUMNS)
    frame["is_risky"] = frame["is_risky"].astype("boolean")
    frame = reject(frame, pd.Series([d.reason for d in drafts], index=frame.index, dtype=object),
                   pd.Series([d.detail for d in drafts], index=frame.index, dtype=object))
    kept = frame[frame[REJECT_REASON].isna()]
    ctx.report({"planned": planned, "seeds": {"risky": len(risky), "safe_look_alikes": len(safe)},
                "kept_by_scenario": {str(k): int(v) for k, v in kept["scenario"].value_counts().items()}})
    return frame


# -- image + text pairs (bsa.multimodal.synthesis) -------------------------------------------------------------
WRONG_COMBINATION = "quality_wrong_combination"
IMAGE_PROMPT = "image_prompt"  # the prompt a generated picture was drawn from (empty for cards)
PAIR_COLUMNS = [*ITEM_COLUMNS[:len(CORE_FIELDS)], *mm.FIELDS, *ITEM_COLUMNS[len(CORE_FIELDS):], IMAGE_PROMPT]


def _baseline(config: Config, ctx: StageContext) -> Counter:
    """Items per coverage cell of the baseline table (none without one)."""
    if not config.coverage_baseline:
        return Counter()
    return cell_counts(ctx.read_table(config.coverage_baseline), config.coverage_level)


def seed_items(records: pd.DataFrame) -> pd.DataFrame:
    """The seeds that are items themselves (a combination, and a primary category unless benign), in the pairs'
    columns: their annotation as risk summary (benign: as safe summary), their own id as seed."""
    combination = records[mm.COMBINATION] if mm.COMBINATION in records.columns else pd.Series(None, records.index)
    primary = records.get(mm.CATEGORY_LEVELS[0], pd.Series(None, records.index))
    usable = combination.notna() & (primary.notna() | combination.eq(mm.BENIGN))
    seeds = records[usable.fillna(False).astype(bool)]
    frame = pd.DataFrame({column: seeds[column] if column in seeds.columns else None for column in PAIR_COLUMNS},
                         index=seeds.index)
    benign = frame[mm.COMBINATION].eq(mm.BENIGN)
    frame["safe_summary"] = seeds["benign_reason"].where(benign, "").fillna("")
    frame["risk_summary"] = seeds["risk_summary"].where(~benign, "").fillna("")
    frame["label"] = [f"{c}-{s}" if isinstance(s, str) and s else c for c, s in
                      zip(seeds["category"], seeds["subcategory"], strict=True)]
    frame["seed_ids"] = [json.dumps([str(i)]) for i in seeds["id"]]
    return frame.reset_index(drop=True)


def _write_pairs(candidates: list[PairCandidate], config: Config, ctx: StageContext) -> tuple[list[Response], str]:
    """The generator's replies, and the generation prompt's hash (English's; each language's is in the manifest)."""
    params = {"temperature": config.temperature, "max_tokens": config.max_tokens}
    requests = []
    for c in candidates:
        note = ctx.prompts.load(f"{config.pair_prompt}_{c.kind}", c.lang).render()[0]["content"]
        prompt = ctx.prompts.load(config.pair_prompt, c.lang)
        requests.append(Request(config.generator, prompt.render(**pair_generation_values(c, note, ctx.taxonomy)),
                                schema=prompt.schema, params=params, tag=ctx.name))
    responses = ctx.llm.run(requests, desc="synthesis: write pairs") if requests else []
    return responses, ctx.prompts.load(config.pair_prompt).sha256


def _pair_draft(candidate: PairCandidate, response: Response, provenance: dict[str, str]) -> Draft:
    parts, problem = read_pair(response.parsed if response.ok else None)
    if parts is None:
        failed = {column: None for column in PAIR_COLUMNS}
        failed |= {"id": text_id(f"{candidate.kind}|{candidate.seed['id']}"), "text": "", "lang": candidate.lang,
                   "source": "synthesis", mm.COMBINATION: candidate.kind,
                   "seed_ids": json.dumps([str(candidate.seed["id"])])}
        draft = Draft(Candidate(candidate.kind, (candidate.seed,)), failed, [])
        draft.reject("generation_failed", response.error or problem if not response.ok else problem)
        return draft
    item = pair_item(candidate, parts, provenance)
    return Draft(Candidate(candidate.kind, (candidate.seed,)), item, [parts["image_text"]])


def _screen_pairs(drafts: list[Draft], config: Config) -> None:
    """Reject pairs whose text and card are not in the seed's script, and repeats of an earlier pair."""
    seen: set[str] = set()
    for draft in drafts:
        if draft.reason:
            continue
        written = f"{draft.item['text']} {draft.summaries[0]}"
        if config.check_script and not in_script(written, draft.item["lang"]):
            draft.reject("wrong_language", f"not written in the script of '{draft.item['lang']}'")
        elif draft.item["id"] in seen:
            draft.reject("duplicate_query", "the same text and card were written for another seed")
        seen.add(draft.item["id"])


GENERATED_DIR = "images"  # generated pictures in the build folder: images/<sha256>.<ext>


def _draw_pictures(drafts: list[Draft], config: Config, ctx: StageContext) -> None:
    """The `image_kinds` pairs still standing get a picture from the image generator, drawn from their
    image_description: checked like an ingested image, saved in the build, its prompt recorded. A generation
    that failed after its retries is rejected `generation_failed`, a picture the limits refuse with its reason."""
    name = config.image_generator
    todo = [d for d in drafts if d.reason is None and d.item[mm.COMBINATION] in config.image_kinds]
    if name is None or not todo:
        return
    prompts = [ctx.prompts.load(config.image_prompt, d.item["lang"]).render(
        description=d.item[mm.IMAGE_DESCRIPTION])[0]["content"] for d in todo]
    requests = [image_request(name, prompt, config.image_size, ctx.name) for prompt in prompts]
    responses = ctx.llm.run(requests, desc="synthesis: draw pictures")
    source = f"generated: {name} ({ctx.llm.endpoint_model(name)})"
    folder = ctx.config.build_path / GENERATED_DIR
    for draft, prompt, response in zip(todo, prompts, responses, strict=True):
        if not response.ok:
            draft.reject("generation_failed", f"image generator '{name}': {response.error}")
            continue
        try:
            info = check_image_bytes(base64.b64decode(response.content), config.image_limits,
                                     f"image from '{name}'")
        except ImageProblem as problem:
            draft.reject(problem.reason, problem.detail)
            continue
        path = folder / f"{info.sha256}.{info.extension}"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(base64.b64decode(response.content))
        draft.item |= {mm.IMAGE: str(path), mm.IMAGE_SHA256: info.sha256, mm.IMAGE_STYLE: "synthetic",
                       mm.IMAGE_SOURCE: source, mm.RENDER_SPEC: None, IMAGE_PROMPT: prompt}
        ctx.count("pictures_generated")


def _check_pairs(drafts: list[Draft], config: Config, ctx: StageContext) -> None:
    """The checker rates each pair's text, card and pair harm; a pair that is not its intended kind fails."""
    todo = [d for d in drafts if d.reason is None]
    vision = bool(ctx.config.endpoints[config.checker].vision)
    params = {"temperature": 0.0, "max_tokens": config.check_max_tokens}
    # the checker reads what the card prints, not the generator's description of it (a generated picture has
    # no print: a checker that cannot see it reads the description it was drawn from)
    requests = [harm_request(d.item if d.item[mm.RENDER_SPEC] is None else {**d.item, mm.IMAGE_DESCRIPTION: None},
                             config.checker, vision, ctx.prompts,
                             config.pair_check_prompt, params, ctx.name, d.item["lang"]) for d in todo]
    responses = ctx.llm.run(requests, desc="synthesis: check pairs") if requests else []
    for draft, response in zip(todo, responses, strict=True):
        ratings, why = read_harms(response)
        intended = draft.item[mm.COMBINATION]
        if ratings is None:
            draft.item["quality_verdict"], draft.item["quality_reason"] = JUDGE_FAILED, why
            ctx.count(JUDGE_FAILED)
            if config.on_judge_failure == "reject":
                draft.reject(JUDGE_FAILED, why)
            continue
        judged = judged_combination(ratings)
        ok = judged == intended
        draft.item["quality_verdict"] = QUALITY_OK if ok else WRONG_COMBINATION
        draft.item["quality_reason"] = why if ok else f"intended {intended}, the checker reads {judged}: {why}"
        if not ok:
            if config.on_check_failure == "flag":
                ctx.count(f"flagged_{WRONG_COMBINATION}")
            else:
                draft.reject(WRONG_COMBINATION, draft.item["quality_reason"])


def synthesise_pairs(records: pd.DataFrame, config: Config, ctx: StageContext) -> pd.DataFrame:
    """Image + text items of every kind from the annotated seeds, emptiest coverage cell first, then checked."""
    if not config.pairs:
        raise ConfigError(f"{ctx.config.config_path}: the seeds carry images: give synthesis.pairs, the items "
                          f"to write per kind ({', '.join(DEFAULT_LAYOUTS)})")
    risky, safe = seed_pools(records, config, ctx)
    kept_seeds = seed_items(records) if config.keep_seeds else pd.DataFrame(columns=PAIR_COLUMNS)
    baseline = _baseline(config, ctx) + cell_counts(kept_seeds, config.coverage_level)
    candidates, planned = plan_pairs(dict(config.pairs), risky, safe, ctx.seed, dict(config.layouts), baseline,
                                     config.coverage_level)
    for kind, figures in planned.items():
        if figures["planned"] < figures["wanted"]:
            ctx.log.warning("%s: the seeds allow %d of the %d pairs asked for", kind, figures["planned"],
                            figures["wanted"])
    responses, prompt_sha = _write_pairs(candidates, config, ctx)
    provenance = {"generator_model": ctx.llm.endpoint_model(config.generator), "prompt_sha256": prompt_sha,
                  "meta": json.dumps({"checker_model": ctx.llm.endpoint_model(config.checker),
                                      "check_prompt_sha256": ctx.prompts.load(config.pair_check_prompt).sha256})}
    drafts = [_pair_draft(c, r, provenance) for c, r in zip(candidates, responses, strict=True)]
    _screen_pairs(drafts, config)
    _draw_pictures(drafts, config, ctx)
    if config.check:
        _check_pairs(drafts, config, ctx)
    written = pd.DataFrame([d.item for d in drafts], columns=PAIR_COLUMNS)
    frame = pd.concat([df for df in (kept_seeds.astype(object), written.astype(object)) if not df.empty],
                      ignore_index=True) if len(kept_seeds) or len(written) else written
    for column in ("is_risky", mm.IMG_RISK, mm.TEXT_RISK):
        frame[column] = frame[column].astype("boolean")
    reasons = [None] * len(kept_seeds) + [d.reason for d in drafts]
    details = [""] * len(kept_seeds) + [d.detail for d in drafts]
    frame = reject(frame, pd.Series(reasons, index=frame.index, dtype=object),
                   pd.Series(details, index=frame.index, dtype=object))
    kept = frame[frame[REJECT_REASON].isna()]
    langs = {str(s.get("lang")) for s in risky + safe} | set(kept["lang"])
    level = min(config.coverage_level, ctx.taxonomy.depth - 1)
    table = coverage_table(cell_counts(kept, level), level_names(ctx.taxonomy, level), langs)
    ctx.report({"planned": planned, "seeds": {"risky": len(risky), "safe_look_alikes": len(safe),
                                              "kept_as_items": len(kept_seeds)},
                "kept_by_combination": {str(k): int(v) for k, v in kept[mm.COMBINATION].value_counts().items()},
                "coverage": coverage_stats(table)})
    return frame


STAGE = Stage("synthesis", Config, (whole(synthesise),), endpoints=("generator", "checker", "image_generator"),
              needs=("id", "text", "is_risky", "category", "subcategory", "risk_summary", "benign_reason"),
              adds=tuple(ITEM_COLUMNS), replaces_rows=True)
