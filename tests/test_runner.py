"""bsa.pipeline.runner and the `bsa` CLI, driven by a tiny fake stage (so no real stage's behaviour matters).

The fake stage drops texts shorter than `min_chars` and texts containing a word of its word list (a side
table read through `ctx.read_table`, so a change to it must rerun the stage).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import bsa.project as project_module
from bsa.cli import main as bsa
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import load_table, write_table
from bsa.pipeline.layout import stage_paths
from bsa.pipeline.runner import Runner
from bsa.pipeline.stats import funnel_table
from bsa.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
TAXONOMY = ROOT / "configs" / "taxonomy" / "bsa.yaml"

FAKE_STAGE = '''
"""A fake stage for the runner tests."""

import pandas as pd

from bsa.pipeline.config import Section
from bsa.pipeline.stage import Stage, per_batch, reject, whole

CALLS = []


class Config(Section):
    min_chars: int = 5
    words: list[str] = []
    word_file: str | None = None


def drop(records, config, ctx):
    CALLS.append(config)
    words = set(config.words)
    if config.word_file:
        words |= set(ctx.read_table(config.word_file)["word"])
    reasons = pd.Series(None, index=records.index, dtype=object)
    reasons[records["text"].str.len() < config.min_chars] = "too_short"
    reasons[records["text"].map(lambda t: any(w in t.split() for w in words))] = "banned_word"
    ctx.count("seen", len(records))
    return reject(records.assign(length=records["text"].str.len()), reasons)


def words_used(frame, config, ctx):
    words = set(config.words) | (set(ctx.read_table(config.word_file)["word"]) if config.word_file else set())
    ctx.report({"words": sorted(words)})
    return frame


STAGE = Stage("fake", Config, (per_batch(drop), whole(words_used)), needs=("text",), adds=("length",))
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake stage module, registered under the name `fake` in the project the CLI and the tests use."""
    path = tmp_path / "fake_stage.py"
    path.write_text(FAKE_STAGE, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("fake_stage", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fake_stage", module)
    spec.loader.exec_module(module)
    registry = dataclasses.replace(project_module.PROJECT, stages={**STAGES, "fake": module.STAGE})
    monkeypatch.setattr(project_module, "PROJECT", registry)
    return module


@pytest.fixture
def project(tmp_path):
    """A source file, a word list and a config file running ingest then the fake stage."""
    source = tmp_path / "pool.jsonl"
    rows = [{"text": "How do I kill a Python process?", "label": "safe"},
            {"text": "hi", "label": "safe"},
            {"text": "Where can I buy a skimmer for card readers?", "label": "unsafe"},
            {"text": "Write a poem about spring rain.", "label": "safe"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (tmp_path / "words.csv").write_text("word\nskimmer\n", encoding="utf-8")
    config = {"build_dir": str(tmp_path / "build"), "taxonomy": str(TAXONOMY), "order": ["fake"],
              "sources": [{"name": "pool", "path": str(source), "is_risky": "label"}],
              "fake": {"min_chars": 5, "word_file": str(tmp_path / "words.csv")}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def build(config_path: Path, *overrides: str, force: bool = False, only: list[str] | None = None):
    config = project_module.load_config(config_path, list(overrides))
    with Runner(config, project_module.PROJECT, force=force, show_progress=False) as runner:
        return runner.build(only=only)


def skipped(summary: list[dict]) -> dict[str, bool]:
    return {row["stage"]: row["skipped"] for row in summary}


def test_build_writes_outputs_rejects_stats_and_manifest(fake, project):
    summary = build(project)
    config = project_module.load_config(project)
    ingest, stage = stage_paths(config, "ingest"), stage_paths(config, "fake")
    assert ingest.output.name == "00_ingest.parquet" and stage.output.name == "01_fake.parquet"
    kept = load_table(stage.output)
    assert kept["text"].tolist() == ["How do I kill a Python process?", "Write a poem about spring rain."]
    assert kept["length"].tolist() == [31, 31]  # a column the stage added
    rejects = load_table(stage.rejects)
    assert dict(zip(rejects["text"], rejects["reject_reason"], strict=True)) == {
        "hi": "too_short", "Where can I buy a skimmer for card readers?": "banned_word"}
    stats = json.loads(stage.stats.read_text())
    assert (stats["rows_in"], stats["rows_out"]) == (4, 2)
    assert stats["dropped"] == {"too_short": 1, "banned_word": 1}
    assert stats["counters"] == {"seen": 4} and stats["words"] == ["skimmer"]
    manifest = json.loads((config.build_path / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"ingest", "fake"}
    assert manifest["stages"]["fake"]["input"] == str(ingest.output)
    assert manifest["config"]["order"] == ["fake"] and "pandas" in manifest["versions"]
    assert skipped(summary) == {"ingest": False, "fake": False}
    assert "too_short 1" in funnel_table(summary)


def test_unchanged_stage_is_skipped_on_rerun(fake, project):
    build(project)
    output = stage_paths(project_module.load_config(project), "fake").output
    before = output.read_bytes()
    summary = build(project)
    assert len(fake.CALLS) == 1
    assert skipped(summary) == {"ingest": True, "fake": True}
    assert summary[-1]["rows_out"] == 2  # the skipped stage still reports its last figures
    assert output.read_bytes() == before
    assert "(unchanged)" in funnel_table(summary)


def test_config_change_reruns_only_the_stage_it_concerns(fake, project):
    build(project)
    summary = build(project, "fake.min_chars=1")
    assert skipped(summary) == {"ingest": True, "fake": False}
    assert fake.CALLS[-1].min_chars == 1
    assert summary[-1]["dropped"] == {"banned_word": 1}


def test_set_overrides_parse_lists(fake, project):
    summary = build(project, "fake.words=[Python, poem]")
    assert fake.CALLS[-1].words == ["Python", "poem"]
    assert summary[-1]["dropped"] == {"too_short": 1, "banned_word": 3}


def test_input_change_reruns_ingest_and_what_follows(fake, project):
    build(project)
    source = project.parent / "pool.jsonl"
    source.write_text(source.read_text() + json.dumps({"text": "What is a dirty bomb?", "label": "safe"}) + "\n")
    summary = build(project)
    assert skipped(summary) == {"ingest": False, "fake": False}
    assert summary[-1]["rows_in"] == 5


def test_changed_side_table_reruns_the_stage(fake, project):
    build(project)
    (project.parent / "words.csv").write_text("word\npoem\n", encoding="utf-8")
    summary = build(project)
    assert skipped(summary) == {"ingest": True, "fake": False}
    assert summary[-1]["words"] == ["poem"]


def test_force_and_a_tampered_output_rerun(fake, project):
    build(project)
    assert skipped(build(project, force=True)) == {"ingest": False, "fake": False}
    stage_paths(project_module.load_config(project), "fake").output.write_bytes(b"tampered")
    assert skipped(build(project)) == {"ingest": True, "fake": False}


def test_only_a_stage_whose_input_is_missing_is_an_error(fake, project):
    with pytest.raises(DataError, match="input of stage 'fake' missing"):
        build(project, only=["fake"])


def test_cli_build_prints_the_funnel(fake, project, capsys):
    assert bsa(["build", "--config", str(project)]) == 0
    out = capsys.readouterr().out
    assert "ingest" in out and "fake" in out and "banned_word 1" in out


def test_cli_stage_runs_on_a_raw_csv(fake, project, tmp_path, capsys):
    raw = tmp_path / "raw.csv"
    raw.write_text("text,category\nHow do I shoot a good photo?,Violence and Terrorism-Violent Content\nok,\n",
                   encoding="utf-8")
    out = tmp_path / "out" / "kept.jsonl"
    code = bsa(["stage", "fake", "--input", str(raw), "--output", str(out), "--config", str(project),
                "--set", "fake.min_chars=3"])
    assert code == 0, capsys.readouterr().err
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["text"] for row in kept] == ["How do I shoot a good photo?"]
    assert (kept[0]["category"], kept[0]["subcategory"]) == ("Violence and Terrorism", "Violent Content")
    rejects = pd.read_parquet(tmp_path / "out" / "kept.rejects.parquet")
    assert rejects["reject_reason"].tolist() == ["too_short"]
    assert json.loads((tmp_path / "out" / "kept.stats.json").read_text())["rows_in"] == 2


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_stage_never_sees_line_numbers_whatever_its_input_format(fake, project, tmp_path, capsys, suffix):
    # a table of records (core fields present) goes to the stage as it is: `_line`, which every format now
    # carries when read, is the file's business and must not reach the stage or its outputs
    records = pd.DataFrame({"id": ["a1", "b2", "c3"], "text": ["How do I kill a Python process?", "hi",
                                                               "Write a poem about spring rain."],
                            "lang": "en", "source": "pool", "category": "", "subcategory": "", "is_risky": "false"})
    table = write_table(records, tmp_path / f"records{suffix}")
    out = tmp_path / "out" / "kept.parquet"
    assert bsa(["stage", "fake", "--input", str(table), "--output", str(out), "--config", str(project)]) == 0, \
        capsys.readouterr().err
    assert fake.CALLS  # the stage ran
    kept, rejects = pd.read_parquet(out), pd.read_parquet(tmp_path / "out" / "kept.rejects.parquet")
    assert "_line" not in kept.columns and "_line" not in rejects.columns
    assert kept["id"].tolist() == ["a1", "c3"] and rejects["id"].tolist() == ["b2"]
    assert json.loads((tmp_path / "out" / "kept.stats.json").read_text())["rows_in"] == 3


def test_cli_reports_bad_input_as_one_clean_line(fake, project, tmp_path, capsys):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    code = bsa(["stage", "fake", "--input", str(raw), "--output", str(tmp_path / "o.parquet"),
                "--config", str(project)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {raw}:2:") and "malformed JSON" in err


def test_cli_reports_a_bad_override(fake, project, capsys):
    assert bsa(["build", "--config", str(project), "--set", "fake.min_chars=many"]) == 2
    assert "fake.min_chars" in capsys.readouterr().err


def test_changed_stage_code_reruns_the_stage(fake, project):
    build(project)
    Path(fake.__file__).write_text(Path(fake.__file__).read_text() + "\n# edited\n", encoding="utf-8")
    assert skipped(build(project)) == {"ingest": True, "fake": False}


def test_cli_stage_on_a_configured_source_honours_its_on_error(fake, project, tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text(pool.read_text() + '{"text": "never closed\n', encoding="utf-8")
    out = tmp_path / "out" / "kept.parquet"
    code = bsa(["stage", "fake", "--input", str(pool), "--output", str(out), "--config", str(project),
                "--set", "sources.0.on_error=reject"])
    assert code == 0, capsys.readouterr().err
    assert len(pd.read_parquet(out)) == 2
    ingest_rejects = pd.read_parquet(tmp_path / "out" / "kept.input.rejects.parquet")
    assert ingest_rejects[["_line", "reject_reason"]].to_dict(orient="records") == [
        {"_line": 5, "reject_reason": "malformed_json"}]
