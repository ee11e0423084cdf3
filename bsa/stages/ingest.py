"""Ingest: the configured sources read into core records (`00_ingest.parquet`), mapped by config.

Each source's columns are mapped onto the record fields (`sources:` in the config, bsa.pipeline.config.
SourceConfig); a `Category-Subcategory` label in the category column fills both fields; rows whose id repeats
one already read (the same normalised text) are rejected `duplicate_id`, naming the source of the first.

A source may give each row an image (`image:` a column of paths relative to the source file, or `render:`
typography drawn from a column): every image is checked (bsa.multimodal.images) and hashed, and a bad one
rejects its row (`image_missing`, `image_unreadable`, `image_format`, `image_too_large`, `image_too_small`),
the detail naming file, line and column. `fields:` maps further columns onto record fields (bsa.multimodal.
fields: `img_risk`, `text_risk`, the category levels, ...); the combination follows from the two risks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bsa.multimodal import fields as mm
from bsa.multimodal.images import ImageProblem, check_image
from bsa.multimodal.render import LAYOUTS, make_spec, render
from bsa.pipeline.config import SourceConfig
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import read_table
from bsa.pipeline.keys import first_rows
from bsa.pipeline.records import CORE_FIELDS, REJECT_DETAIL, REJECT_REASON, text_id
from bsa.pipeline.taxonomy import Taxonomy


def _to_risky(value: object, source: SourceConfig) -> object:
    if isinstance(value, bool):
        return value
    if value is None or (isinstance(value, float) and value != value):
        return pd.NA
    if isinstance(value, float) and value.is_integer():  # 1.0 / 0.0: a 0/1 column that has gaps
        value = int(value)
    text = str(value).strip().lower()
    if text in source.risky_values:
        return True
    if text in source.safe_values:
        return False
    return pd.NA


def _reject(frame: pd.DataFrame, reason: str, detail: str = "") -> pd.DataFrame:
    out = frame.copy()
    out[REJECT_REASON] = reason
    out[REJECT_DETAIL] = detail
    return out


def ingest_source(source: SourceConfig, taxonomy: Taxonomy | None = None,
                  resources: dict[str, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One source as core records (and its mapped fields), plus rows rejected on the way (when
    `on_error: reject`); the sha256 of every image file read is added to `resources`."""
    if source.render and source.render.layout not in LAYOUTS:
        raise DataError(source.path, f"render.layout '{source.render.layout}' is not one of {', '.join(LAYOUTS)}",
                        field="render.layout")
    raw, bad = read_table(source.path, on_error=source.on_error)
    rejects = [bad] if not bad.empty else []
    if source.query:
        try:
            raw = raw.query(source.query)
        except Exception as err:  # noqa: BLE001 - pandas raises many types for a bad expression
            raise DataError(source.path, f"query '{source.query}' failed ({err})") from err
    if source.limit:
        raw = raw.head(source.limit)
    mapped = {"text": source.text, "id": source.id, "lang": source.lang, "category": source.category,
              "subcategory": source.subcategory}
    if isinstance(source.is_risky, str):
        mapped["is_risky"] = source.is_risky
    mapped |= {mm.IMAGE: source.image, mm.RENDER_SPEC: source.render.text if source.render else None,
               **source.fields}
    for field, column in mapped.items():
        if column and column not in raw.columns:
            raise DataError(source.path, f"column '{column}' (mapped to record field '{field}') not found; "
                                         f"columns are: {', '.join(c for c in raw.columns if c != '_line')}",
                            field=column)
    used = {c for c in mapped.values() if c} | {"_line"}
    records = pd.DataFrame(index=raw.index)
    # blank or absent text is missing (a list, not Series.where: pandas 3 string columns turn None into NaN)
    records["text"] = pd.Series([None if pd.isna(v) or not str(v).strip() else str(v) for v in raw[source.text]],
                                index=raw.index, dtype=object)
    for field in ("lang", "category", "subcategory"):
        column = mapped[field]
        value = raw[column].astype("string").astype(object) if column else None
        records[field] = value if value is not None else source.defaults.get(field)
        if value is not None and field in source.defaults:
            records[field] = records[field].where(records[field].notna() & (records[field] != ""),
                                                  source.defaults[field])
    if isinstance(source.is_risky, str):
        records["is_risky"] = raw[source.is_risky].map(lambda v: _to_risky(v, source))
    elif isinstance(source.is_risky, bool):
        records["is_risky"] = source.is_risky
    else:
        records["is_risky"] = pd.NA
    records["is_risky"] = records["is_risky"].astype("boolean")
    if source.category_map:
        records["category"] = records["category"].map(
            lambda v: source.category_map.get(v, v) if isinstance(v, str) else v)  # missing stays missing
    # a `Category-Subcategory` label in the category column fills both fields
    if taxonomy is not None:
        records["category"], records["subcategory"] = split_labels(records["category"], records["subcategory"],
                                                                   taxonomy)
    records["source"] = source.name
    records["_line"] = raw["_line"].values
    extra = [c for c in raw.columns if c not in used]
    records["meta"] = [json.dumps({k: _plain(v) for k, v in row.items()}, ensure_ascii=False)
                       for row in raw[extra].to_dict(orient="records")] if extra else "{}"
    if source.id:
        records["id"] = raw[source.id].astype(str)
    else:
        records["id"] = [text_id(t) if isinstance(t, str) else None for t in records["text"]]
    for field, column in source.fields.items():
        records[field] = raw[column].map(lambda v: _to_risky(v, source)).astype("boolean") \
            if field in (mm.IMG_RISK, mm.TEXT_RISK) else raw[column].astype(object)
    for field in mm.FIELDS:
        if field in source.defaults and field not in source.fields:
            records[field] = source.defaults[field]
    if mm.IMG_RISK in records.columns and mm.TEXT_RISK in records.columns and mm.COMBINATION not in source.fields:
        records[mm.COMBINATION] = [None if pd.isna(i) or pd.isna(t) or pd.isna(p) else mm.combination(i, t, p)
                                   for i, t, p in zip(records[mm.IMG_RISK], records[mm.TEXT_RISK],
                                                      records["is_risky"], strict=True)]
    bad_text = records["text"].isna()
    if bad_text.any():
        if source.on_error == "raise":
            line = int(records.loc[bad_text, "_line"].iloc[0])
            raise DataError(source.path, "missing text", line=line, field=source.text)
        rejects.append(_reject(records[bad_text], "missing_text", f"column '{source.text}' is empty"))
        records = records[~bad_text]
    if source.image or source.render:
        records, bad_images = attach_images(records, raw.loc[records.index], source, resources)
        if not bad_images.empty:
            if source.on_error == "raise":
                first = bad_images.iloc[0]
                raise DataError(source.path, f"{first[REJECT_REASON]}: {first[REJECT_DETAIL]}",
                                line=int(first["_line"]), field=source.image or source.render.text)
            rejects.append(bad_images)
    return records, (pd.concat(rejects, ignore_index=True) if rejects else pd.DataFrame())


def attach_images(records: pd.DataFrame, raw: pd.DataFrame, source: SourceConfig,
                  resources: dict[str, str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Records with their checked image (path, sha256, style, source; the render spec of a rendered one), and
    the rows whose image failed, each with its reason and a detail naming file, line and column."""
    records = records.copy()
    column = source.image or source.render.text
    paths, hashes, specs, reasons, details = [], [], [], [], []
    for value, line, lang in zip(raw[column], records["_line"], records["lang"], strict=True):
        where = f"{source.path} line {line}, column '{column}'"
        path = spec = digest = reason = detail = None
        if pd.isna(value) or not str(value).strip():
            reason, detail = "image_missing", f"{where}: empty"
        elif source.render:
            spec = make_spec(str(value), source.render.layout, lang if isinstance(lang, str) else "en")
            digest = hashlib.sha256(render(spec)).hexdigest()
            spec = spec.to_json()
        else:
            path = str(Path(source.path).parent / str(value).strip())
            try:
                digest = check_image(path, source.image_limits).sha256
                if resources is not None:
                    resources[path] = digest
            except ImageProblem as problem:
                reason, detail = problem.reason, f"{where}: {problem.detail}"
        paths.append(path)
        hashes.append(digest)
        specs.append(spec)
        reasons.append(reason)
        details.append(detail)
    records[mm.IMAGE], records[mm.IMAGE_SHA256], records[mm.RENDER_SPEC] = paths, hashes, specs
    if source.render:
        records[mm.IMAGE_STYLE], records[mm.IMAGE_SOURCE] = "typography", mm.RENDERED
    else:
        for field, default in ((mm.IMAGE_STYLE, None), (mm.IMAGE_SOURCE, source.name)):
            if field not in records.columns:
                records[field] = default
    bad = pd.Series([r is not None for r in reasons], index=records.index)
    rejected = records[bad].assign(**{REJECT_REASON: [r for r in reasons if r],
                                      REJECT_DETAIL: [d for d in details if d]})
    return records[~bad], rejected


def split_labels(category: pd.Series, subcategory: pd.Series,
                 taxonomy: Taxonomy) -> tuple[pd.Series, pd.Series]:
    """Category and subcategory columns with each `Category-Subcategory` label of the taxonomy split in two.

    Vectorised with pandas string methods, with `Taxonomy.split`'s rule: strip, split on the first '-'
    (a subcategory may hold hyphens), strip both parts. A value is split only when it is a string that is not
    itself a category, holds a '-', and whose parts are valid together (`Taxonomy.is_valid`; `Rumors-`, with
    an empty subcategory, is valid and gives subcategory ''). Anything else is left as it was: missing and
    non-string values, labels outside the taxonomy and BSA's two-line Cognitive Shortcut labels
    (`Query A: Cat-Sub\\nQuery B: Cat-Sub`), which stay whole in `category`; ingest raises no error for them
    (the release checks labels strictly, naming file, row and field).
    """
    try:
        has_dash = category.str.contains("-", regex=False, na=False)  # False for missing values, bytes, numbers
        is_text = category.str.strip().notna()  # NaN for anything without str.strip (lists, numbers, ...)
    except AttributeError:  # no string values at all (a non-text default, say): nothing to split
        return category, subcategory
    positions = np.flatnonzero((has_dash & is_text).to_numpy())  # by position: the index may repeat labels
    candidates = category.iloc[positions]
    outside = ~candidates.isin(list(taxonomy.categories)).to_numpy()
    positions, candidates = positions[outside], candidates.iloc[outside]
    if not len(positions):
        return category, subcategory
    parts = candidates.str.strip().str.partition("-")
    major, minor = parts[0].str.strip().to_numpy(dtype=object), parts[2].str.strip().to_numpy(dtype=object)
    pairs = list(zip(major, minor, strict=True))
    known = {pair for pair in set(pairs) if taxonomy.is_valid(*pair)}  # each distinct label checked once
    valid = np.fromiter((pair in known for pair in pairs), dtype=bool, count=len(pairs))
    if not valid.any():
        return category, subcategory
    category, subcategory = category.astype(object), subcategory.astype(object)  # copies
    category.iloc[positions[valid]] = major[valid]
    subcategory.iloc[positions[valid]] = minor[valid]
    return category, subcategory


def _plain(value: object) -> object:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and value != value:
        return None
    return value


def ingest(sources: list[SourceConfig], taxonomy: Taxonomy | None = None, resources: dict[str, str] | None = None,
           first_rows: Callable[[pd.Series], np.ndarray] = first_rows) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All sources as one frame of core records (then the multimodal fields any source gives, bsa.multimodal.
    fields.FIELDS order, then other mapped fields); repeated ids (exact duplicate texts) are rejected, the
    earliest row of each id kept (`first_rows`: the executor's, a shuffle on a cluster)."""
    frames, rejects = [], []
    for source in sources:
        records, bad = ingest_source(source, taxonomy, resources)
        frames.append(records)
        if not bad.empty:
            bad["source"] = source.name
            rejects.append(bad)
    if not frames:
        raise DataError("config", "no sources configured", field="sources")
    records = pd.concat(frames, ignore_index=True)
    first = first_rows(records["id"])
    repeated = first != np.arange(len(records))
    if repeated.any():
        dup = records[repeated]
        rejects.append(_reject(dup, "duplicate_id").assign(
            reject_detail=[f"same id as a row of {s}" for s in records["source"].to_numpy()[first[repeated]]]))
        records = records[~repeated]
    records["is_risky"] = records["is_risky"].astype("boolean")
    given = [c for c in records.columns if c not in CORE_FIELDS and c != "_line"]
    columns = [*CORE_FIELDS, *(f for f in mm.FIELDS if f in given), *(f for f in given if f not in mm.FIELDS),
               "_line"]
    return (records[columns].reset_index(drop=True),
            pd.concat(rejects, ignore_index=True) if rejects else pd.DataFrame())
