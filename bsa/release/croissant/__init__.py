"""Croissant metadata for the release (or any BSA-format CSV), written and validated with mlcroissant.

`bsa croissant`             describe build/release/ in build/release/croissant.json, then validate it
`bsa croissant FILE.csv`    describe a BSA-format CSV (facts from flags, a SOURCE.txt beside it, or the config)
                            in <build_dir>/croissant/<CSV stem>/croissant.json: nothing is written beside the CSV
`bsa croissant FILE.json`   validate existing Croissant metadata against its files

Validation (`bsa.release.croissant.validate`) = mlcroissant's checks + every file's sha256 + the records against the CSV.
The exit status is 1 when validation fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bsa.pipeline.errors import DataError

if TYPE_CHECKING:
    from bsa.pipeline.config import BuildConfig


def default_output(csv: Path, config: BuildConfig) -> Path:
    """Where `bsa croissant FILE.csv` writes without --output: `<build_dir>/croissant/<CSV stem>/croissant.json`.

    Never beside the CSV, which may sit in a read-only or shared folder (../shared/data/bsa/). The metadata
    refers to the CSV by its path relative to this folder (no copy), so validation reads and checksums the
    very file described. Describing another CSV with the same name replaces the metadata.
    """
    from bsa.release.files import CROISSANT_FILE

    return config.build_path / "croissant" / csv.stem / CROISSANT_FILE


def write_metadata(config: BuildConfig, file: Path | None = None, output: Path | None = None,
                   facts: dict[str, str | None] | None = None) -> tuple[Path, str]:
    """Write the Croissant JSON-LD of the release (no `file`) or of a BSA-format CSV; (its path, a message)."""
    from bsa.pipeline.io import write_json
    from bsa.release.croissant.build import csv_jsonld, release_jsonld
    from bsa.release.files import CROISSANT_FILE, release_dir

    if file is None:
        target = output or release_dir(config) / CROISSANT_FILE
        jsonld = release_jsonld(config, target)
    else:
        target = output or default_output(file, config)
        jsonld = csv_jsonld(file, target, config, facts or {})
    try:
        write_json(jsonld, target)
    except OSError as err:
        raise DataError(target, f"cannot write the metadata ({err.strerror}): choose another --output") from err
    described = "" if file is None else f" (describing {file} as {jsonld['distribution'][0]['contentUrl']})"
    return target, f"wrote {target}{described}"
