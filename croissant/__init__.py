"""Croissant metadata for the release (or any BSA-format CSV), written and validated with mlcroissant.

`bsa croissant`             describe build/release/ in build/release/croissant.json, then validate it
`bsa croissant FILE.csv`    describe a BSA-format CSV (facts from flags, a SOURCE.txt beside it, or the config)
                            in <build_dir>/croissant/<CSV stem>/croissant.json: nothing is written beside the CSV
`bsa croissant FILE.json`   validate existing Croissant metadata against its files

Validation (`croissant.validate`) = mlcroissant's checks + every file's sha256 + the records against the CSV.
The exit status is 1 when validation fails.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import DataError

if TYPE_CHECKING:
    from pipeline.config import BuildConfig


def default_output(csv: Path, config: BuildConfig) -> Path:
    """Where `bsa croissant FILE.csv` writes without --output: `<build_dir>/croissant/<CSV stem>/croissant.json`.

    Never beside the CSV, which may sit in a read-only or shared folder (../shared/data/bsa/). The metadata
    refers to the CSV by its path relative to this folder (no copy), so validation reads and checksums the
    very file described. Describing another CSV with the same name replaces the metadata.
    """
    from stages.release import CROISSANT_FILE

    return config.build_path / "croissant" / csv.stem / CROISSANT_FILE


def cli_main(args: argparse.Namespace) -> int:
    """`bsa croissant [FILE] [--output F] [--name N --license L --citation C]`: write, then validate."""
    from croissant.build import csv_jsonld, release_jsonld
    from croissant.validate import validate
    from pipeline.config import load_config
    from pipeline.io import write_json
    from stages.release import CROISSANT_FILE, release_dir

    file = Path(args.file) if args.file else None
    if file is not None and file.suffix.lower() == ".json":
        target = file
    else:
        config = load_config(args.config, args.overrides)
        if file is None:
            target = Path(args.output) if args.output else release_dir(config) / CROISSANT_FILE
            jsonld = release_jsonld(config, target)
        else:
            target = Path(args.output) if args.output else default_output(file, config)
            flags = {key: getattr(args, key, None) for key in ("name", "license", "citation")}
            jsonld = csv_jsonld(file, target, config, flags)
        try:
            write_json(jsonld, target)
        except OSError as err:
            raise DataError(target, f"cannot write the metadata ({err.strerror}): choose another --output") from err
        described = "" if file is None else f" (describing {file} as {jsonld['distribution'][0]['contentUrl']})"
        print(f"wrote {target}{described}")
    report = validate(target)
    print(report.summary())
    return 0 if report.ok else 1
