"""`make build-dataset CONFIG=configs/multimodal.yaml` end to end (issue #14), every LLM role on the scripted
server: from the demo pool (photos and rendered cards, English and Chinese) to a release holding the four
combinations and a benign set, whose Croissant metadata validates and loads every record with its image."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlcroissant as mlc
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from bsa.multimodal import fields as mm
from bsa.multimodal.coverage import KINDS
from bsa.multimodal.render import FONTS, FontMissing
from bsa.release.croissant.build import IMAGE_CONTENT, RECORD_SET
from bsa.release.croissant.validate import quiet_mlcroissant, validate_release
from tests.fake_openai import FakeOpenAI
from tests.llm_stage_support import copy_project
from tests.test_croissant import offline  # noqa: F401 - autouse: the network is cut
from tests.test_mm_synthesis import writer


@pytest.fixture
def project(tmp_path, request):
    """The project copied, with a config extending configs/multimodal.yaml whose endpoints are the scripted
    server (started here); `request.param` (indirect) adds endpoints and synthesis settings."""
    extra = getattr(request, "param", {})
    try:
        FONTS["cjk"].path()
    except FontMissing as err:
        pytest.skip(f"no CJK font here: {err}")
    target = copy_project(tmp_path / "project")
    with FakeOpenAI(reply=writer) as server:
        fake = {"base_url": server.url, "max_retries": 1, "parse_retries": 0, "timeout": 20, "concurrency": 8}
        config = {"extends": "multimodal.yaml", "endpoints": {"local": {**fake, "model": "fake"},
                                                              "light": {**fake, "model": "fake-light"},
                                                              **{name: {**fake, "model": model} for name, model
                                                                 in extra.get("endpoints", {}).items()}},
                  "dedup": {"embedding": {"enabled": False}},
                  "synthesis": {"on_check_failure": "reject", "check_script": True, **extra.get("synthesis", {})}}
        (target / "configs" / "house-mm.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        yield target


def build_release(project) -> tuple:
    """`make build-dataset` on the test config: the release folder and its table."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MAKEFLAGS", "MFLAGS")}
    done = subprocess.run(["make", "-o", ".venv/.setup-done", "build-dataset", "CONFIG=configs/house-mm.yaml",
                           f"BSA={sys.executable} -m bsa.cli"], cwd=project, capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    out = project / "build-mm" / "release"
    return out, pd.read_csv(out / "benchmark.csv", keep_default_na=False)


def assert_croissant_loads_every_image(out, table: pd.DataFrame) -> None:
    report = validate_release(out)
    assert report.ok, report.summary()
    assert report.records == len(table) and report.images == len(table)
    with quiet_mlcroissant():
        records = list(mlc.Dataset(out / "croissant.json").records(RECORD_SET))
    assert [r[f"{RECORD_SET}/id"].decode() for r in records] == list(table["id"])
    for record, name in zip(records, table[mm.IMAGE], strict=True):
        with Image.open(out / name) as original:
            assert np.array_equal(np.asarray(record[f"{RECORD_SET}/{IMAGE_CONTENT}"]),
                                  np.asarray(original.convert("RGB")))


def test_the_demo_config_builds_a_release_of_every_combination_whose_croissant_loads_each_image(project):
    out, table = build_release(project)
    assert set(table[mm.COMBINATION]) == set(KINDS)  # the four combinations and the benign set
    assert set(table["lang"]) == {"en", "zh"}
    assert set(table[mm.IMAGE_STYLE]) == {"realistic", "typography"}  # the pool's photos kept, cards rendered
    full = pd.read_json(out / "benchmark.jsonl", lines=True)
    written = full[full["source"] == "synthesis"]
    assert set(written[mm.COMBINATION]) == set(KINDS) and set(written[mm.IMAGE_STYLE]) == {"typography"}
    assert set(full.loc[full["source"] != "synthesis", "source"]) == {"mm-photos", "mm-cards"}
    stats = json.loads(next((project / "build-mm").glob("*_synthesis.stats.json")).read_text(encoding="utf-8"))
    assert stats["planned"]["RIST"] == {"wanted": 2, "planned": 2} and stats["seeds"]["kept_as_items"] > 0
    assert sum(stats["kept_by_combination"].values()) == len(table)
    assert stats["coverage"]["cells"] == 3 * 5 * 2 and stats["coverage"]["empty_cells"] > 0
    difficulty = json.loads(next((project / "build-mm").glob("*_difficulty.stats.json")).read_text(encoding="utf-8"))
    assert difficulty["counters"]["skipped_no_vision_model"] == len(table)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "### Coverage" in card and "Rendered cards" in card
    assert "| Public Safety | zh |" in card
    assert_croissant_loads_every_image(out, table)


@pytest.mark.parametrize("project", [{"endpoints": {"draw": "fake-image"},
                                      "synthesis": {"image_generator": "draw", "image_size": "96x64"}}],
                         indirect=True)
def test_generated_pictures_reach_the_release_and_its_croissant(project):
    out, table = build_release(project)
    full = pd.read_json(out / "benchmark.jsonl", lines=True)
    written = full[full["source"] == "synthesis"]
    drawn = written[written[mm.COMBINATION].isin(["SIRT", "SIST", "benign"])]
    assert len(drawn) and set(drawn[mm.IMAGE_STYLE]) == {"synthetic"}
    assert set(drawn[mm.IMAGE_SOURCE]) == {"generated: draw (fake-image)"}
    assert drawn["image_prompt"].str.contains("photograph|照片").all()
    assert set(written.loc[~written.index.isin(drawn.index), mm.IMAGE_STYLE]) == {"typography"}
    for item in drawn.to_dict("records"):
        with Image.open(out / item[mm.IMAGE]) as picture:
            assert picture.size == (96, 64)
    assert_croissant_loads_every_image(out, table)
