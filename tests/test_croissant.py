"""Croissant metadata: written for the release and for BSA-format CSVs, validated offline, tampering caught."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bsa.benchmark import BSA_COLUMNS
from bsa.cli import cmd_croissant as cli_main
from bsa.pipeline.errors import DataError
from bsa.release.croissant.build import read_source_txt, spdx_license
from bsa.release.croissant.validate import compare_rows, validate, validate_release
from bsa.release.files import release_dir, write_release
from tests.release_build import synthetic_records, write_synthetic_build

MLCROISSANT = Path(sys.executable).with_name("mlcroissant")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every test here runs with the network cut: validation must not need it."""
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def croissant_args(file: Path | None = None, output: Path | None = None, **flags: str) -> argparse.Namespace:
    return argparse.Namespace(file=str(file) if file else None, output=str(output) if output else None,
                              config="unused.yaml", overrides=[], name=flags.get("name"),
                              license=flags.get("license"), citation=flags.get("citation"))


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A synthetic build; `bsa croissant` loads its config."""
    config = write_synthetic_build(tmp_path / "build")
    monkeypatch.setattr("bsa.project.load_config", lambda path, overrides: config)
    return config


@pytest.fixture
def release(config):
    """The synthetic build, released and described: the release dir."""
    write_release(config)
    assert cli_main(croissant_args()) == 0
    return release_dir(config)


def test_demo_release_passes_our_validation(release):
    report = validate_release(release)
    assert report.ok, report.summary()
    assert report.files_checked == 3
    assert report.records == len(pd.read_csv(release / "benchmark.csv"))


def test_mlcroissant_cli_validates_the_release(release):
    done = subprocess.run([str(MLCROISSANT), "validate", "--jsonld", str(release / "croissant.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_mlcroissant_cli_rejects_a_file_object_without_checksum(release, tmp_path):
    jsonld = json.loads((release / "croissant.json").read_text())
    del jsonld["distribution"][0]["sha256"]
    broken = release / "broken.json"
    broken.write_text(json.dumps(jsonld))
    done = subprocess.run([str(MLCROISSANT), "validate", "--jsonld", str(broken)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    report = validate(broken)
    assert not report.ok and "sha256" in report.errors[0]


def test_metadata_describes_files_fields_licence_and_responsible_ai(release):
    jsonld = json.loads((release / "croissant.json").read_text())
    files = {f["name"]: f for f in jsonld["distribution"]}
    assert set(files) == {"benchmark.csv", "benchmark.jsonl", "benchmark.parquet"}
    assert all(len(f["sha256"]) == 64 and f["encodingFormat"] for f in files.values())
    [record_set] = jsonld["recordSet"]
    fields = {f["name"]: f for f in record_set["field"]}
    assert list(fields)[:5] == BSA_COLUMNS and "seed_ids" in fields and "difficulty_failed" in fields
    assert all(f["description"] for f in fields.values())
    assert fields["difficulty_failed"]["dataType"] == "sc:Integer"
    assert fields["is_risky"]["dataType"] == "sc:Boolean"
    assert fields["query"]["dataType"] == "sc:Text"
    assert jsonld["license"] == "https://creativecommons.org/licenses/by/4.0/"
    assert jsonld["version"] == "0.2.0" and jsonld["citeAs"].startswith("@misc{bsa_test")
    assert jsonld["creator"]["name"] == "Ada Tester"
    assert jsonld["datePublished"].startswith("2026-01-02")
    assert "http://mlcommons.org/croissant/RAI/1.0" in jsonld["conformsTo"]
    for key in ("rai:dataCollection", "rai:dataAnnotationProtocol", "rai:dataPreprocessingProtocol",
                "rai:dataBiases", "rai:dataLimitations", "rai:dataUseCases"):
        assert jsonld[key], key
    assert "demo-en (data/demo/pool_en.jsonl, licence: CC-BY-4.0)" in jsonld["rai:dataCollection"]
    assert "Stage clean: 38 rows in, 30 out; dropped: too_short 5, control_chars 3." in jsonld[
        "rai:dataPreprocessingProtocol"]
    assert jsonld["rai:dataLimitations"] == "Tiny test set."


def test_mlcroissant_loads_exactly_the_released_rows(release):
    import mlcroissant as mlc

    csv = pd.read_csv(release / "benchmark.csv", dtype=str, keep_default_na=False)
    records = list(mlc.Dataset(release / "croissant.json").records("benchmark"))
    assert len(records) == len(csv)
    assert [r["benchmark/id"].decode() for r in records] == csv["id"].tolist()
    assert [r["benchmark/label"].decode() for r in records] == csv["label"].tolist()


@pytest.mark.parametrize("name", ["benchmark.csv", "benchmark.parquet", "benchmark.jsonl"])
def test_a_tampered_file_fails_validation(release, name):
    path = release / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = validate_release(release)
    assert not report.ok
    assert f"{name}: sha256" in report.errors[0] and "changed after its metadata was written" in report.errors[0]


def test_cli_exit_status_reports_an_invalid_release(release, capsys):
    with open(release / "benchmark.csv", "a", encoding="utf-8") as csv:
        csv.write("0" * 32 + ",extra,row,Risk Omission,Rumors-Rumors with Negative Impact\n")
    assert cli_main(croissant_args(release / "croissant.json")) == 1
    assert "INVALID" in capsys.readouterr().out


def test_rows_that_differ_from_the_csv_are_named():
    table = pd.DataFrame({"id": ["a", "b"], "query": ["q1", "q2\nline"]})
    same = pd.DataFrame({"id": [b"a", b"b"], "query": [b"q1", b"q2\nline"], "lang": [b"en", b"en"]})
    assert compare_rows(same, table, "x.csv") == []
    other = same.assign(query=[b"q1", b"q2"])
    assert compare_rows(other, table, "x.csv") == ["x.csv row 2 (b): 'query' is 'q2\\nline' but mlcroissant read 'q2'"]
    assert "loaded 1 records but x.csv has 2 rows" in compare_rows(same.head(1), table, "x.csv")[0]


def write_bsa_csv(path: Path) -> pd.DataFrame:
    frame = synthetic_records().rename(columns={"text": "query", "scenario": "dataset_name"})[BSA_COLUMNS]
    frame.to_csv(path, index=False)
    return frame


def test_describes_a_bsa_csv_with_flags_and_multiline_rows(config, tmp_path):
    frame = write_bsa_csv(tmp_path / "items.csv")
    output = tmp_path / "meta" / "items.json"
    assert cli_main(croissant_args(tmp_path / "items.csv", output, license="CC-BY-SA-4.0")) == 0
    jsonld = json.loads(output.read_text())
    assert jsonld["name"] == "items" and jsonld["citeAs"] == config.release["citation"]  # no SOURCE.txt
    assert jsonld["license"] == "https://creativecommons.org/licenses/by-sa/4.0/"
    assert jsonld["distribution"][0]["contentUrl"] == "../items.csv"
    report = validate(output)
    assert report.ok, report.summary()
    assert report.records == len(frame)  # compare_rows checked every value, the two-line labels included


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under a folder with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_without_output_a_csv_is_described_in_the_build_dir_not_beside_it(config, tmp_path, capsys):
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    frame = write_bsa_csv(shared / "items.csv")
    before = listing(shared)
    shared.chmod(0o555)  # read-only, as ../shared is (root ignores the bit: the listing below is the proof)
    try:
        assert cli_main(croissant_args(shared / "items.csv")) == 0
    finally:
        shared.chmod(0o755)
    assert listing(shared) == before  # nothing written, nothing touched beside the CSV
    target = config.build_path / "croissant" / "items" / "croissant.json"
    out = capsys.readouterr().out
    assert f"wrote {target} (describing {shared / 'items.csv'} as ../../../shared/data/items.csv)" in out
    jsonld = json.loads(target.read_text())
    assert [d["contentUrl"] for d in jsonld["distribution"]] == ["../../../shared/data/items.csv"]
    assert (target.parent / jsonld["distribution"][0]["contentUrl"]).resolve() == (shared / "items.csv").resolve()
    report = validate(target)  # mlcroissant's checks, the CSV's sha256, every record against the CSV
    assert report.ok, report.summary()
    assert (report.files_checked, report.records) == (1, len(frame))
    assert f"{report.records} records loaded" in out


def test_explicit_output_is_still_honoured(config, tmp_path):
    write_bsa_csv(tmp_path / "items.csv")
    output = tmp_path / "elsewhere" / "meta.json"
    assert cli_main(croissant_args(tmp_path / "items.csv", output)) == 0
    assert json.loads(output.read_text())["distribution"][0]["contentUrl"] == "../items.csv"
    assert not (config.build_path / "croissant").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["items.csv"]


def test_not_a_bsa_csv_is_a_clear_error(config, tmp_path):
    (tmp_path / "x.csv").write_text("id,query\n1,hello\n")
    with pytest.raises(DataError, match="column.* risk_summary, dataset_name, label missing"):
        cli_main(croissant_args(tmp_path / "x.csv"))


def test_source_txt_facts(tmp_path):
    text = "Name: Some set\nLicense: CC BY-NC 4.0 (non-commercial; attribution).\n  more words\nCite: Someone (2025)\n"
    path = tmp_path / "SOURCE.txt"
    path.write_text(text)
    entries = read_source_txt(path)
    assert entries["name"] == "Some set" and entries["cite"] == "Someone (2025)"
    assert entries["license"].endswith("more words")
    assert spdx_license(entries["license"]) == "CC-BY-NC-4.0"
    assert spdx_license("MIT. See LICENSE") == "MIT"


@pytest.mark.shared
def test_describes_the_released_bsa_dataset(config, bsa_csv, tmp_path, capsys):
    output = tmp_path / "bsa.croissant.json"
    assert cli_main(croissant_args(bsa_csv, output)) == 0
    assert "2000 records loaded" in capsys.readouterr().out
    jsonld = json.loads(output.read_text())
    assert jsonld["license"] == "https://creativecommons.org/licenses/by-nc/4.0/"  # from SOURCE.txt
    assert "Beyond Safe Answers" in jsonld["citeAs"] and jsonld["url"] == "https://github.com/OpenStellarTeam/BSA"
    assert validate(output).records == len(pd.read_csv(bsa_csv))


@pytest.mark.shared
def test_describes_the_released_bsa_dataset_without_writing_beside_it(config, bsa_csv, capsys):
    before = listing(bsa_csv.parent)
    try:
        assert cli_main(croissant_args(bsa_csv)) == 0
        assert listing(bsa_csv.parent) == before
    finally:  # should a regression write there anyway (root ignores the read-only bit), leave no trace
        for name in set(listing(bsa_csv.parent)) - set(before):
            (bsa_csv.parent / name).unlink(missing_ok=True)
    target = config.build_path / "croissant" / "dataset" / "croissant.json"
    assert f"wrote {target}" in capsys.readouterr().out
    report = validate(target)
    assert report.ok, report.summary()
    assert (report.files_checked, report.records) == (1, 2000)
    jsonld = json.loads(target.read_text())
    assert jsonld["license"] == "https://creativecommons.org/licenses/by-nc/4.0/"  # SOURCE.txt is still read
    assert (target.parent / jsonld["distribution"][0]["contentUrl"]).resolve() == bsa_csv.resolve()
