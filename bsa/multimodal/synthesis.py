"""Image + text items written from annotated seeds (stage 'synthesis' on a multimodal build): what to write, and
the item a reply makes.

Kinds: the four combinations (RIRT, RIST, SIRT, SIST: where the risk sits) from risky seeds, and `benign`
(an over-refusal pair that looks risky and is not, MOSSBench-style) from safe look-alikes. Planning fills the
coverage cells (category at a level, primary by default, x kind x language, bsa.multimodal.coverage) with the
fewest items first, counting from an optional baseline (an earlier release's table), and within a cell prefers
the seed whose next-level category has the fewest items; each seed serves a kind once. The image is a typography card
(bsa.multimodal.render) of the text the generator wrote for it, in the kind's next layout; its render spec is
recorded, so the release rebuilds it exactly.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bsa.multimodal import fields
from bsa.multimodal.benchmark import image_in_words
from bsa.multimodal.coverage import KINDS, UNCATEGORISED, Cell
from bsa.multimodal.render import make_spec, render
from bsa.pipeline.records import text_id
from bsa.pipeline.taxonomy import Taxonomy
from bsa.pipeline.verdicts import clip

# where each kind puts the risk: (image alone risky, text alone risky)
RISKS = {"RIRT": (True, True), "RIST": (True, False), "SIRT": (False, True), "SIST": (False, False),
         fields.BENIGN: (False, False)}
DEFAULT_LAYOUTS = {"RIRT": ["label", "caption"], "RIST": ["numbered", "label"], "SIRT": ["caption", "label"],
                   "SIST": ["label", "caption"], fields.BENIGN: ["caption", "label", "numbered"]}
REPLY_FIELDS = ("text", "image_text", "image_description", "summary")
CARD_CHARS = 160  # the longest card text drawn (a card holds a phrase, not an essay)
SUMMARY_CHARS = 400
TEXT_CHARS = 2000


@dataclass(frozen=True)
class PairCandidate:
    """One pair to write: its kind, its seed and the layout of its card."""

    kind: str
    seed: dict
    layout: str

    @property
    def lang(self) -> str:
        return str(self.seed.get("lang") or "en")


def seed_level(seed: dict, level: int) -> str:
    """A seed's category at a level (0: primary), from fields.CATEGORY_LEVELS, else the core category fields."""
    value = seed.get(fields.CATEGORY_LEVELS[level])
    if not (isinstance(value, str) and value):
        value = seed.get(("category", "subcategory", None)[min(level, 2)] or "")
    return value if isinstance(value, str) and value else UNCATEGORISED


def _shuffled(items: list, rng: random.Random) -> list:
    items = list(items)
    rng.shuffle(items)
    return items


def plan_pairs(counts: dict[str, int], risky: list[dict], safe: list[dict], seed: int,
               layouts: dict[str, list[str]], baseline: Counter[Cell] | None = None, level: int = 0
               ) -> tuple[list[PairCandidate], dict[str, dict[str, int]]]:
    """The pairs to write, emptiest coverage cell (category at `level` x kind x language) first, and per kind how
    many were asked for and planned."""
    deeper = min(level + 1, len(fields.CATEGORY_LEVELS) - 1)
    coverage: Counter[Cell] = Counter(baseline or {})
    secondary: Counter[Cell] = Counter()
    chosen: list[PairCandidate] = []
    figures: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        wanted = counts.get(kind, 0)
        rng = random.Random(f"{seed}/{kind}")
        cells: dict[tuple[str, str], list[dict]] = {}
        for item in _shuffled(safe if kind == fields.BENIGN else risky, rng):
            cells.setdefault((seed_level(item, level), str(item.get("lang") or "en")), []).append(item)
        tie = {cell: i for i, cell in enumerate(_shuffled(sorted(cells), rng))}
        planned = 0
        while planned < wanted and cells:
            area, lang = min(cells, key=lambda c: (coverage[(c[0], kind, c[1])], tie[c]))
            queue = cells[(area, lang)]
            pick = min(range(len(queue)), key=lambda i: (secondary[(seed_level(queue[i], deeper), kind, lang)], i))
            item = queue.pop(pick)
            if not queue:
                del cells[(area, lang)]
            coverage[(area, kind, lang)] += 1
            secondary[(seed_level(item, deeper), kind, lang)] += 1
            chosen.append(PairCandidate(kind, item, layouts[kind][planned % len(layouts[kind])]))
            planned += 1
        figures[kind] = {"wanted": wanted, "planned": planned}
    return chosen, figures


def category_path(seed: dict, taxonomy: Taxonomy, lang: str) -> str:
    """The seed's category levels in `lang`, primary first."""
    names = [seed_level(seed, level) for level in range(len(fields.CATEGORY_LEVELS))]
    return " / ".join(taxonomy.translate(name, lang) for name in names if name != UNCATEGORISED) or "-"


def pair_generation_values(candidate: PairCandidate, kind_note: str, taxonomy: Taxonomy) -> dict[str, str]:
    """The placeholders of the generation prompt."""
    seed = candidate.seed
    words = image_in_words(seed)
    note = seed.get("benign_reason") if candidate.kind == fields.BENIGN else seed.get("risk_summary")
    return {"kind_note": kind_note, "category": category_path(seed, taxonomy, candidate.lang),
            "seed_text": str(seed["text"]), "seed_image": words[1] if words else "-", "seed_note": str(note or "-")}


def read_pair(parsed: Any) -> tuple[dict[str, str] | None, str]:
    """The reply's four parts, clipped; (None, why) when one is missing."""
    if not isinstance(parsed, dict):
        return None, "reply did not parse"
    parts = {name: str(parsed.get(name) or "").strip().strip('"“”「」').strip() for name in REPLY_FIELDS}
    missing = [name for name, value in parts.items() if not value]
    if missing:
        return None, f"reply lacks {', '.join(missing)}"
    limits = {"text": TEXT_CHARS, "image_text": CARD_CHARS, "image_description": SUMMARY_CHARS,
              "summary": SUMMARY_CHARS}
    return {name: clip(value, limits[name]) for name, value in parts.items()}, ""


def pair_item(candidate: PairCandidate, parts: dict[str, str], provenance: dict[str, str]) -> dict[str, Any]:
    """The item row of a written pair: its card rendered (the spec recorded), its risks, its provenance."""
    seed, kind = candidate.seed, candidate.kind
    spec = make_spec(parts["image_text"], candidate.layout, candidate.lang)
    img_risk, text_risk = RISKS[kind]
    levels = [seed.get(name) for name in fields.CATEGORY_LEVELS]
    return {
        "id": text_id(f"{parts['text']}\n{parts['image_text']}"), "text": parts["text"], "lang": candidate.lang,
        "source": "synthesis", "category": seed.get("category"), "subcategory": seed.get("subcategory"),
        "is_risky": kind != fields.BENIGN, "meta": provenance["meta"],
        fields.IMAGE: None, fields.IMAGE_SHA256: hashlib.sha256(render(spec)).hexdigest(),
        fields.IMAGE_STYLE: "typography", fields.IMAGE_SOURCE: fields.RENDERED,
        fields.IMAGE_DESCRIPTION: parts["image_description"], fields.RENDER_SPEC: spec.to_json(),
        fields.IMG_RISK: img_risk, fields.TEXT_RISK: text_risk, fields.COMBINATION: kind,
        **{name: value if isinstance(value, str) and value else None
           for name, value in zip(fields.CATEGORY_LEVELS, levels, strict=True)},
        "scenario": None, "label": "-".join(filter(None, [seed.get("category"), seed.get("subcategory")])),
        "risk_summary": "" if kind == fields.BENIGN else parts["summary"],
        "safe_summary": parts["summary"] if kind == fields.BENIGN else "",
        "seed_ids": json.dumps([str(seed["id"])]), "generator_model": provenance["generator_model"],
        "prompt_sha256": provenance["prompt_sha256"], "quality_verdict": None, "quality_reason": None,
    }
