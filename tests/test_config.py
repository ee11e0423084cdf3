"""bsa.pipeline.config: YAML validated into typed objects, `extends:`, `--set` overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bsa.pipeline.config import apply_override, parse_override
from bsa.pipeline.errors import ConfigError
from bsa.project import load_config
from bsa.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.yaml"


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_default_config_validates_every_stage_section():
    config = load_config(DEFAULT)
    assert config.order[0] == "clean" and set(config.order) <= set(STAGES)
    assert {s.name for s in config.sources} == {"demo-en", "demo-zh"}
    for stage in STAGES.values():
        stage.settings(config)  # raises on an invalid section


@pytest.mark.parametrize("text,keys,value", [
    ("language.keep=[en, zh]", ["language", "keep"], ["en", "zh"]),
    ("seed=3", ["seed"], 3),
    ("annotations.require=true", ["annotations", "require"], True),
    ("endpoints.local.temperature=0.6", ["endpoints", "local", "temperature"], 0.6),
    ("name=my build", ["name"], "my build"),
    ("description=", ["description"], ""),
    ("sources.0.limit=5", ["sources", "0", "limit"], 5),
    ("relevance.keep_verdicts=[relevant]", ["relevance", "keep_verdicts"], ["relevant"]),
])
def test_parse_override_reads_values_as_yaml(text, keys, value):
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text,message", [("seed", "expected key=value"), ("seed=[1, 2", "not valid YAML")])
def test_bad_override_is_a_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_override(text)


def test_apply_override_creates_nested_keys_and_indexes_lists():
    data = {"sources": [{"name": "a"}, {"name": "b"}]}
    apply_override(data, ["sources", "1", "limit"], 7)
    apply_override(data, ["dedup", "threshold"], 0.9)
    assert data == {"sources": [{"name": "a"}, {"name": "b", "limit": 7}], "dedup": {"threshold": 0.9}}


def test_overrides_reach_the_validated_config():
    config = load_config(DEFAULT, ["seed=5", "sources.0.limit=3", "annotations.require=true",
                                   "annotations.files=[]", "order=[clean, dedup]"])
    assert config.seed == 5
    assert config.sources[0].limit == 3
    assert config.order == ["clean", "dedup"]
    section = STAGES["annotations"].settings(config)
    assert section.require is True and section.files == []


def test_extends_merges_the_parent_deeply(tmp_path):
    write_config(tmp_path / "base.yaml", {"name": "base", "seed": 1, "endpoints": {"local": {"max_tokens": 64}},
                                          "annotations": {"require": True}})
    child = write_config(tmp_path / "child.yaml", {"extends": "base.yaml", "seed": 2,
                                                   "endpoints": {"local": {"temperature": 0.2}}})
    config = load_config(child)
    assert (config.name, config.seed) == ("base", 2)
    assert config.endpoints["local"].max_tokens == 64 and config.endpoints["local"].temperature == 0.2
    assert STAGES["annotations"].settings(config).require is True
    assert config.config_path == str(child)


@pytest.mark.parametrize("data,message", [
    ({"sedd": 1}, "unknown top-level key 'sedd'"),
    ({"order": ["clean", "dedupe"]}, "order: unknown stage 'dedupe'"),
    ({"annotations": {"requre": True}}, r"annotations\.requre: Extra inputs are not permitted"),
    ({"annotations": {"on_problem": "ignore"}}, r"annotations\.on_problem"),
    ({"sources": [{"name": "x"}]}, r"sources\.0\.path: Field required"),
    ({"sources": [{"name": "x", "path": "x.csv", "colour": "red"}]}, r"sources\.0\.colour"),
    ({"seed": "many"}, r"seed: Input should be a valid integer"),
])
def test_invalid_config_names_file_and_key(tmp_path, data, message):
    path = write_config(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_unreadable_configs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(tmp_path / "broken.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")
