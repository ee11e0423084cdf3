"""A realistic pool of N instructions for benchmarks, made by perturbing real seed instructions.

Seeds: the project's demo pool (`data/demo/pool_*.jsonl`, malformed rows included) and, when ../shared is
beside the project, the shared corpora (XSTest, AdvBench, HarmBench, Flames). Each pool row is a seed with
one to three edits of the kinds real pools show: two neighbouring words (or CJK characters) swapped, casing
changed, punctuation dropped or doubled, numbers changed or added, a polite prefix or suffix. The pool thus
keeps the seeds' mix of languages, lengths and defects.

    python bench/pool.py 100000 build/pool.parquet
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bsa.pipeline.io import write_table  # noqa: E402
from bsa.pipeline.taxonomy import Taxonomy  # noqa: E402
from bsa.project import load_config  # noqa: E402
from bsa.stages.ingest import ingest  # noqa: E402

_CJK = re.compile("[\u3040-\u30ff\u4e00-\u9fff]")
_NUMBER = re.compile(r"\d+")
PREFIXES = {"en": ["Please", "Quick question:", "Hey,", "Can you tell me:", "I need help."],
            "zh": ["请问", "麻烦问一下，", "你好，", "急！", "想请教一下："]}
SUFFIXES = {"en": [" Thanks!", " Please be detailed.", " Keep it short.", " (asking for a friend)"],
            "zh": ["谢谢！", "请详细一点。", "简单说说就行。", "在线等。"]}
TAILS = {"en": ["?", "!", "...", ".", "??"], "zh": ["。", "？", "！", "？？", "……"]}


def seed_records() -> pd.DataFrame:
    """Core records of the demo pool plus, when present, the shared corpora."""
    sources = [s for s in load_config(ROOT / "configs" / "default.yaml").sources if (ROOT / s.path).exists()]
    corpora = ROOT / "configs" / "corpora.yaml"
    if corpora.exists():
        sources += [s for s in load_config(corpora).sources if (ROOT / s.path).exists()]
    for source in sources:
        source.path = str(ROOT / source.path)
        source.on_error = "reject"
    if not sources:
        raise FileNotFoundError("no seed instructions: neither data/demo/pool_*.jsonl nor ../shared is present")
    records, _ = ingest(sources, Taxonomy.load(ROOT / "configs" / "taxonomy" / "bsa.yaml"))
    return records.drop(columns=["_line"])


def _is_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def swap_neighbours(text: str, rng: random.Random) -> str:
    units = list(text) if _is_cjk(text) else text.split(" ")
    if len(units) < 3:
        return text
    i = rng.randrange(len(units) - 1)
    units[i], units[i + 1] = units[i + 1], units[i]
    return ("" if _is_cjk(text) else " ").join(units)


def change_case(text: str, rng: random.Random) -> str:
    return rng.choice([str.lower, str.capitalize, str.upper, str.title])(text) if rng.random() < 0.5 \
        else text[:1].lower() + text[1:]


def change_punctuation(text: str, rng: random.Random) -> str:
    bare = text.rstrip("?!.。？！ ")
    return bare + rng.choice(TAILS["zh" if _is_cjk(text) else "en"]) if rng.random() < 0.7 else bare


def change_numbers(text: str, rng: random.Random) -> str:
    if _NUMBER.search(text):
        return _NUMBER.sub(lambda _: str(rng.randint(1, 2025)), text)
    extra = f"，用{rng.randint(2, 9)}个步骤" if _is_cjk(text) else f" in {rng.randint(2, 9)} steps"
    bare = text.rstrip("?!.。？！ ")
    return bare + extra + text[len(bare):]


def add_framing(text: str, rng: random.Random) -> str:
    lang = "zh" if _is_cjk(text) else "en"
    if rng.random() < 0.5:
        return f"{rng.choice(PREFIXES[lang])} {text}" if lang == "en" else rng.choice(PREFIXES[lang]) + text
    return text + rng.choice(SUFFIXES[lang])


EDITS: list[Callable[[str, random.Random], str]] = [swap_neighbours, change_case, change_punctuation,
                                                     change_numbers, add_framing]


def perturb(text: str, rng: random.Random) -> tuple[str, str]:
    """The text with one to three random edits, and their names."""
    edits = rng.sample(EDITS, rng.randint(1, 3))
    for edit in edits:
        text = edit(text, rng)
    return text, "+".join(edit.__name__ for edit in edits)


def make_pool(size: int, seed: int = 0) -> pd.DataFrame:
    """`size` core records: seeds drawn at random, each perturbed; `meta` names the seed and the edits."""
    rng = random.Random(seed)
    seeds = seed_records()
    picks = [rng.randrange(len(seeds)) for _ in range(size)]
    pool = seeds.iloc[picks].reset_index(drop=True)
    texts, edits = zip(*(perturb(text, rng) for text in pool["text"]), strict=True)
    pool["meta"] = [f'{{"seed_id": "{sid}", "edits": "{e}"}}' for sid, e in zip(pool["id"], edits, strict=True)]
    pool["text"] = list(texts)
    pool["id"] = [f"pool-{i:07d}" for i in range(size)]
    return pool


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "build" / f"pool_{n}.parquet"
    print(f"wrote {write_table(make_pool(n), out)}")
