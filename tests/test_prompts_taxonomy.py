"""Prompt templates and the taxonomy."""

from __future__ import annotations

import pytest

from bsa.pipeline.errors import ConfigError
from bsa.pipeline.prompts import PromptLoader, parse_template
from bsa.pipeline.taxonomy import Taxonomy
from tests.conftest import ROOT


def test_template_sections_and_placeholders(tmp_path):
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "judge.md").write_text("## system\nYou judge. Cost: $$5\n## user\nQuery: $query\n")
    (tmp_path / "en" / "judge.schema.json").write_text('{"type": "object"}')
    loader = PromptLoader("en", root=tmp_path)
    prompt = loader.load("judge")
    messages = prompt.render(query="How do I kill a Python process?")
    assert messages == [{"role": "system", "content": "You judge. Cost: $5"},
                        {"role": "user", "content": "Query: How do I kill a Python process?"}]
    assert prompt.schema == {"type": "object"}
    assert loader.used == {"en/judge": prompt.sha256}


def test_missing_placeholder_and_missing_prompt_name_the_file(tmp_path):
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "p.md").write_text("Query: $query and $risk")
    loader = PromptLoader("en", root=tmp_path)
    with pytest.raises(ConfigError, match=r"p\.md: placeholder \$risk has no value"):
        loader.load("p").render(query="x")
    with pytest.raises(ConfigError, match="absent.md: prompt not found"):
        loader.load("absent")


def test_hash_changes_with_the_schema(tmp_path):
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "p.md").write_text("Q: $q")
    before = PromptLoader("en", root=tmp_path).load("p").sha256
    (tmp_path / "en" / "p.schema.json").write_text('{"type": "object"}')
    assert PromptLoader("en", root=tmp_path).load("p").sha256 != before


def test_template_without_sections_is_all_user():
    assert parse_template("Just $this\n") == ("", "Just $this")


def test_every_shipped_prompt_exists_in_english_and_chinese():
    names = {p.relative_to(ROOT / "prompts" / "en") for p in (ROOT / "prompts" / "en").glob("*")}
    assert names, "no prompts shipped"
    for name in names:
        assert (ROOT / "prompts" / "zh" / name).exists(), f"prompts/zh/{name} missing"


def test_bsa_taxonomy():
    taxonomy = Taxonomy.load(ROOT / "configs" / "taxonomy" / "bsa.yaml")
    assert len(taxonomy.categories) == 9
    assert len(taxonomy.labels) == 17
    assert Taxonomy.split("Specially Regulated Items-Military and Police-Controlled Items") == (
        "Specially Regulated Items", "Military and Police-Controlled Items")
    assert taxonomy.is_valid("Rumors", "Rumors with Negative Impact")
    assert not taxonomy.is_valid("Rumors", "Violent Content")
    assert taxonomy.translate("Rumors", "zh") == "谣言"


def test_taxonomy_labels_match_the_released_bsa_set(bsa_csv):
    import pandas as pd

    taxonomy = Taxonomy.load(ROOT / "configs" / "taxonomy" / "bsa.yaml")
    labels = pd.read_csv(bsa_csv)["label"]
    seen = set()
    for label in labels:
        for part in str(label).split("\n"):
            seen.add(part.split(": ", 1)[1] if part.startswith("Query ") else part)
    assert seen == set(taxonomy.labels)
