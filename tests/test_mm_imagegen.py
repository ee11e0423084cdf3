"""Pictures from an image generator endpoint in multimodal synthesis (issue #14): the pairs of `image_kinds` get
a generated picture instead of a card, through the LLM engine (cached, retried, recorded), checked like an
ingested image, saved in the build with its prompt; failures are rejects with their reason, a dead endpoint
stops the run."""

from __future__ import annotations

import base64
import hashlib
import io
import socket
from pathlib import Path

import pytest
from PIL import Image

from bsa.multimodal import fields as mm
from bsa.pipeline.config import EndpointConfig
from bsa.pipeline.errors import ConfigError, EndpointDown
from bsa.pipeline.llm import Engine, image_request
from bsa.stages.synthesis import IMAGE_PROMPT
from tests.fake_openai import FakeOpenAI, drawn_png
from tests.llm_stage_support import endpoint, stage_context
from tests.test_mm_synthesis import PAIRS, USB, cjk_font, pool, writer

DRAWN = ("SIRT", "SIST", "benign")  # the default image_kinds


def run(tmp_path: Path, server: FakeOpenAI, image_endpoint: EndpointConfig | None = None, **options):
    from bsa.pipeline.executor import run_local
    from bsa.stages import synthesis

    endpoints = {"gen": endpoint(server, "fake-gen"), "check": endpoint(server, "fake-check"),
                 "draw": image_endpoint or endpoint(server, "fake-image", backoff_base=0.01)}
    with stage_context(tmp_path, "synthesis", endpoints) as ctx:
        ctx.taxonomy = USB
        config = synthesis.Config(generator="gen", checker="check", image_generator="draw",
                                  pairs=options.pop("pairs", PAIRS), seed_languages=None, **options)
        return run_local(synthesis.STAGE, pool(), config, ctx), ctx


def image_payloads(server: FakeOpenAI) -> list[dict]:
    return [p for p in server.payloads if "prompt" in p and "messages" not in p]


@pytest.fixture
def server():
    with FakeOpenAI(reply=writer) as fake:
        yield fake


def test_pictures_reach_the_items_checked_hashed_saved_and_a_rebuild_sends_nothing(tmp_path, server):
    cjk_font()
    result, ctx = run(tmp_path, server)
    kept = result.kept
    assert result.rejected.empty and kept[mm.COMBINATION].value_counts().to_dict() == PAIRS
    drawn = kept[kept[mm.COMBINATION].isin(DRAWN)]
    cards = kept[~kept[mm.COMBINATION].isin(DRAWN)]
    assert set(cards[mm.IMAGE_STYLE]) == {"typography"} and cards[IMAGE_PROMPT].isna().all()
    assert set(drawn[mm.IMAGE_STYLE]) == {"synthetic"} and drawn[mm.RENDER_SPEC].isna().all()
    assert set(drawn[mm.IMAGE_SOURCE]) == {"generated: draw (fake-image)"}
    sent = image_payloads(server)
    assert len(sent) == len(drawn) == ctx.counters["pictures_generated"]
    assert all(p["model"] == "fake-image" and p["size"] == "512x512" and p["n"] == 1
               and p["response_format"] == "b64_json" and "max_tokens" not in p for p in sent)
    for item in drawn.to_dict("records"):
        data = Path(item[mm.IMAGE]).read_bytes()
        assert Path(item[mm.IMAGE]).parent == ctx.config.build_path / "images"
        assert hashlib.sha256(data).hexdigest() == item[mm.IMAGE_SHA256]
        assert data == drawn_png(item[IMAGE_PROMPT], "512x512")  # the picture the server drew for its prompt
        assert item[mm.IMAGE_DESCRIPTION] in item[IMAGE_PROMPT]
        chinese = item["lang"] == "zh"
        assert ("照片" in item[IMAGE_PROMPT]) == chinese and ("photograph" in item[IMAGE_PROMPT]) != chinese
    # the checker cannot see the picture: it reads the description the picture was drawn from
    checks = [str(p["messages"][-1]["content"]) for p in server.payloads
              if p.get("model") == "fake-check"]
    assert sum("a card SIST" in text for text in checks) == PAIRS["SIST"]
    before = len(server.payloads)
    again, _ = run(tmp_path, server)  # the same cache: every reply, pictures included, comes from it
    assert len(server.payloads) == before
    assert list(again.kept[mm.IMAGE_SHA256]) == list(kept[mm.IMAGE_SHA256])


def test_a_generation_that_keeps_failing_is_retried_then_rejected_with_its_reason(tmp_path):
    cjk_font()

    def fail_pictures(payload: dict, seen: int) -> str | None:
        return "500" if "messages" not in payload else None

    with FakeOpenAI(reply=writer, faults=fail_pictures) as server:
        result, _ = run(tmp_path, server, pairs={"SIST": 1, "RIST": 1})
        prompts = [p["prompt"] for p in image_payloads(server)]
    assert list(result.kept[mm.COMBINATION]) == ["RIST"]  # the card kind is untouched
    failed = result.rejected
    assert list(failed["reject_reason"]) == ["generation_failed"]
    assert failed["reject_detail"].iloc[0].startswith("image generator 'draw': http_5")
    assert len(prompts) == 2 and len(set(prompts)) == 1  # max_retries 1: sent twice


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (9, 9, 9)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("picture", "reason", "detail"), [
    (b"<html>not an image</html>", "generation_failed", "image generator 'draw': unparsable: not an image"),
    (png((8, 8)), "image_too_small", "image from 'draw': 8x8, a side shorter than 16"),
])
def test_a_reply_that_is_no_usable_image_is_rejected_with_its_reason(tmp_path, picture, reason, detail):
    cjk_font()
    with FakeOpenAI(reply=writer, image=lambda payload, seen: picture) as server:
        result, _ = run(tmp_path, server, pairs={"benign": 1})
        arrivals = len(image_payloads(server))
    assert result.kept.empty
    assert list(result.rejected["reject_reason"]) == [reason]
    assert result.rejected["reject_detail"].iloc[0].startswith(detail)
    assert arrivals == (2 if reason == "generation_failed" else 1)  # bytes that are no image: asked again


def test_an_unreachable_image_endpoint_stops_the_run_naming_it(tmp_path, server):
    cjk_font()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dead = EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1", model="fake-image", max_retries=3,
                          backoff_base=0.01, down_after=0)
    with pytest.raises(EndpointDown, match=r"endpoint 'draw' .*model 'fake-image'.* is down: connections are refused"):
        run(tmp_path, server, dead, pairs={"SIST": 1})


def test_the_embedded_model_is_no_image_generator():
    with Engine({"local": EndpointConfig()}) as engine, pytest.raises(ConfigError, match="generates no images"):
        engine.run([image_request("local", "a cat", "64x64")])


def test_an_image_reply_is_cached_by_its_request(tmp_path, server):
    engine_endpoints = {"draw": endpoint(server, "fake-image")}
    for _ in range(2):
        with Engine(engine_endpoints, tmp_path / "cache.sqlite") as engine:
            [response] = engine.run([image_request("draw", "a red kite", "64x64")])
        assert response.ok and base64.b64decode(response.content) == drawn_png("a red kite", "64x64")
    assert server.received["a red kite"] == 1


def test_a_failed_image_reply_is_recorded_clipped(tmp_path):
    """A generator that answers with a large page instead of an image: the failure is logged with its error
    and the start of the reply, not the whole base64 body."""
    page = b"<html>" + b"x" * 200_000
    with FakeOpenAI(reply=writer, image=lambda payload, seen: page) as server, \
            Engine({"draw": endpoint(server, "fake-image")}, tmp_path / "cache.sqlite") as engine:
        [response] = engine.run([image_request("draw", "a red kite", "64x64")])
        [failure] = engine.cache.failures()
    assert not response.ok and response.error.startswith("unparsable: not an image")
    assert failure["error"].startswith("unparsable: not an image")
    assert failure["raw"] == base64.b64encode(page).decode()[:2000]
