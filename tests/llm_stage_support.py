"""Shared by the tests of the LLM stages: a stage context whose engine talks to the scripted server."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from bsa.pipeline.config import BuildConfig, EndpointConfig
from bsa.pipeline.llm import Engine
from bsa.pipeline.prompts import PromptLoader
from bsa.pipeline.records import text_id
from bsa.pipeline.stage import StageContext
from bsa.pipeline.taxonomy import Taxonomy
from tests.fake_openai import FakeOpenAI, request_schema

ROOT = Path(__file__).resolve().parents[1]
TAXONOMY = Taxonomy.load(ROOT / "configs" / "taxonomy" / "bsa.yaml")


def copy_project(target: Path) -> Path:
    """The project's code, prompts, configs, data and Makefile copied to `target` (a build there touches nothing
    here)."""
    for name in ("bsa", "prompts", "configs", "data"):
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy2(ROOT / name, target / name)
    return target


def endpoint(server: FakeOpenAI, model: str, **options: object) -> EndpointConfig:
    """An endpoint on the scripted server: few retries, so garbage fails fast."""
    return EndpointConfig(base_url=server.url, model=model, max_retries=1, parse_retries=1, timeout=10,
                          concurrency=4, **options)


@contextmanager
def stage_context(tmp_path: Path, name: str, endpoints: dict[str, EndpointConfig],
                  lang: str = "en", seed: int = 0) -> Iterator[StageContext]:
    """A StageContext for stage `name` whose engine (closed afterwards) serves `endpoints`."""
    config = BuildConfig(lang=lang, seed=seed, build_dir=str(tmp_path / "build"), endpoints=endpoints)
    engine = Engine(endpoints, tmp_path / f"{name}-cache.sqlite")
    try:
        yield StageContext(name=name, config=config, taxonomy=TAXONOMY, prompts=PromptLoader(lang),
                           engine_factory=lambda: engine, show_progress=False)
    finally:
        engine.close()


def records(rows: list[dict], lang: str = "en") -> pd.DataFrame:
    """Core records from dicts with text, category, subcategory, is_risky (and any extra columns)."""
    frame = pd.DataFrame(rows)
    frame.insert(0, "id", [text_id(t) for t in frame["text"]])
    frame["lang"], frame["source"], frame["meta"] = lang, "test", "{}"
    frame["is_risky"] = pd.array(frame["is_risky"], dtype="boolean")
    return frame


def user_text(payload: dict) -> str:
    return str(payload["messages"][-1]["content"])


def system_text(payload: dict) -> str:
    return str(payload["messages"][0]["content"]) if payload["messages"][0]["role"] == "system" else ""


def schema_enum(payload: dict) -> list[str]:
    """The verdicts the request's reply schema allows ([] when it asks for no verdict)."""
    schema = request_schema(payload)
    return list(schema.get("properties", {}).get("verdict", {}).get("enum", []))


def reply(content: object) -> dict:
    """A chat message whose content is `content` (dicts as JSON)."""
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    return {"role": "assistant", "content": text}
