"""The three-way harm rating of an image + text pair (text, image and pair harm apart), shared by the relevance
judge (is a seed what its labels say?) and synthesis's quality check (is a written item the intended combination?).

An endpoint marked `vision: true` gets the image attached as a `data:` URL (a rendered card rebuilt from its
render spec); any other reads the image's description or rendered text, and the prompt says so (the notes
`prompts/<lang>/mm_image_*.md` the eval judges use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bsa.multimodal import fields
from bsa.multimodal.benchmark import image_in_words
from bsa.multimodal.judges import ATTACHED, IMAGE_NOTES
from bsa.multimodal.messages import attach_image, data_url, image_mime
from bsa.multimodal.render import render_json
from bsa.pipeline.llm import Request, Response
from bsa.pipeline.prompts import PromptLoader
from bsa.pipeline.verdicts import REASON_CHARS, clip

HARMS = ("text_harm", "image_harm", "pair_harm")


def row_image(row: dict[str, Any]) -> bytes:
    """A row's image: its file, or the typography card rebuilt from its render spec."""
    path = row.get(fields.IMAGE)
    return Path(path).read_bytes() if isinstance(path, str) and path else render_json(row[fields.RENDER_SPEC])


def row_image_url(row: dict[str, Any]) -> str:
    """A row's image as a data URL."""
    data = row_image(row)
    return data_url(data, image_mime(data))


def harm_request(row: dict[str, Any], endpoint: str, vision: bool, prompts: PromptLoader, prompt_name: str,
                 params: dict[str, Any], tag: str, lang: str | None = None) -> Request | None:
    """The three-rating request of an image row (prompts in `lang`, else the loader's); None when a text-only
    endpoint could not read the image (no description, no render spec)."""
    if vision:
        note = prompts.load(IMAGE_NOTES[ATTACHED], lang).render()
    else:
        words = image_in_words(row)
        if words is None:
            return None
        note = prompts.load(IMAGE_NOTES[words[0]], lang).render(description=words[1])
    prompt = prompts.load(prompt_name, lang)
    messages = prompt.render(text=row["text"], image_note=note[0]["content"])
    if vision:
        messages = attach_image(messages, row_image_url(row))
    return Request(endpoint, messages, schema=prompt.schema, tag=tag, params=dict(params))


def read_harms(response: Response) -> tuple[dict[str, bool] | None, str]:
    """The three ratings and the reason of a reply; (None, why) when it never parsed into them."""
    parsed = response.parsed if response.ok else None
    if not isinstance(parsed, dict):
        return None, clip(response.error or "reply did not parse", REASON_CHARS)
    if not all(isinstance(parsed.get(key), bool) for key in HARMS):
        return None, f"reply lacks a true/false for each of {list(HARMS)}"
    return {key: parsed[key] for key in HARMS}, clip(parsed.get("reason", ""), REASON_CHARS)


def judged_combination(ratings: dict[str, bool]) -> str:
    """The combination three ratings give (a pair with a harmful part is harmful; none harmful: benign)."""
    return fields.combination(ratings["image_harm"], ratings["text_harm"],
                              ratings["pair_harm"] or ratings["image_harm"] or ratings["text_harm"])
