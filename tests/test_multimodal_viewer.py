"""samples.html of a multimodal run (bsa.multimodal.viewer) in real headless Chromium: each item's image shown
beside its text (embedded, or linked relative to the page), the multimodal fields, the text-only notice, and
hostile text from the model, the benchmark and the judge shown as text."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bsa.cli import main
from bsa.multimodal import viewer
from bsa.multimodal.evaluate import MODEL_BLIND
from bsa.pipeline.io import read_table
from tests import test_viewer
from tests.mm_support import write_benchmark
from tests.test_multimodal_eval import E2E_ITEMS, VisionScript, _config
from tests.test_viewer import BOLD, IMG_XSS, SCRIPT_XSS, embedded_data

browser, opened = test_viewer.browser, test_viewer.opened  # the text viewer's fixtures: Chromium, a checked page


def _run(root: Path, model_vision: bool) -> Path:
    from tests.fake_openai import FakeOpenAI

    dataset = write_benchmark(root / "bench", E2E_ITEMS)
    with FakeOpenAI(reply=VisionScript(root / "bench")) as server:
        config = _config(root, server.url, model_vision=model_vision)
        assert main(["eval", "--model", "vlm", "--judge-model", "judge", "--dataset", str(dataset), "--k", "2",
                     "--output-dir", str(root / "results"), "--config", str(config.config_path)]) == 0
    return root / "results" / ("vlm" if model_vision else "vlm__text-only")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A vision run and a text-only fallback run on the scripted server (8 items, k=2)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MM_KEY", "sk-test")
    try:
        return {"vision": _run(tmp_path_factory.mktemp("mm-vision"), True),
                "text-only": _run(tmp_path_factory.mktemp("mm-blind"), False)}
    finally:
        patch.undo()


def _open_all(page) -> None:
    for item in page.locator("details.item > summary").all():
        item.click()
    test_viewer.wait_for_images(page)


def _images(page) -> list[list]:
    return page.eval_on_selector_all("img.image", "nodes => nodes.map(n => [n.getAttribute('src'), n.naturalWidth])")


def test_each_item_shows_its_image_and_fields(runs, opened, tmp_path):
    run = runs["vision"]
    data = embedded_data((run / "samples.html").read_text())
    assert [item["id"] for item in data["items"]] == [item[0] for item in E2E_ITEMS]
    page = opened(run / "samples.html")
    assert page.locator("#blind").is_hidden()
    assert page.locator("details.item").count() == len(E2E_ITEMS)
    page.screenshot(path=str(tmp_path / "mm-rows.png"))
    _open_all(page)
    images = _images(page)
    assert len(images) == len(E2E_ITEMS) and all(src.startswith("data:image/png;base64,") and width > 0
                                                  for src, width in images)
    first = page.locator("details.item[data-id='rist-1']")
    first.locator("details.sample > summary").first.click()
    text = first.inner_text().lower()  # field names are styled upper case
    assert "rist (risky image, safe text)" in text and "public safety / hazardous & controlled materials" in text
    assert "text printed on the image\nhomemade explosive" in text
    assert "vulnerability (usb code)" in text and "unsafe (3)" in text and "labelled by rule" in text
    first.scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "mm-item.png"), full_page=False)
    page.select_option("#f-combination", "benign")
    shown = page.eval_on_selector_all("details.item:not([hidden])", "nodes => nodes.map(n => n.dataset.id)")
    assert shown == ["benign-1", "benign-2"]
    page.select_option("#f-combination", "")
    page.select_option("#f-verdict", "refused-any")
    assert page.eval_on_selector_all("details.item:not([hidden])", "n => n.map(x => x.dataset.id)") == ["benign-2"]


def test_large_runs_link_the_benchmark_images_relative_to_the_page(runs, opened, monkeypatch):
    run = runs["vision"]
    monkeypatch.setattr(viewer, "EMBED_LIMIT", 0)
    assert main(["viewer", str(run)]) == 0  # `bsa viewer RUN` rewrites a multimodal run's page
    page = opened(run / "samples.html")
    _open_all(page)
    images = _images(page)
    assert [src for src, _ in images] == [f"../../bench/images/{item[0]}.png" for item in E2E_ITEMS]
    assert all(width > 0 for _, width in images)


def test_a_text_only_run_says_so_first(runs, opened, tmp_path):
    page = opened(runs["text-only"] / "samples.html")
    assert page.locator("header > *").first.inner_text() == MODEL_BLIND
    assert page.locator("#blind").is_visible() and "read each image in words" in page.inner_text("#run-line")
    page.screenshot(path=str(tmp_path / "mm-text-only.png"))


def test_hostile_text_and_image_paths_stay_inert(runs, opened, tmp_path):
    run = runs["vision"]
    samples, _ = read_table(run / "samples.jsonl")
    metrics = json.loads((run / "metrics.json").read_text())
    hostile = samples.assign(text=IMG_XSS, answer=SCRIPT_XSS, reasoning=BOLD, vulnerability_reason=IMG_XSS,
                             image_description=SCRIPT_XSS, category_l1=BOLD)
    hostile.loc[hostile["id"] == "rirt-1", "image"] = "javascript:alert(1)"
    out = tmp_path / "hostile"
    out.mkdir()
    metrics = {**metrics, "model": SCRIPT_XSS, "run": {**metrics["run"], "judge": IMG_XSS}}
    page = opened(viewer.write_mm_samples_page(pd.DataFrame(hostile), metrics, out))
    _open_all(page)
    assert page.evaluate("document.querySelectorAll('main b, main script, main img:not(.image):not(.thumb)').length") == 0
    assert page.inner_text("#title") == f"Samples: {SCRIPT_XSS}"
    item = page.locator("details.item[data-id='rirt-1']").inner_text()
    assert IMG_XSS in item and SCRIPT_XSS in item and BOLD in item
    assert "(image not found: javascript:alert(1))" in item  # not a file beside the benchmark: no image
    assert len(_images(page)) == len(E2E_ITEMS) - 1


def test_images_are_embedded_up_to_the_limit_then_linked(tmp_path):
    from tests.mm_support import draw_png

    (tmp_path / "bench" / "my images").mkdir(parents=True)
    paths = {"a": tmp_path / "bench" / "my images" / "a#1.png", "b": tmp_path / "bench" / "absent.png"}
    paths["a"].write_bytes(draw_png(1))
    out = tmp_path / "results" / "run"
    embedded = viewer.image_sources(paths, out)
    assert embedded["a"].startswith("data:image/png;base64,") and embedded["b"] == ""
    linked = viewer.image_sources(paths, out, limit=10)
    assert linked == {"a": "../../bench/my%20images/a%231.png", "b": ""}
