"""A multimodal benchmark as `bsa eval` reads it: the release table, one image + text pair a row.

Columns: `id`, `text`, `lang` (the record's core fields), fields.IMAGE (a path relative to the table's
folder), fields.IMG_RISK and fields.TEXT_RISK (booleans: true/false, 1/0, yes/no), fields.COMBINATION (one of
fields.COMBINATIONS, agreeing with the two flags by fields.combination; fields.BENIGN marks the over-refusal
set), fields.CATEGORY_LEVELS (the primary level required on risky pairs, deeper levels optional);
optionally fields.IMAGE_SHA256 (checked against the file), fields.IMAGE_DESCRIPTION and fields.RENDER_SPEC
(what a judge that cannot see images reads instead). Every image must be readable; any fault is a DataError
naming the file, line and field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from bsa.multimodal import fields
from bsa.multimodal.messages import image_mime
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import read_table

REQUIRED = ["id", "text", "lang", fields.IMAGE, fields.IMG_RISK, fields.TEXT_RISK, fields.COMBINATION,
            fields.CATEGORY_LEVELS[0]]
OPTIONAL = [*fields.CATEGORY_LEVELS[1:], fields.IMAGE_SHA256, fields.IMAGE_DESCRIPTION, fields.RENDER_SPEC,
            fields.IMAGE_STYLE, fields.IMAGE_SOURCE]
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
IMAGE_PATH, MIME = "_image_path", "_mime"  # added by the loader: the image's absolute path and MIME type


def is_multimodal(path: str | Path) -> bool:
    """Whether a benchmark file is multimodal (has the fields.IMAGE column)."""
    frame, _ = read_table(path)
    return fields.IMAGE in frame.columns


def _flag(value: Any, path: Path, line: int, field: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise DataError(path, f"'{value}' is not a boolean (one of {', '.join(TRUE + FALSE)})", line, field)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or not str(value).strip()


def load_multimodal(path: str | Path) -> pd.DataFrame:
    """The checked table: flags as booleans, every optional column present, each image's sha256 (read from
    the file), absolute path (IMAGE_PATH) and MIME type (MIME); DataError at the first bad row."""
    path = Path(path)
    frame, _ = read_table(path)
    missing = [column for column in REQUIRED if column not in frame.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)} (a multimodal benchmark has "
                              f"{', '.join(REQUIRED)})")
    frame = frame.assign(**{column: None for column in OPTIONAL if column not in frame.columns})
    frame = frame.reset_index(drop=True)
    seen: dict[str, int] = {}
    rows = []
    for row in frame.to_dict("records"):
        rows.append(_checked(row, path, seen))
    return pd.DataFrame(rows)


def _checked(row: dict[str, Any], path: Path, seen: dict[str, int]) -> dict[str, Any]:
    line = int(row["_line"])
    for field in ("id", "text", "lang", fields.IMAGE):
        if _blank(row[field]):
            raise DataError(path, "empty value", line, field)
    item = str(row["id"])
    if item in seen:
        raise DataError(path, f"duplicate id {item} (first on line {seen[item]})", line, "id")
    seen[item] = line
    img_risk, text_risk = (_flag(row[field], path, line, field) for field in (fields.IMG_RISK, fields.TEXT_RISK))
    combination = str(row[fields.COMBINATION]).strip()
    if combination not in (*fields.COMBINATIONS, fields.BENIGN):
        raise DataError(path, f"unknown combination '{combination}' (expected one of "
                              f"{', '.join((*fields.COMBINATIONS, fields.BENIGN))})", line, fields.COMBINATION)
    expected = fields.combination(img_risk, text_risk)
    if combination != fields.BENIGN and combination != expected:
        raise DataError(path, f"combination {combination} disagrees with {fields.IMG_RISK}={img_risk} and "
                              f"{fields.TEXT_RISK}={text_risk} (which give {expected})", line,
                        fields.COMBINATION)
    if combination != fields.BENIGN and _blank(row[fields.CATEGORY_LEVELS[0]]):
        raise DataError(path, "empty value (a risky pair needs its primary category)", line,
                        fields.CATEGORY_LEVELS[0])
    image = path.parent / str(row[fields.IMAGE])
    try:
        data = image.read_bytes()
        mime = image_mime(data)
    except (OSError, ValueError) as err:
        raise DataError(path, f"image {image}: {err}", line, fields.IMAGE) from err
    digest = hashlib.sha256(data).hexdigest()
    if not _blank(row[fields.IMAGE_SHA256]) and str(row[fields.IMAGE_SHA256]).strip() != digest:
        raise DataError(path, f"image {image} has sha256 {digest}, not the recorded one", line,
                        fields.IMAGE_SHA256)
    if not _blank(row[fields.RENDER_SPEC]):
        try:
            json.loads(row[fields.RENDER_SPEC])["text"]
        except (ValueError, TypeError, KeyError) as err:
            raise DataError(path, f"not a render spec with a text ({err!r})", line, fields.RENDER_SPEC) from err
    levels = {level: None if _blank(row[level]) else str(row[level]).strip() for level in fields.CATEGORY_LEVELS
              if level in row}
    return {**row, **levels, "id": item, "lang": str(row["lang"]).strip(), fields.IMG_RISK: img_risk,
            fields.TEXT_RISK: text_risk, fields.COMBINATION: combination, fields.IMAGE_SHA256: digest,
            IMAGE_PATH: str(image.resolve()), MIME: mime}


DESCRIBED, TYPOGRAPHY = "described", "typography"  # how an image is put in words (image_in_words)


def image_in_words(item: dict[str, Any]) -> tuple[str, str] | None:
    """What a reader who cannot see the image gets: (DESCRIBED, its description), else (TYPOGRAPHY, the text
    a typography card shows, from its render spec); None when the item has neither."""
    if not _blank(item.get(fields.IMAGE_DESCRIPTION)):
        return DESCRIBED, str(item[fields.IMAGE_DESCRIPTION]).strip()
    if not _blank(item.get(fields.RENDER_SPEC)):
        return TYPOGRAPHY, str(json.loads(item[fields.RENDER_SPEC])["text"])
    return None
