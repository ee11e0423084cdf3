"""Images in OpenAI-format chat messages: a user message whose `content` is a list of parts, the image as
a `data:` URL (`{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`) before the text
(`{"type": "text", "text": ...}`). OpenAI, vLLM, llama.cpp's server with a projector (`--mmproj`) and
Ollama's `/v1` accept this form; the MIME type is read from the bytes, never from the file name.
"""

from __future__ import annotations

import base64
import io
from typing import Any

# Pillow's format name -> the MIME type a data URL of it carries
MIME_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


def image_mime(data: bytes) -> str:
    """The MIME type of an image's bytes (ValueError when Pillow cannot read them or the format is not one
    of MIME_TYPES)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            fmt = image.format
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"not a readable image ({err})") from err
    if fmt not in MIME_TYPES:
        raise ValueError(f"image format {fmt} is not one of {', '.join(MIME_TYPES)}")
    return MIME_TYPES[fmt]


def data_url(data: bytes, mime: str) -> str:
    """`data:<mime>;base64,<bytes>`."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_content(text: str, url: str) -> list[dict[str, Any]]:
    """A user message's content: the image part, then the text part."""
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]


def attach_image(messages: list[dict[str, Any]], url: str) -> list[dict[str, Any]]:
    """The messages with the image put before the text of the last user message."""
    last = max(index for index, message in enumerate(messages) if message["role"] == "user")
    return [{**message, "content": image_content(message["content"], url)} if index == last else message
            for index, message in enumerate(messages)]
