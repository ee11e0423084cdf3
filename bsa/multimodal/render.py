"""Typography images made offline, deterministically: a text rendered as a card in one of `LAYOUTS`.

- `numbered`: a FigStep-style white card holding the text and an empty list "1. 2. 3." to fill in;
- `label`: a card carrying one key phrase, large and centred, in a frame;
- `caption`: a band of text over a neutral grey background.

`make_spec` chooses the font (DejaVu Sans from matplotlib's package for Latin text, WenQuanYi Micro Hei for
Chinese) and the largest font size that fits, and returns a `RenderSpec`; `render(spec)` draws exactly that
spec, so the spec's JSON (fields.RENDER_SPEC: layout, text, font file name and its sha256, sizes, colours,
version) rebuilds the same PNG bytes. Text wraps by pixel width; Chinese breaks between any two characters
except before closing punctuation (no line starts with 。，、）》」...) and after opening punctuation.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import PIL
from PIL import Image, ImageDraw, ImageFont

from bsa.text.charclass import CJK, CJK_PUNCT

RENDER_VERSION = 1
LAYOUTS = ("numbered", "label", "caption")
# no line may start with these / end with these (Chinese line-breaking rules, plus their ASCII kin)
CLOSING = "。，、．：；！？）》」』】〕〉’”…—%,.:;!?)]}"
OPENING = "（《「『【〔〈‘“([{"


class FontMissing(RuntimeError):
    """The font a render needs is not installed (the message says how to install it)."""


@dataclass(frozen=True)
class Font:
    """A font file by name, where it is looked for, and how to get it when absent."""

    name: str
    places: tuple[str, ...]  # folders searched in order; "{matplotlib}" is matplotlib's bundled font folder
    install: str

    def path(self) -> Path:
        for place in self.places:
            candidate = Path(place.format(matplotlib=_matplotlib_fonts())) / self.name
            if candidate.is_file():
                return candidate
        raise FontMissing(f"font {self.name} not found (looked in {', '.join(self.places)}): {self.install}")


def _matplotlib_fonts() -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf")


FONTS = {
    "latin": Font("DejaVuSans.ttf", ("{matplotlib}", "/usr/share/fonts/truetype/dejavu"),
                  "it ships with matplotlib, a dependency of the project (pip install matplotlib)"),
    "cjk": Font("wqy-microhei.ttc", ("/usr/share/fonts/truetype/wqy",),
                "install Debian's fonts-wqy-microhei (sudo apt-get install -y fonts-wqy-microhei; .ci/run does)"),
}
_CJK_TEXT = re.compile(f"[{CJK}{CJK_PUNCT}]")
_UNITS = re.compile(f"\\n|[^\\S\\n]+|[{CJK}{CJK_PUNCT}{re.escape(CLOSING + OPENING)}]|[^\\s{CJK}{CJK_PUNCT}"
                    f"{re.escape(CLOSING + OPENING)}]+")


@dataclass(frozen=True)
class RenderSpec:
    """Everything a rendered image is drawn from; its JSON rebuilds the same bytes."""

    layout: str
    text: str
    font: str  # file name of the font (FONTS)
    font_sha256: str
    font_size: int
    width: int
    height: int
    foreground: str
    background: str
    band: str  # the caption band's colour (caption layout), the frame's (label layout)
    version: int = RENDER_VERSION
    engine: str = f"Pillow {PIL.__version__}"  # rasterisation may differ under another Pillow / FreeType

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RenderSpec:
        return cls(**json.loads(text))


STYLE = {  # layout -> size, colours, the largest and smallest font size tried
    "numbered": dict(width=760, height=760, foreground="#000000", background="#ffffff", band="#ffffff",
                     sizes=(56, 24)),
    "label": dict(width=760, height=420, foreground="#111111", background="#fafafa", band="#c0392b",
                  sizes=(96, 28)),
    "caption": dict(width=760, height=760, foreground="#ffffff", background="#9e9e9e", band="#202020",
                    sizes=(48, 22)),
}
MARGIN = 40
LINE_SPACING = 1.3
NUMBERED_ITEMS = ("1.", "2.", "3.")


def font_for(text: str, lang: str) -> Font:
    """The font for a text: the CJK font for Chinese (or any text holding CJK characters), else DejaVu Sans."""
    return FONTS["cjk" if lang.lower().startswith(("zh", "ja")) or _CJK_TEXT.search(text) else "latin"]


@lru_cache(maxsize=8)
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=64)
def _truetype(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """`text` in lines no wider than `width` pixels (a word wider than a line is split by character).

    Breaks fall at spaces and between CJK characters, never before closing punctuation nor after opening
    punctuation (the character before is carried to the next line with it); newlines are kept.
    """
    groups: list[tuple[str, bool]] = []  # (unbreakable text, preceded by a space)
    space = glue = False
    for unit in _UNITS.findall(text):
        if unit == "\n":
            groups.append(("\n", False))
            space = glue = False
        elif unit.isspace():
            space = True
        elif groups and groups[-1][0] != "\n" and (unit in CLOSING or not space and (glue or _latin_run(groups, unit))):
            groups[-1] = (groups[-1][0] + (" " if space else "") + unit, groups[-1][1])
            space, glue = False, unit in OPENING
        else:
            groups.append((unit, space))
            space, glue = False, unit in OPENING
    lines, line = [], ""
    for group, spaced in groups:
        if group == "\n":
            lines.append(line)
            line = ""
            continue
        candidate = f"{line} {group}" if line and spaced else line + group
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = group
        while font.getlength(line) > width and len(line) > 1:  # one group wider than a line: split it
            cut = max(1, next(i for i in range(len(line), 0, -1) if font.getlength(line[:i]) <= width or i == 1))
            lines.append(line[:cut])
            line = line[cut:]
    lines.append(line)
    return lines


def _latin_run(groups: list[tuple[str, bool]], unit: str) -> bool:
    """Two non-CJK runs with no space between them (a word split around punctuation) stay one group."""
    return not _CJK_TEXT.match(unit) and not _CJK_TEXT.search(groups[-1][0][-1:])


def _lines(spec: RenderSpec, font: ImageFont.FreeTypeFont) -> list[str]:
    width = spec.width - 2 * MARGIN - (2 * MARGIN if spec.layout == "label" else 0)
    lines = wrap(spec.text, font, width)
    return [*lines, *NUMBERED_ITEMS] if spec.layout == "numbered" else lines


def _text_height(lines: list[str], size: int) -> int:
    return round(len(lines) * size * LINE_SPACING)


def _fits(spec: RenderSpec, font: ImageFont.FreeTypeFont) -> bool:
    lines = _lines(spec, font)
    room = {"numbered": spec.height - 2 * MARGIN, "label": spec.height - 4 * MARGIN,
            "caption": spec.height // 2 - 2 * MARGIN}[spec.layout]
    return _text_height(lines, spec.font_size) <= room


def make_spec(text: str, layout: str, lang: str = "en") -> RenderSpec:
    """The spec of `text` in `layout`: its font, and the largest font size (in steps of 2) whose lines fit."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout '{layout}' (known: {', '.join(LAYOUTS)})")
    font = font_for(text, lang)
    path = font.path()
    style = dict(STYLE[layout])
    largest, smallest = style.pop("sizes")
    spec = RenderSpec(layout=layout, text=text.strip(), font=font.name, font_sha256=_sha256(path),
                      font_size=largest, **style)
    for size in range(largest, smallest - 1, -2):
        spec = RenderSpec(**{**asdict(spec), "font_size": size})
        if _fits(spec, _truetype(path, size)):
            break
    return spec


def render(spec: RenderSpec) -> bytes:
    """The PNG bytes of a spec; the same spec (font file included, checked by its sha256) gives the same bytes."""
    font_def = next((f for f in FONTS.values() if f.name == spec.font), None)
    if font_def is None:
        raise FontMissing(f"font {spec.font} of the render spec is not one of {', '.join(f.name for f in FONTS.values())}")
    path = font_def.path()
    if _sha256(path) != spec.font_sha256:
        raise FontMissing(f"font {path} is not the file the spec was made with (sha256 {_sha256(path)[:12]}, "
                          f"spec {spec.font_sha256[:12]}): the image would not be the same")
    font = _truetype(path, spec.font_size)
    image = Image.new("RGB", (spec.width, spec.height), spec.background)
    draw = ImageDraw.Draw(image)
    lines = _lines(spec, font)
    step = round(spec.font_size * LINE_SPACING)
    if spec.layout == "numbered":
        x, y = MARGIN, MARGIN
    elif spec.layout == "label":
        draw.rectangle((MARGIN // 2, MARGIN // 2, spec.width - MARGIN // 2, spec.height - MARGIN // 2),
                       outline=spec.band, width=8)
        x, y = None, (spec.height - _text_height(lines, spec.font_size)) // 2
    else:
        band_height = _text_height(lines, spec.font_size) + 2 * MARGIN
        draw.rectangle((0, spec.height - band_height, spec.width, spec.height), fill=spec.band)
        x, y = MARGIN, spec.height - band_height + MARGIN
    for line in lines:
        left = x if x is not None else round((spec.width - font.getlength(line)) / 2)
        draw.text((left, y), line, font=font, fill=spec.foreground)
        y += step
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=9)  # Pillow writes no timestamp into a PNG
    return out.getvalue()


def render_json(spec_json: str) -> bytes:
    """The PNG bytes rebuilt from a recorded fields.RENDER_SPEC."""
    return render(RenderSpec.from_json(spec_json))
