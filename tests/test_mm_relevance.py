"""Stage 'relevance' on image items against the scripted server: three ratings, the image seen or described."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest

from bsa.multimodal import fields as mm
from bsa.multimodal.render import make_spec, render_json
from bsa.pipeline.executor import run_local
from bsa.stages import relevance as stage
from tests.fake_openai import FakeOpenAI, images_of, prompt_of
from tests.llm_stage_support import endpoint, records, reply, stage_context
from tests.mm_support import draw_png

# text marker -> (text_harm, image_harm, pair_harm)
CASES = {"RIRT": (True, True, True), "RIST": (False, True, True), "SIRT": (True, False, True),
         "SIST": (False, False, True), "BENIGN": (False, False, False)}


def judge(payload: dict, seen: int) -> dict:
    text = prompt_of(payload)
    if "GARBAGE" in text:
        return reply("not json {")
    marker = next(m for m in CASES if f"Text: {m}" in text)
    harms = dict(zip(stage.HARMS, CASES[marker], strict=True))
    return reply({**harms, "reason": f"scripted {marker}"})


def rows(tmp_path) -> pd.DataFrame:
    out = []
    for seed, marker in enumerate([*CASES, "GARBAGE", "NOWORDS"]):
        path = tmp_path / f"{seed}.png"
        path.write_bytes(draw_png(seed))
        out.append({"text": f"{marker} item", "category": None, "subcategory": None, "is_risky": None,
                    mm.IMAGE: str(path), mm.IMAGE_SHA256: hashlib.sha256(path.read_bytes()).hexdigest(),
                    mm.IMAGE_DESCRIPTION: None if marker == "NOWORDS" else f"picture number {seed}",
                    mm.RENDER_SPEC: None, mm.IMG_RISK: 1 if marker == "RIRT" else 0,
                    mm.TEXT_RISK: 1 if marker == "RIRT" else 0})
    spec = make_spec("CARD WORDS", "label").to_json()  # a rendered typography card: no file, its spec
    out.append({"text": "SIST card", "category": None, "subcategory": None, "is_risky": None, mm.IMAGE: None,
                mm.IMAGE_SHA256: hashlib.sha256(render_json(spec)).hexdigest(), mm.IMAGE_DESCRIPTION: None,
                mm.RENDER_SPEC: spec, mm.IMG_RISK: 0, mm.TEXT_RISK: 0})
    return records(out)


@pytest.fixture
def server():
    with FakeOpenAI(reply=judge) as fake:
        yield fake


def run(tmp_path, server, vision: bool):
    with stage_context(tmp_path, "relevance", {"judge": endpoint(server, "fake-judge", vision=vision)}) as ctx:
        return run_local(stage.STAGE, rows(tmp_path), stage.Config(endpoint="judge"), ctx), ctx


def by_marker(frame: pd.DataFrame, column: str) -> dict:
    return dict(zip(frame["text"].str.split(" ").str[0], frame[column], strict=True))


@pytest.mark.parametrize("vision", [True, False])
def test_combinations_ratings_and_rejects(tmp_path, server, vision):
    result, ctx = run(tmp_path, server, vision)
    combos = by_marker(result.kept, stage.MM_COMBINATION)
    assert {m: combos[m] for m in CASES} == {"RIRT": "RIRT", "RIST": "RIST", "SIRT": "SIRT", "SIST": "SIST",
                                             "BENIGN": "benign"}
    assert by_marker(result.kept, "image_harm")["RIST"] is True
    assert by_marker(result.kept, stage.REASON)["SIST"] == "scripted SIST"
    assert set(result.kept[stage.IMAGE_SEEN]) == {vision}
    assert result.stats[stage.IMAGE_SEEN] is vision
    # a malformed reply is retried (parse_retries), then recorded as failed, never dropped
    assert by_marker(result.kept, stage.VERDICT)["GARBAGE"] == "judge_failed"
    assert sum("GARBAGE" in prompt_of(p) for p in server.payloads) >= 2
    # labels the judge contradicts are flagged: RIST/SIRT/... rows are labelled 0/0 here
    disagrees = by_marker(result.kept, stage.DISAGREES)
    assert json.loads(disagrees["RIST"]) == [mm.IMG_RISK] and disagrees["RIRT"] is None
    assert disagrees["BENIGN"] is None
    rejected = by_marker(result.rejected, "reject_reason")
    if vision:
        assert "NOWORDS" in combos and not rejected
    else:
        assert rejected == {"NOWORDS": stage.UNREADABLE}


def test_vision_server_receives_the_items_image(tmp_path, server):
    run(tmp_path, server, vision=True)
    frame = rows(tmp_path)
    expected = dict(zip(frame["text"], frame[mm.IMAGE_SHA256], strict=True))
    checked = 0
    for payload in server.payloads:
        text = prompt_of(payload).split("Text: ")[-1].split("\n")[0]
        (image,) = images_of(payload)
        assert hashlib.sha256(image).hexdigest() == expected[text]
        assert "picture number" not in prompt_of(payload) and "CARD WORDS" not in prompt_of(payload)
        checked += 1
    assert checked >= len(CASES) + 1  # the rendered card too, rebuilt from its spec


def test_text_endpoint_reads_the_description(tmp_path, server):
    run(tmp_path, server, vision=False)
    for payload in server.payloads:
        assert images_of(payload) == []
        words = "CARD WORDS" if "SIST card" in prompt_of(payload) else "picture number"
        assert words in prompt_of(payload)


def test_cache_key_differs_between_seeing_and_describing(tmp_path, server):
    run(tmp_path, server, vision=True)
    first = len(server.payloads)
    run(tmp_path, server, vision=True)  # cached: nothing new asked (but the failing reply)
    again = len(server.payloads) - first
    run(tmp_path, server, vision=False)  # a described request is a different request
    assert len(server.payloads) - first - again >= len(CASES)
