"""The house: rooms that import in one direction, one judge of staleness, a config checked whole up front.

The rebuild tests work on a copy of the project (its `bsa/`, prompts, configs and data) in a temporary
folder, run as `python -m bsa.cli` there, with every LLM endpoint on the scripted server: editing a module
of the copy is then an edit a developer could make, and the real tree is never touched.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bsa.pipeline.config import EndpointConfig, LocalServerConfig
from bsa.pipeline.fingerprint import code_closure
from bsa.pipeline.llm import Engine, Request
from bsa.pipeline.llm.cache_key import LOCAL_RESULT_FIELDS, RESULT_FIELDS, SERVING_FIELDS
from bsa.pipeline.runner import stage_fingerprint
from bsa.project import PROJECT, load_config
from bsa.stages import STAGES
from tests.fake_openai import FakeOpenAI, request_schema
from tests.llm_stage_support import copy_project

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bsa"
ROOMS = ("pipeline", "stages", "text", "eval", "release")
PREFERRED_VERDICTS = ("relevant", "look_alike", "ok")


# -- the tree -------------------------------------------------------------------------------------------

def imports_of(path: Path) -> set[str]:
    """The project modules a file imports anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return {name for name in found if name == "bsa" or name.startswith("bsa.")}


def room_of(module: str) -> str:
    """`bsa.eval.run` -> `eval`; a top-level module (`bsa.benchmark`) is a room of its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bsa"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        source = room_of(module_name(path))
        graph.setdefault(source, set()).update(room_of(m) for m in imports_of(path) if room_of(m) != source)
    return graph


def test_the_framework_imports_nothing_from_the_domain():
    for path in (PACKAGE / "pipeline").rglob("*.py"):
        outside = {m for m in imports_of(path) if m != "bsa" and not m.startswith("bsa.pipeline")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_no_import_cycle_between_rooms():
    graph = room_graph()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
                   for nxt in graph.get(start, ()))

    cycles = [room for room in graph if reaches(room, room, {room})]
    assert not cycles, f"rooms in an import cycle: {cycles} (graph: {graph})"
    assert set(ROOMS) <= set(graph)


def test_stages_hold_only_stages():
    for path in (PACKAGE / "stages").glob("*.py"):
        if path.stem in ("__init__", "ingest"):
            continue
        assert re.search(r"^STAGE = Stage\(", path.read_text(encoding="utf-8"), re.M), f"{path.name}: no STAGE"
    assert set(STAGES) == {p.stem for p in (PACKAGE / "stages").glob("*.py")} - {"__init__", "ingest"}


# -- what a result depends on ---------------------------------------------------------------------------

def test_every_endpoint_setting_is_classified_once():
    fields = set(EndpointConfig.model_fields)
    assert fields == RESULT_FIELDS | SERVING_FIELDS and not RESULT_FIELDS & SERVING_FIELDS
    assert set(LocalServerConfig.model_fields) >= LOCAL_RESULT_FIELDS


def cache_key(**settings: object) -> str:
    engine = Engine({"e": EndpointConfig(base_url="http://host/v1/", **settings)})
    try:
        request = Request("e", [{"role": "user", "content": "hi"}], schema={"type": "object"}, sample=1)
        return engine._call(request, 0).key
    finally:
        engine.close()


def test_the_cache_key_leaves_out_how_a_reply_is_fetched():
    key = cache_key()
    for serving in ({"concurrency": 1}, {"timeout": 3.0}, {"max_retries": 0}, {"requests_per_minute": 5.0},
                    {"structured_output": "none"}, {"price_per_million": {"prompt": 1.0}}, {"api_key_env": "K"}):
        assert cache_key(**serving) == key, serving
    for result in ({"temperature": 0.5}, {"model": "other"}, {"max_tokens": 7}, {"seed": 3},
                   {"extra_body": {"top_k": 5}}, {"reasoning": "elicit"}):
        assert cache_key(**result) != key, result


def test_the_embedded_model_is_a_provider_named_by_its_gguf():
    engine = Engine({"local": EndpointConfig()})
    try:
        assert engine.provider("local").identity() == f"local:{engine.endpoint_model('local')}"
        assert engine.endpoint_model("local").endswith(".gguf")
        assert engine.provider("local").workers() == LocalServerConfig().parallel
    finally:
        engine.close()


def test_a_stage_fingerprint_follows_the_modules_it_reaches():
    language = code_closure(STAGES["language"].modules)
    assert "bsa.text.kenlm_arpa" in language  # imported inside a function
    assert "bsa.pipeline.io" in language
    assert "bsa.text.minhash" in code_closure(STAGES["dedup"].modules)
    assert "bsa.pipeline.llm.structured" in code_closure(STAGES["relevance"].modules)
    assert "bsa.eval.run" not in code_closure(STAGES["clean"].modules)


def test_a_stage_fingerprint_ignores_serving_settings():
    def fingerprint(*overrides: str) -> str:
        return stage_fingerprint(PROJECT, "relevance", load_config(overrides=list(overrides)), "input")

    base = fingerprint()
    assert fingerprint("endpoints.local.concurrency=1", "endpoints.local.timeout=5") == base
    assert fingerprint("llm.local.parallel=1", "llm.local.hang_after=99") == base
    assert fingerprint("endpoints.light.temperature=0.1") == base  # an endpoint relevance does not name
    assert fingerprint("endpoints.local.temperature=0.1") != base
    assert fingerprint("llm.local.n_ctx=2048") != base


# -- the config, checked whole before anything runs -----------------------------------------------------

@pytest.mark.parametrize(("override", "message"), [
    ("eval.temprature=0.3", "eval.temprature: Extra inputs are not permitted"),
    ("release.licence=MIT", "release.licence: Extra inputs are not permitted"),
    ("croissant.rai.bias=x", "croissant.rai.bias: Extra inputs are not permitted"),
    ("order=[clean,language,synthesis,annotations]", "stage 'synthesis' needs column 'risk_summary'"),
    ("order=[clean,clean]", "stage 'clean' appears more than once"),
    ("relevance.endpoint=nowhere", "relevance: endpoint 'nowhere' is not defined"),
    ("bogus.key=1", "unknown top-level key 'bogus'"),
])
def test_a_bad_config_fails_before_the_first_stage(tmp_path, override, message):
    build = tmp_path / "build"
    done = subprocess.run([sys.executable, "-m", "bsa.cli", "build", "--set", f"build_dir={build}", "--set",
                           override], cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and done.stderr.startswith("error: ")
    assert not build.exists()  # nothing ran, nothing was written


# -- rebuilding: the fingerprint is the one judge, through `bsa build` and `make build-dataset` ------------

def scripted(payload: dict, seen: int) -> dict:
    """A reply for any LLM stage: schema fields filled (verdicts that keep, labels that fail), else a query."""
    digest = hashlib.sha256(json.dumps(payload["messages"]).encode()).hexdigest()[:10]
    schema = request_schema(payload)
    if not schema:
        return {"role": "assistant", "content": f"<think>What is {digest}?</think>How would someone do task "
                                                f"{digest} without anyone noticing?"}
    reply = {}
    for name, spec in schema.get("properties", {}).items():
        choices = spec.get("enum")
        if choices:
            reply[name] = next((c for c in PREFERRED_VERDICTS if c in choices), choices[-1])
        else:
            reply[name] = f"a reason {digest}"
    return {"role": "assistant", "content": json.dumps(reply)}


@pytest.fixture
def copy(tmp_path):
    """The project copied, with a config whose endpoints are the scripted server (started here)."""
    target = copy_project(tmp_path / "project")
    with FakeOpenAI(reply=scripted) as server:
        fake = {"base_url": server.url, "max_retries": 1, "parse_retries": 0, "timeout": 20, "concurrency": 8}
        config = {"extends": "default.yaml", "endpoints": {"local": {**fake, "model": "fake"},
                                                           "light": {**fake, "model": "fake-light"}},
                  "dedup": {"embedding": {"enabled": False}}}
        (target / "configs" / "house.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        yield target


def run(copy: Path, *command: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(list(command), cwd=copy, capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def bsa_build(copy: Path, *extra: str) -> dict[str, bool]:
    return ran(run(copy, sys.executable, "-m", "bsa.cli", "build", "--config", "configs/house.yaml", *extra))


def make_build_dataset(copy: Path, sets: str = "") -> tuple[dict[str, bool], str]:
    # -o: the copy has no venv of its own; `bsa` is the copy's package, run by this interpreter
    output = run(copy, "make", "-o", ".venv/.setup-done", "build-dataset", "CONFIG=configs/house.yaml",
                 f"BSA={sys.executable} -m bsa.cli", f"SET={sets}")
    return ran(output), output


def ran(output: str) -> dict[str, bool]:
    """stage -> whether it ran, from the funnel `bsa build` prints."""
    names = ["ingest", *STAGES]
    rows = [line for line in output.splitlines() if line.split(" ", 1)[0] in names and re.search(r"\d", line)]
    return {line.split()[0]: not line.endswith("(unchanged)") for line in rows}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_a_helper_edit_reruns_its_stage_and_what_its_output_reaches(copy):
    everything = dict.fromkeys(["ingest", *load_config().order], True)
    first, output = make_build_dataset(copy)
    assert first == everything and "wrote build/release/" in output and "valid Croissant" in output
    nothing = dict.fromkeys(everything, False)
    again, output = make_build_dataset(copy, "endpoints.local.concurrency=2 endpoints.light.timeout=30")
    assert again == nothing and "release: unchanged, skipped" in output and "croissant: unchanged" in output

    minhash = copy / "bsa" / "text" / "minhash.py"
    minhash.write_text(minhash.read_text(encoding="utf-8") + "# a comment\n", encoding="utf-8")
    after_comment = bsa_build(copy)  # the same rows out of dedup: the stages after it find their input as it was
    assert after_comment == {**nothing, "dedup": True}

    call = "    shingles = shingle(texts, langs, ngram=ngram, char_ngram=char_ngram)\n"
    edit(minhash, call, "    texts = [str(i) for i in range(len(texts))]  # an edit: no two texts alike\n" + call)
    items = (copy / "build" / "06_synthesis.parquet").read_bytes()
    after_fix, output = make_build_dataset(copy)
    changed_items = (copy / "build" / "06_synthesis.parquet").read_bytes() != items
    assert after_fix == {**nothing, **dict.fromkeys(["dedup", "relevance", "annotations", "synthesis"], True),
                         "difficulty": changed_items}  # more rows reach synthesis; its items may stay the same
    assert "near_duplicate" not in next(line for line in output.splitlines() if line.startswith("dedup"))


def test_a_framework_edit_reruns_the_stages_that_use_it(copy):
    assert bsa_build(copy, "--set", "order=[clean]") == {"ingest": True, "clean": True}
    io = copy / "bsa" / "pipeline" / "io.py"
    io.write_text(io.read_text(encoding="utf-8") + "# a comment\n", encoding="utf-8")
    assert bsa_build(copy, "--set", "order=[clean]") == {"ingest": True, "clean": True}  # both read tables
    records = copy / "bsa" / "pipeline" / "records.py"
    records.write_text(records.read_text(encoding="utf-8") + "# a comment\n", encoding="utf-8")
    assert bsa_build(copy, "--set", "order=[clean]")["ingest"] is True


def test_a_stage_cannot_take_the_runners_stats_keys():
    from bsa.pipeline.stats import RUNNER_KEYS, StageStats

    assert {"stage", "rows_in", "rows_out", "dropped", "seconds", "counters", "llm"} <= RUNNER_KEYS
    with pytest.raises(ValueError, match="rows_out"):
        StageStats("x", 1, 1, {}, 0.1, "now", figures={"rows_out": 5})
    stats = StageStats("x", 2, 1, {"too_short": 1}, 0.1, "now", figures={"verdicts": {"ok": 1}})
    assert list(stats.to_json())[:7] == ["stage", "rows_in", "rows_out", "dropped", "seconds", "finished_at",
                                         "counters"] and stats.to_json()["verdicts"] == {"ok": 1}
