"""Validating Croissant metadata against its files: schema, checksums and the records themselves.

Three checks, all offline: (1) mlcroissant's own validation of the JSON-LD; (2) the sha256 (or md5) of every
local FileObject against the file on disk, which mlcroissant only checks for the files a RecordSet reads, and
for a release with images (the FileSet IMAGE_FILE_SET) every image the table names: the file exists, its sha256
is the table's `image_sha256`, and the FileSet holds no file the table does not name; (3) the records
mlcroissant loads against the CSV of the distribution, read independently: same count, same ids in the same
order, same values in the columns they share, and each record's image decoded equal to its file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import mlcroissant as mlc
import numpy as np
import pandas as pd

from bsa.multimodal import fields as mm
from bsa.pipeline.errors import DataError
from bsa.pipeline.io import read_table
from bsa.release.croissant.build import IMAGE_CONTENT, IMAGE_FILE_SET, RECORD_SET
from bsa.release.files import CROISSANT_FILE

MAX_LISTED = 5  # differences listed per check before "... and N more"


@dataclass
class Report:
    """The outcome of a validation: errors make it fail, warnings do not."""

    path: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files_checked: int = 0
    records: int | None = None
    images: int | None = None  # records whose image was compared with its file (None: no images)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        """One line for the verdict, then one line per error and warning."""
        if self.ok:
            head = (f"{self.path}: valid Croissant; {self.files_checked} file(s) match their sha256; "
                    f"{self.records} records loaded, equal to the CSV's rows")
            if self.images is not None:
                head += f", each with its image ({self.images} decoded equal to their files)"
        else:
            head = f"{self.path}: INVALID ({len(self.errors)} error(s))"
        return "\n".join([head, *(f"  error: {e}" for e in self.errors),
                          *(f"  warning: {w}" for w in self.warnings)])


@contextlib.contextmanager
def quiet_mlcroissant() -> Iterator[None]:
    """Silence mlcroissant's progress logs (it logs to the root logger): the Report carries its warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_files(metadata: mlc.Metadata, folder: Path, report: Report) -> None:
    """Every local FileObject exists and matches its declared checksum."""
    for node in metadata.file_objects:
        url = node.content_url or ""
        if "://" in url:
            report.warnings.append(f"{node.name}: remote file ({url}), checksum not checked")
            continue
        path = folder / url
        if not path.is_file():
            report.errors.append(f"{node.name}: file {path} not found")
            continue
        algorithm, expected = ("sha256", node.sha256) if node.sha256 else ("md5", node.md5)
        actual = _digest(path, algorithm)
        if actual != expected:
            report.errors.append(f"{node.name}: {algorithm} of {path} is {actual} but the metadata says {expected}: "
                                 "the file changed after its metadata was written")
        report.files_checked += 1


def _csv(metadata: mlc.Metadata) -> mlc.FileObject | None:
    """The distribution's CSV: the table the records are compared with."""
    return next((n for n in metadata.file_objects if "text/csv" in (n.encoding_formats or [])), None)


def check_images(metadata: mlc.Metadata, folder: Path, report: Report) -> None:
    """Every image the table names exists and has the table's sha256; the image FileSet holds nothing else."""
    file_set = next((n for n in metadata.file_sets if n.id == IMAGE_FILE_SET), None)
    csv = _csv(metadata)
    if file_set is None or csv is None:
        return
    table, _ = read_table(folder / csv.content_url)
    missing = [c for c in (mm.IMAGE, mm.IMAGE_SHA256) if c not in table.columns]
    if missing:
        report.errors.append(f"{csv.name}: no column {', '.join(missing)}, but the metadata describes images")
        return
    problems, named = [], set()
    for line, name, expected in zip(table["_line"], table[mm.IMAGE], table[mm.IMAGE_SHA256], strict=True):
        where = f"{csv.name} line {line}, field '{mm.IMAGE}'"
        path = folder / name
        if name in named:
            continue
        named.add(name)
        if not path.is_file():
            problems.append(f"{where}: image {path} not found")
            continue
        actual = _digest(path, "sha256")
        if actual != expected:
            problems.append(f"{where}: sha256 of {path} is {actual} but the table's {mm.IMAGE_SHA256} says "
                            f"{expected}: the file changed after the release was written")
        report.files_checked += 1
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    extra = sorted(p for p in present if p not in named and any(fnmatchcase(p, g) for g in file_set.includes or []))
    problems += [f"{file_set.name}: {folder / p} is in the FileSet but no row of {csv.name} names it" for p in extra]
    report.errors += _listed(problems)


def compare_images(records: pd.DataFrame, folder: Path) -> list[str]:
    """Records whose decoded image differs from its file (mlcroissant decodes PNG and JPEG to RGB)."""
    from PIL import Image

    problems = []
    for number, (item, name, image) in enumerate(zip(records["id"], records[mm.IMAGE], records[IMAGE_CONTENT],
                                                     strict=True), start=1):
        name = _plain(name)
        if not isinstance(image, Image.Image):
            problems.append(f"record {number} ({_plain(item)}): no image decoded for {name} (got {type(image).__name__})")
            continue
        with Image.open(folder / name) as original:
            expected = original.convert("RGB")
        if image.size != expected.size or not np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected)):
            problems.append(f"record {number} ({_plain(item)}): the image mlcroissant decoded differs from {name}")
    return _listed(problems)


def _plain(value: Any) -> str:
    """A record value as the text a CSV cell holds."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _listed(problems: list[str]) -> list[str]:
    extra = len(problems) - MAX_LISTED
    return problems[:MAX_LISTED] + ([f"... and {extra} more"] if extra > 0 else [])


def compare_rows(records: pd.DataFrame, table: pd.DataFrame, csv_name: str) -> list[str]:
    """Differences between the records mlcroissant loaded and the CSV's rows (empty when they agree)."""
    if len(records) != len(table):
        return [f"mlcroissant loaded {len(records)} records but {csv_name} has {len(table)} rows"]
    problems = []
    for column in [c for c in table.columns if c in records.columns]:
        loaded = records[column].map(_plain).to_numpy()
        differs = (loaded != table[column].to_numpy()).nonzero()[0]
        problems += [f"{csv_name} row {i + 1} ({table['id'].iloc[i]}): '{column}' is {table[column].iloc[i]!r} "
                     f"but mlcroissant read {loaded[i]!r}" for i in differs[:MAX_LISTED]]
    return _listed(problems)


def check_records(dataset: mlc.Dataset, folder: Path, report: Report, record_set: str = RECORD_SET) -> None:
    """The RecordSet loads, and its records are exactly the rows of the distribution's CSV."""
    csv = _csv(dataset.metadata)
    try:
        rows = list(dataset.records(record_set))
    except Exception as err:  # noqa: BLE001 - mlcroissant raises many types while reading
        report.errors.append(f"mlcroissant could not load record set '{record_set}': {err}")
        return
    report.records = len(rows)
    if csv is None:
        report.warnings.append("no CSV in the distribution: records not compared to a table")
        return
    prefix = f"{record_set}/"
    records = pd.DataFrame([{k.removeprefix(prefix): v for k, v in row.items()} for row in rows])
    table, _ = read_table(folder / csv.content_url)
    report.errors += compare_rows(records, table.drop(columns=["_line"]), csv.name)
    if IMAGE_CONTENT in records.columns:
        report.errors += compare_images(records, folder)
        report.images = len(records)


def validate(jsonld: str | Path, record_set: str = RECORD_SET) -> Report:
    """Validate a Croissant file: mlcroissant's checks, the files' checksums, and the records."""
    path = Path(jsonld)
    if not path.is_file():
        raise DataError(path, "Croissant file not found")
    report = Report(path)
    with quiet_mlcroissant():
        try:
            dataset = mlc.Dataset(path)
        except (mlc.ValidationError, ValueError, AssertionError) as err:
            report.errors.append(f"mlcroissant rejects the metadata: {err}")
            return report
        report.warnings += sorted(dataset.metadata.ctx.issues.warnings)
        check_files(dataset.metadata, path.parent, report)
        check_images(dataset.metadata, path.parent, report)
        if report.ok:
            check_records(dataset, path.parent, report, record_set)
    return report


def validate_release(release: str | Path) -> Report:
    """Validate a release directory's croissant.json (or the file itself) against the released files."""
    path = Path(release)
    return validate(path / CROISSANT_FILE if path.is_dir() else path)
