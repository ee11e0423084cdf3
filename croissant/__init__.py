"""Croissant metadata for the release (or any BSA-format CSV), written and validated with mlcroissant.

`bsa croissant`             describe build/release/ in build/release/croissant.json, then validate it
`bsa croissant FILE.csv`    describe a BSA-format CSV (facts from flags, a SOURCE.txt beside it, or the config)
`bsa croissant FILE.json`   validate existing Croissant metadata against its files

Validation (`croissant.validate`) = mlcroissant's checks + every file's sha256 + the records against the CSV.
The exit status is 1 when validation fails.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import DataError


def _output_for(csv: Path, output: str | None) -> Path:
    return Path(output) if output else csv.with_name(f"{csv.stem}.croissant.json")


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
            target = _output_for(file, args.output)
            flags = {key: getattr(args, key, None) for key in ("name", "license", "citation")}
            jsonld = csv_jsonld(file, target, config, flags)
        try:
            write_json(jsonld, target)
        except OSError as err:
            raise DataError(target, f"cannot write the metadata ({err.strerror}): choose another --output") from err
        print(f"wrote {target}")
    report = validate(target)
    print(report.summary())
    return 0 if report.ok else 1
