"""Image items in the release: the rows checked as `bsa eval` reads them, and each image written once beside the
table, named by its content (`images/<sha256>.<ext>`: identical images are one file).

A release is multimodal when its candidates carry the fields.IMAGE column (image + text pairs, USB-style,
bsa.multimodal.fields). The image of a row is the file at its `image` path (as ingest wrote it: absolute or
relative to the working directory), else the typography its `render_spec` rebuilds exactly. In the release the
`image` column holds the file's path relative to the table and `image_sha256` its hash; a missing file, an
unreadable one, or bytes whose sha256 is not the recorded one stop the release naming the file, row and field.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bsa.multimodal import fields as mm
from bsa.multimodal.images import FORMATS
from bsa.multimodal.messages import image_mime
from bsa.multimodal.render import FontMissing, render_json
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import atomic_path, file_sha256
from bsa.pipeline.taxonomy import Taxonomy

IMAGES_DIR = "images"  # the images' folder in the release, beside the table
TABLE_COLUMNS = ["id", "text", "lang", *mm.FIELDS]  # benchmark.csv of a multimodal release: what `bsa eval` reads
EXTENSIONS = {mime: extension for extension, mime in FORMATS.values()}  # MIME type -> file extension
COMBINATION_ORDER = [*mm.COMBINATIONS, mm.BENIGN]  # combinations as tables list them

FIELD_DESCRIPTIONS = {
    "text": "The text of the pair, put to the model with the image.",
    mm.IMAGE: f"The image's file, relative to the table (`{IMAGES_DIR}/<sha256>.<ext>`, one file per distinct image).",
    mm.IMAGE_SHA256: "sha256 of the image file's bytes (also its file name).",
    mm.IMAGE_STYLE: f"The image's style: {', '.join(mm.IMAGE_STYLES)}.",
    mm.IMAGE_SOURCE: f"Where the image came from: a source's name, '{mm.RENDERED}' for typography the build drew, or "
                     "'generated: <endpoint> (<model>)' for a picture an image generator drew.",
    mm.IMAGE_DESCRIPTION: "What the image shows, in words (what a judge that cannot see images reads).",
    mm.RENDER_SPEC: "JSON of the typography spec a rendered image is rebuilt from exactly (empty for other images).",
    "image_prompt": "The prompt a generated picture (image_style 'synthetic') was drawn from (empty for other images).",
    mm.IMG_RISK: "Whether the image alone carries the risk.",
    mm.TEXT_RISK: "Whether the text alone carries the risk.",
    mm.COMBINATION: f"Where the risk sits: {', '.join(mm.COMBINATIONS)} (risky/safe image, risky/safe text; "
                    f"SIST: only the pair is harmful), or '{mm.BENIGN}' for the over-refusal set.",
    mm.CATEGORY_LEVELS[0]: "Primary category of the risk (the taxonomy's first level).",
    mm.CATEGORY_LEVELS[1]: "Secondary category (second level).",
    mm.CATEGORY_LEVELS[2]: "Tertiary category (third level).",
    "image_content": "The image itself, decoded (Croissant: joined from the image files by the `image` path).",
}  # the multimodal columns' meanings; bsa.release.files.FIELD_DESCRIPTIONS holds the other columns'


def mime_type(path: str) -> str:
    """The MIME type of a released image by its file name (the release names each file by its format)."""
    extension = Path(path).suffix.lstrip(".").lower()
    return next(mime for mime, ext in EXTENSIONS.items() if ext == extension)


def is_multimodal(frame: pd.DataFrame) -> bool:
    """Whether release rows are image + text pairs (they carry the fields.IMAGE column)."""
    return mm.IMAGE in frame.columns


def _blank(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value) or not str(value).strip()


def _flag(value: Any, path: Path, row: int, name: str) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # Python's or numpy's
        return bool(value)
    raise DataError(path, f"{name} must be true or false (got {value!r})", row, name)


def check_pair(item: dict[str, Any], path: Path, row: int, taxonomy: Taxonomy) -> None:
    """Raise on the first field of an image + text row that `bsa eval` would refuse or that breaks the taxonomy."""
    for name in ("text", "lang"):
        if _blank(item.get(name)):
            raise DataError(path, f"empty {name}", row, name)
    if _blank(item.get(mm.IMAGE)) and _blank(item.get(mm.RENDER_SPEC)):
        raise DataError(path, f"no image: neither a file in '{mm.IMAGE}' nor a '{mm.RENDER_SPEC}'", row, mm.IMAGE)
    img_risk, text_risk = (_flag(item.get(name), path, row, name) for name in (mm.IMG_RISK, mm.TEXT_RISK))
    combination = item.get(mm.COMBINATION)
    if combination not in COMBINATION_ORDER:
        raise DataError(path, f"combination {combination!r} is not one of {', '.join(COMBINATION_ORDER)}", row, mm.COMBINATION)
    if combination != mm.BENIGN and combination != mm.combination(img_risk, text_risk):
        raise DataError(path, f"combination {combination} disagrees with {mm.IMG_RISK}={img_risk} and "
                              f"{mm.TEXT_RISK}={text_risk}", row, mm.COMBINATION)
    levels = [None if _blank(item.get(name)) else str(item[name]) for name in mm.CATEGORY_LEVELS]
    if combination != mm.BENIGN and levels[0] is None:
        raise DataError(path, "empty primary category (a risky pair needs one)", row, mm.CATEGORY_LEVELS[0])
    known = levels[:taxonomy.depth]
    if not taxonomy.is_valid_path(*known):
        depth = next(i for i in range(1, len(known) + 1) if not taxonomy.is_valid_path(*known[:i]))
        raise DataError(path, f"{' > '.join(filter(None, known[:depth]))} is not a path of taxonomy "
                              f"'{taxonomy.name}'", row, mm.CATEGORY_LEVELS[depth - 1])


def release_order(frame: pd.DataFrame) -> pd.DataFrame:
    """The table's columns first (fields.FIELDS order), then the rest; rows in the stages' order."""
    first = [c for c in TABLE_COLUMNS if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


@dataclass
class ImageSet:
    """The images a release holds: file name (relative to the table) -> MIME type, and what items use them."""

    files: dict[str, str] = field(default_factory=dict)
    items_by_style: Counter[str] = field(default_factory=Counter)
    items_by_source: Counter[str] = field(default_factory=Counter)
    files_by_style: Counter[str] = field(default_factory=Counter)
    files_by_source: Counter[str] = field(default_factory=Counter)

    @property
    def formats(self) -> list[str]:
        """The MIME types present, those mlcroissant 1.1 decodes (PNG, JPEG) first."""
        return sorted(set(self.files.values()), key=lambda m: (m not in ("image/png", "image/jpeg"), m))


def image_bytes(item: dict[str, Any], path: Path, row: int) -> bytes:
    """A row's image: the bytes of its file, else the PNG its render spec rebuilds (DataError naming the row)."""
    if not _blank(item.get(mm.IMAGE)):
        file = Path(str(item[mm.IMAGE]).strip())
        try:
            return file.read_bytes()
        except OSError as err:
            raise DataError(path, f"image {file}: {err.strerror or 'cannot be read'}", row, mm.IMAGE) from err
    try:
        return render_json(str(item[mm.RENDER_SPEC]))
    except (FontMissing, ValueError, KeyError, TypeError) as err:
        raise DataError(path, f"the render spec cannot be drawn ({err})", row, mm.RENDER_SPEC) from err


def shown(value: Any) -> str:
    """A value as a table shows it: "not stated" when blank."""
    return "not stated" if _blank(value) else str(value)


def write_images(frame: pd.DataFrame, path: Path, rows: dict[str, int], out: Path) -> tuple[pd.DataFrame, ImageSet]:
    """Each row's image checked and written once to `out/images/<sha256>.<ext>`; the frame with `image` the
    file's path relative to `out` and `image_sha256` filled. `rows` gives each id's row in `path` (for errors).
    Files in `out/images/` that no row uses are deleted."""
    folder = out / IMAGES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    images = ImageSet()
    names, hashes = [], []
    for item in frame.to_dict("records"):
        row = rows[item["id"]]
        data = image_bytes(item, path, row)
        digest = hashlib.sha256(data).hexdigest()
        recorded = item.get(mm.IMAGE_SHA256)
        if not _blank(recorded) and str(recorded).strip() != digest:
            where = item[mm.IMAGE] if not _blank(item.get(mm.IMAGE)) else "the image its render spec draws"
            raise DataError(path, f"image {where} has sha256 {digest}, not the {recorded} the row records: it "
                                  "changed after ingest", row, mm.IMAGE_SHA256)
        try:
            mime = image_mime(data)
        except ValueError as err:
            raise DataError(path, f"image {item.get(mm.IMAGE) or '(rendered)'}: {err}", row, mm.IMAGE) from err
        name = f"{IMAGES_DIR}/{digest}.{EXTENSIONS[mime]}"
        style, source = shown(item.get(mm.IMAGE_STYLE)), shown(item.get(mm.IMAGE_SOURCE))
        if name not in images.files:
            target = out / name
            if not (target.is_file() and file_sha256(target) == digest):
                with atomic_path(target) as tmp:
                    tmp.write_bytes(data)
            images.files[name] = mime
            images.files_by_style[style] += 1
            images.files_by_source[source] += 1
        images.items_by_style[style] += 1
        images.items_by_source[source] += 1
        names.append(name)
        hashes.append(digest)
    for stale in folder.iterdir():
        if f"{IMAGES_DIR}/{stale.name}" not in images.files:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return frame.assign(**{mm.IMAGE: names, mm.IMAGE_SHA256: hashes}), images


def remove_images(out: Path) -> None:
    """Delete a previous release's images (a text-only release has none)."""
    shutil.rmtree(out / IMAGES_DIR, ignore_errors=True)
