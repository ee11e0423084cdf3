"""Croissant metadata (JSON-LD) for the release or for any BSA-format CSV, built with mlcroissant's API.

The release's one RecordSet, `benchmark`, reads benchmark.parquet: it is the file that holds BSA's columns
and the provenance columns, typed, so mlcroissant's reader guesses nothing (its CSV and JSON Lines readers
let pandas infer types: a 32-hex id made of digits and one `e` would come back as a float). The CSV and the
JSONL are FileObjects with their sha256 too, and validation checks that all three hold the same rows.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlcroissant as mlc
import pandas as pd

from bsa.benchmark import BSA_COLUMNS, SCENARIOS
from bsa.multimodal import fields as mm
from bsa.pipeline.config import BuildConfig
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import file_sha256, read_table
from bsa.pipeline.taxonomy import Taxonomy
from bsa.release.config import Creator, release_config
from bsa.release.croissant.config import ResponsibleAI, croissant_config
from bsa.release.files import (
    DATA_FILES,
    build_endpoints,
    field_description,
    license_url,
    read_funnel,
    read_manifest,
    release_date,
    release_dir,
    source_license,
)
from bsa.release.images import COMBINATION_ORDER, IMAGES_DIR, is_multimodal, mime_type

CONFORMS_TO = ["http://mlcommons.org/croissant/1.1", "http://mlcommons.org/croissant/RAI/1.0"]
RECORD_SET = "benchmark"
ENCODINGS = {".csv": "text/csv", ".jsonl": "application/jsonlines", ".parquet": "application/x-parquet"}
RECORDS_FILE = "benchmark.parquet"
IMAGE_FILE_SET = "image-files"  # the FileSet of the release's images
IMAGE_RECORD_SET = "images"  # the RecordSet reading them (its id differs from the FileSet's)
IMAGE_CONTENT = "image_content"  # the benchmark's field holding the image itself
MLCROISSANT_IMAGES = ("image/png", "image/jpeg")  # the image formats mlcroissant 1.1 decodes


@dataclass
class DatasetInfo:
    """The dataset-level facts of a Croissant description."""

    name: str
    description: str
    license: str | None = None
    citation: str | None = None
    version: str | None = None
    url: str | None = None
    date_published: str | None = None
    creators: list[Creator] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    rai: dict[str, Any] = field(default_factory=dict)  # mlc.Metadata's Responsible-AI keyword arguments


def data_type(series: pd.Series) -> Any:
    """The Croissant data type of a column."""
    if pd.api.types.is_bool_dtype(series):
        return mlc.DataType.BOOL
    if pd.api.types.is_integer_dtype(series):
        return mlc.DataType.INTEGER
    if pd.api.types.is_float_dtype(series):
        return mlc.DataType.FLOAT
    return mlc.DataType.TEXT


def file_object(ctx: mlc.Context, path: Path, content_url: str, description: str) -> mlc.FileObject:
    """A FileObject for a local file, with its sha256 and encoding format."""
    encoding = ENCODINGS.get(path.suffix.lower())
    if encoding is None:
        raise DataError(path, f"no Croissant encoding format known for '{path.suffix}'")
    return mlc.FileObject(ctx=ctx, id=path.name, name=path.name, description=description,
                          content_url=content_url, encoding_formats=[encoding], sha256=file_sha256(path))


def record_set(ctx: mlc.Context, file_id: str, columns: pd.DataFrame, description: str,
               images: bool = False) -> mlc.RecordSet:
    """One RecordSet reading every column of `columns` from the FileObject `file_id`, keyed by `id`. With
    `images`, the fields.IMAGE path references the IMAGE_RECORD_SET's path, and IMAGE_CONTENT is the image."""
    reference = mlc.Source(ctx=ctx, field=f"{IMAGE_RECORD_SET}/path") if images else None
    fields = [mlc.Field(ctx=ctx, id=f"{RECORD_SET}/{name}", name=name, data_types=[data_type(columns[name])],
                        description=field_description(name, images) or f"Column '{name}' of the file.",
                        source=mlc.Source(ctx=ctx, file_object=file_id, extract=mlc.Extract(ctx=ctx, column=name)),
                        references=reference if name == mm.IMAGE else None)
              for name in columns.columns]
    if images:
        fields.append(mlc.Field(ctx=ctx, id=f"{RECORD_SET}/{IMAGE_CONTENT}", name=IMAGE_CONTENT,
                                data_types=[mlc.DataType.IMAGE_OBJECT], description=field_description(IMAGE_CONTENT, True),
                                source=mlc.Source(ctx=ctx, field=f"{IMAGE_RECORD_SET}/content")))
    return mlc.RecordSet(ctx=ctx, id=RECORD_SET, name=RECORD_SET, description=description, fields=fields,
                         key=[f"{RECORD_SET}/id"])


def image_nodes(ctx: mlc.Context, frame: pd.DataFrame) -> tuple[mlc.FileSet, mlc.RecordSet]:
    """The FileSet of the release's images (`images/*`, by MIME type) and the RecordSet reading each file's
    path (relative to the metadata) and content, which the benchmark's `image` path joins on."""
    mimes = {mime_type(str(path)) for path in frame[mm.IMAGE]}
    formats = sorted(mimes, key=lambda m: (m not in MLCROISSANT_IMAGES, m))  # mlcroissant reads by the first
    file_set = mlc.FileSet(ctx=ctx, id=IMAGE_FILE_SET, name=IMAGE_FILE_SET, includes=[f"{IMAGES_DIR}/*"],
                           encoding_formats=formats,
                           description="The items' images, one file per distinct image, named by its sha256.")

    def from_files(name: str, file_property: str, kind: Any, description: str) -> mlc.Field:
        return mlc.Field(ctx=ctx, id=f"{IMAGE_RECORD_SET}/{name}", name=name, data_types=[kind],
                         description=description,
                         source=mlc.Source(ctx=ctx, file_set=IMAGE_FILE_SET,
                                           extract=mlc.Extract(ctx=ctx, file_property=file_property)))

    fields = [from_files("path", "fullpath", mlc.DataType.TEXT, "The file's path relative to the metadata, as "
                         "the benchmark's `image` column gives it."),
              from_files("content", "content", mlc.DataType.IMAGE_OBJECT, "The image.")]
    records = mlc.RecordSet(ctx=ctx, id=IMAGE_RECORD_SET, name=IMAGE_RECORD_SET, fields=fields,
                            key=[f"{IMAGE_RECORD_SET}/path"], description="The image files, by path.")
    return file_set, records


def _creator(ctx: mlc.Context, creator: Creator) -> mlc.Person | mlc.Organization:
    kind = mlc.Organization if creator.organization else mlc.Person
    return kind(ctx=ctx, name=creator.name, url=creator.url, email=creator.email)


def metadata_jsonld(info: DatasetInfo, ctx: mlc.Context, files: list[mlc.FileObject | mlc.FileSet],
                    records: list[mlc.RecordSet]) -> dict[str, Any]:
    """The JSON-LD of a dataset (mlcroissant raises ValidationError on anything it rejects)."""
    licence = license_url(info.license) if info.license else None
    metadata = mlc.Metadata(
        ctx=ctx, conforms_to=CONFORMS_TO, name=info.name, description=info.description,
        license=[licence or info.license] if info.license else None, cite_as=info.citation, version=info.version,
        url=info.url, date_published=info.date_published, keywords=info.keywords or None,
        in_language=info.languages or None, creators=[_creator(ctx, c) for c in info.creators],
        distribution=files, record_sets=records, **info.rai)
    return metadata.to_json()


def scenario_counts(frame: pd.DataFrame) -> str:
    """Items by scenario (for image + text items: by combination), in their order."""
    column, order = (mm.COMBINATION, COMBINATION_ORDER) if is_multimodal(frame) else ("dataset_name", SCENARIOS)
    counts = frame[column].value_counts()
    return ", ".join(f"{s} {int(counts[s])}" for s in order if s in counts)


# -- the release ---------------------------------------------------------------------------------------
def stage_lines(funnel: list[dict[str, Any]], manifest: dict[str, Any]) -> list[str]:
    """One sentence a stage: rows in and out, why rows left, and the files it read (hashes in the manifest)."""
    lines = []
    for row in funnel:
        name = row.get("stage", "?")
        dropped = ", ".join(f"{reason} {n}" for reason, n in row.get("dropped", {}).items())
        read = ", ".join(manifest.get("stages", {}).get(name, {}).get("resources", {}))
        lines.append(f"Stage {name}: {row.get('rows_in', 0)} rows in, {row.get('rows_out', 0)} out"
                     + (f"; dropped: {dropped}" if dropped else "") + (f"; read: {read}" if read else "") + ".")
    return lines


def release_rai(config: BuildConfig, rai: ResponsibleAI, manifest: dict[str, Any],
                funnel: list[dict[str, Any]], images: bool = False) -> dict[str, Any]:
    """The Responsible-AI fields: what the build knows (sources, funnel, models, prompts) plus the config's text."""
    section = release_config(config)
    sources = "; ".join(f"{s.name} ({s.path}, licence: {source_license(s, section) or 'not stated'})"
                        for s in config.sources)
    collection = f"Rows of {len(config.sources)} configured source(s): {sources}."
    models = sorted({e.get("model", "") for e in build_endpoints(config, manifest).values()} - {""})
    taxonomy = Taxonomy.load(config.taxonomy)
    prompts = ", ".join(f"{key} (sha256 {digest[:12]})" for key, digest in sorted(manifest.get("prompts", {}).items()))
    labels = (f"Each image + text pair records whether its image and its text carry risk (img_risk, text_risk), "
              f"their combination, and its categories on the levels of the taxonomy '{taxonomy.name}' ("
              + ", ".join(f"{n} {level}" for level, n in zip(taxonomy.levels, taxonomy.counts, strict=True)) + ")."
              if images else f"Labels are 'Category-Subcategory' of the taxonomy '{taxonomy.name}' "
              f"({len(taxonomy.categories)} categories, {len(taxonomy.labels)} subcategories).")
    annotation = [f"{labels} Models of the build's endpoints: {', '.join(models)}"
                  + (f"; prompt templates: {prompts}." if prompts else ".")]
    fields = {
        "data_collection": " ".join(filter(None, [collection, rai.data_collection])),
        "data_collection_type": rai.data_collection_type or None,
        "data_preprocessing_protocol": stage_lines(funnel, manifest) + ([rai.data_preprocessing_protocol]
                                                                if rai.data_preprocessing_protocol else []),
        "data_annotation_protocol": annotation + ([rai.data_annotation_protocol] if rai.data_annotation_protocol
                                                  else []),
        "machine_annotation_tools": models or None,
        "data_biases": [rai.data_biases],
        "data_limitations": [rai.data_limitations],
        "data_use_cases": [rai.data_use_cases],
        "personal_sensitive_information": [rai.personal_sensitive_information],
        "data_social_impact": rai.data_social_impact,
        "data_release_maintenance_plan": rai.data_release_maintenance_plan,
    }
    return {key: value for key, value in fields.items() if value}


def relative_url(path: Path, output: Path) -> str:
    """The path of a file relative to the folder of the metadata describing it (its contentUrl)."""
    return Path(os.path.relpath(path.resolve(), output.resolve().parent)).as_posix()


def release_jsonld(config: BuildConfig, output: Path) -> dict[str, Any]:
    """The Croissant JSON-LD of build/release/, to be written at `output` (run `bsa release` first)."""
    out = release_dir(config)
    missing = [name for name in DATA_FILES if not (out / name).exists()]
    if missing:
        raise DataError(out / missing[0], "not found: run `bsa release` first")
    frame = pd.read_parquet(out / RECORDS_FILE)
    section, manifest, funnel = release_config(config), read_manifest(config), read_funnel(config)
    info = DatasetInfo(
        name=config.name, version=config.version, license=section.license_url or section.license,
        description=f"{config.description} {len(frame)} items: {scenario_counts(frame)}.".strip(),
        citation=section.citation, url=section.url, date_published=release_date(section, manifest),
        creators=section.creators, keywords=section.keywords,
        languages=sorted(frame["lang"].dropna().astype(str).unique()) if "lang" in frame.columns else [],
        rai=release_rai(config, croissant_config(config).rai.for_release(is_multimodal(frame)), manifest, funnel,
                        is_multimodal(frame)))
    ctx = mlc.Context(conforms_to=CONFORMS_TO[0])
    files: list[mlc.FileObject | mlc.FileSet] = [
        file_object(ctx, out / name, relative_url(out / name, output), description)
        for name, description in DATA_FILES.items()]
    if not is_multimodal(frame):
        records = record_set(ctx, RECORDS_FILE, frame, "The benchmark's items: BSA's columns, then provenance.")
        return metadata_jsonld(info, ctx, files, [records])
    if output.resolve().parent != out.resolve():
        raise DataError(output, f"the metadata of a release with images must lie in {out} (its FileSet "
                                f"'{IMAGE_FILE_SET}' reads `{IMAGES_DIR}/*` beside it)")
    file_set, images = image_nodes(ctx, frame)
    records = record_set(ctx, RECORDS_FILE, frame, "The benchmark's image + text items: the table `bsa eval` "
                         "reads, then provenance; `image_content` is the image.", images=True)
    return metadata_jsonld(info, ctx, [*files, file_set], [records, images])


# -- any BSA-format CSV -----------------------------------------------------------------------------------
def read_source_txt(path: Path) -> dict[str, str]:
    """`Key: value` lines of a SOURCE.txt (indented lines continue the previous value)."""
    entries: dict[str, str] = {}
    key = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^(\w[\w ]*):\s*(.*)$", line)
        if match and not line[0].isspace():
            key = match.group(1).strip().lower()
            entries[key] = match.group(2).strip()
        elif key and line.strip():
            entries[key] += " " + line.strip()
    return entries


def spdx_license(text: str) -> str:
    """The licence named in free text: a Creative Commons one as its SPDX id (`CC BY-NC 4.0` -> `CC-BY-NC-4.0`)."""
    match = re.search(r"\bCC[- ]BY(?:[- ](?:NC|SA|ND))*[- ]\d\.\d\b", text, re.IGNORECASE)
    if match:
        return match.group(0).replace(" ", "-").upper()
    return re.split(r" \(|\. |; ", text)[0].strip().rstrip(".")  # the licence named before any comment


def source_txt_info(csv_path: Path) -> dict[str, str]:
    """Name, licence, citation and URL from a SOURCE.txt beside the CSV (empty when there is none)."""
    path = csv_path.parent / "SOURCE.txt"
    if not path.exists():
        return {}
    entries = read_source_txt(path)
    info = {"name": entries.get("name"), "citation": entries.get("cite"),
            "license": spdx_license(entries["license"]) if entries.get("license") else None}
    repo = entries.get("repo", "").split(" ")[0]
    if repo:
        info["url"] = repo if "://" in repo else f"https://{repo}"
    return {key: value for key, value in info.items() if value}


def read_bsa_csv(path: Path) -> pd.DataFrame:
    """A BSA-format CSV (all columns as text), its columns and ids checked."""
    frame, _ = read_table(path)
    missing = [c for c in BSA_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(path, f"not a BSA-format CSV: column(s) {', '.join(missing)} missing", field=missing[0])
    repeated = frame["id"].duplicated() | (frame["id"] == "")
    if repeated.any():
        line = int(frame.loc[repeated, "_line"].iloc[0])
        raise DataError(path, "ids must be present and unique (they key the RecordSet)", line, "id")
    return frame.drop(columns=["_line"])


def csv_jsonld(csv_path: Path, output: Path, config: BuildConfig, overrides: dict[str, str | None]) -> dict[str, Any]:
    """The Croissant JSON-LD of a BSA-format CSV. Facts come from `overrides` (command-line flags), else a
    SOURCE.txt beside the CSV, else the config's `release:` section."""
    frame = read_bsa_csv(csv_path)
    section = release_config(config)
    facts = {"name": csv_path.stem, "license": section.license, "citation": section.citation, "url": section.url}
    facts |= source_txt_info(csv_path)
    facts |= {key: value for key, value in overrides.items() if value}
    info = DatasetInfo(name=facts["name"], license=facts["license"], citation=facts["citation"], url=facts["url"],
                       description=f"A benchmark in BSA's format: {len(frame)} items ({scenario_counts(frame)}).")
    ctx = mlc.Context(conforms_to=CONFORMS_TO[0])
    files = [file_object(ctx, csv_path, relative_url(csv_path, output), "The benchmark's items, one a row.")]
    records = record_set(ctx, csv_path.name, frame, "The benchmark's items.")
    return metadata_jsonld(info, ctx, files, [records])
