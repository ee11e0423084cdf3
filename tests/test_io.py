"""bsa.pipeline.io: tables by extension, precise errors on bad input, atomic writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from bsa.pipeline.errors import DataError
from bsa.pipeline.io import (
    atomic_path,
    file_sha256,
    load_table,
    read_table,
    table_format,
    write_json,
    write_table,
)


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*rows: object) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


# -- reading -----------------------------------------------------------------------------------------------
def test_jsonl_rows_carry_their_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = write(tmp_path / "a.jsonl", jsonl({"text": "one"}, "", {"text": "three"}))
    frame, bad = read_table(path)
    assert frame["text"].tolist() == ["one", "three"]
    assert frame["_line"].tolist() == [1, 3]
    assert bad.empty


def test_jsonl_values_may_hold_unicode_line_separators(tmp_path):
    texts = ["a\u2028b", "c\u2029d", "e\x85f", "g\x1ch"]
    path = write_table(pd.DataFrame({"text": texts}), tmp_path / "a.jsonl")
    frame, _ = read_table(path)
    assert frame["text"].tolist() == texts and frame["_line"].tolist() == [1, 2, 3, 4]
    crlf = write(tmp_path / "b.jsonl", '{"text": "one"}\r\n{"text": "two"}\r\n')
    assert read_table(crlf)[0]["text"].tolist() == ["one", "two"]


def test_malformed_jsonl_line_raises_naming_file_and_line(tmp_path):
    path = write(tmp_path / "a.jsonl", jsonl({"text": "ok"}, '{"text": "broken"', {"text": "ok too"}))
    with pytest.raises(DataError) as caught:
        read_table(path)
    assert caught.value.line == 2
    assert caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}:2:")
    assert "malformed JSON" in str(caught.value)


def test_malformed_jsonl_line_becomes_a_reject_and_nothing_else_is_lost(tmp_path):
    path = write(tmp_path / "a.jsonl", jsonl({"text": "ok"}, '{"text": "broken"', {"text": "ok too"}, "[1, 2]"))
    frame, bad = read_table(path, on_error="reject")
    assert frame["text"].tolist() == ["ok", "ok too"]
    assert bad["_line"].tolist() == [2, 4]
    assert set(bad["reject_reason"]) == {"malformed_json"}
    assert bad["_raw"].tolist()[0] == '{"text": "broken"'
    assert "expected a JSON object" in bad["reject_detail"].tolist()[1]


def test_invalid_utf8_raises_naming_the_line(tmp_path):
    path = write(tmp_path / "a.jsonl", jsonl({"text": "fine"}, {"text": "fine"}).encode() + b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match="invalid UTF-8") as caught:
        read_table(path)
    assert caught.value.line == 3


def test_invalid_utf8_in_csv_raises_naming_the_line(tmp_path):
    path = write(tmp_path / "a.csv", b"text,label\nfine,safe\n\xff\xfe,unsafe\n")
    with pytest.raises(DataError, match="invalid UTF-8") as caught:
        read_table(path)
    assert (caught.value.path, caught.value.line) == (str(path), 3)


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", "", "file is empty"),
    ("empty.csv", "", "file is empty"),
    ("blank.jsonl", "\n\n  \n", "file has no rows"),
    ("header_only.csv", "text,label\n", "file has no rows"),
    ("blank.csv", "\n\n", "file is empty"),
])
def test_empty_inputs_are_errors(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=message) as caught:
        read_table(path)
    assert caught.value.path == str(path)


def test_missing_file_and_unknown_extension_are_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_table(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="unknown table format '.txt'"):
        table_format(tmp_path / "notes.txt")


def test_csv_keeps_values_as_text_and_numbers_lines_from_the_header(tmp_path):
    path = write(tmp_path / "a.csv", "\ufeffid,text,label\n007,NA,\n8,\"two\nlines\",unsafe\n")
    frame, _ = read_table(path)
    assert list(frame.columns) == ["id", "text", "label", "_line"]  # the BOM is not part of the first name
    assert frame["id"].tolist() == ["007", "8"]  # no int conversion, no lost leading zero
    assert frame["text"].tolist() == ["NA", "two\nlines"]  # "NA" is an instruction, not a missing value
    assert frame["label"].tolist() == ["", "unsafe"]
    assert frame["_line"].tolist() == [2, 3]


def test_malformed_csv_is_an_error(tmp_path):
    path = write(tmp_path / "a.csv", 'text,label\n"never closed,safe\n')
    with pytest.raises(DataError, match="malformed CSV"):
        read_table(path)


def test_tsv_and_json_tables(tmp_path):
    tsv, _ = read_table(write(tmp_path / "a.tsv", "text\tlabel\nhello, world\tsafe\n"))
    assert tsv["text"].tolist() == ["hello, world"]
    listed, _ = read_table(write(tmp_path / "list.json", json.dumps([{"id": 1, "q": "a"}, {"id": 2, "q": "b"}])))
    assert listed["q"].tolist() == ["a", "b"] and listed["_line"].tolist() == [1, 2]
    keyed, _ = read_table(write(tmp_path / "keyed.json", json.dumps({"x1": {"q": "a"}, "x2": {"q": "b"}})))
    assert keyed["id"].tolist() == ["x1", "x2"]
    wrapped, _ = read_table(write(tmp_path / "wrapped.json", json.dumps({"data": [{"q": "a"}]})))
    assert wrapped["q"].tolist() == ["a"]


def test_unreadable_parquet_is_an_error(tmp_path):
    with pytest.raises(DataError, match="unreadable Parquet"):
        read_table(write(tmp_path / "a.parquet", b"not parquet at all"))


# -- writing -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".json", ".tsv"])
def test_write_then_read_round_trips(tmp_path, suffix):
    frame = pd.DataFrame({"id": ["a", "b"], "text": ["first, \"quoted\"", "第二"]})
    path = write_table(frame, tmp_path / f"out{suffix}")
    back = load_table(path)
    assert back[["id", "text"]].to_dict(orient="records") == frame.to_dict(orient="records")


def test_parquet_round_trip_keeps_nullable_booleans(tmp_path):
    frame = pd.DataFrame({"is_risky": pd.array([True, None, False], dtype="boolean")})
    back = load_table(write_table(frame, tmp_path / "b.parquet"))
    assert list(back.columns) == ["is_risky", "_line"]  # `_line` as for every format (the row number)
    assert back["_line"].tolist() == [1, 2, 3]
    assert back["is_risky"].tolist()[0] is True and pd.isna(back["is_risky"][1])


# -- `_line`: where a row sits in its file, in every format ----------------------------------------------
LINES = {".jsonl": [1, 2, 3], ".csv": [2, 3, 4], ".tsv": [2, 3, 4], ".json": [1, 2, 3], ".parquet": [1, 2, 3]}


@pytest.mark.parametrize("suffix", list(LINES))
def test_read_table_and_load_table_both_number_rows_in_every_format(tmp_path, suffix):
    frame = pd.DataFrame({"id": ["a", "b", "c"], "text": ["one", "two", "three"]})
    path = write_table(frame, tmp_path / f"t{suffix}")
    read, _ = read_table(path)
    loaded = load_table(path)
    assert list(read.columns) == list(loaded.columns) == ["id", "text", "_line"]
    assert read["_line"].tolist() == loaded["_line"].tolist() == LINES[suffix]
    assert loaded[["id", "text"]].to_dict(orient="records") == frame.to_dict(orient="records")


def test_parquet_line_is_the_row_number_in_the_file(tmp_path):
    path = write_table(pd.DataFrame({"text": [f"row {i}" for i in range(5)]}), tmp_path / "p.parquet")
    frame = load_table(path)
    assert dict(zip(frame["text"], frame["_line"], strict=True)) == {
        "row 0": 1, "row 1": 2, "row 2": 3, "row 3": 4, "row 4": 5}


def test_a_stored_line_column_is_kept(tmp_path):
    # ingest's rejects are written with the line of their source: reading them back must not renumber it
    rejects = pd.DataFrame({"_line": [5, 9], "reject_reason": ["malformed_json", "missing_text"]})
    path = write_table(rejects, tmp_path / "00_ingest.rejects.parquet")
    assert read_table(path)[0]["_line"].tolist() == [5, 9]
    assert load_table(path)["_line"].tolist() == [5, 9]


def test_an_empty_parquet_loads_with_its_columns_but_read_table_refuses_it(tmp_path):
    path = write_table(pd.DataFrame({"id": pd.Series(dtype=object)}), tmp_path / "kept.parquet")
    empty = load_table(path)  # a stage may keep nothing
    assert len(empty) == 0 and list(empty.columns) == ["id", "_line"]
    with pytest.raises(DataError, match="file has no rows"):
        read_table(path)


def test_jsonl_writes_missing_values_as_null(tmp_path):
    frame = pd.DataFrame({"a": [1.5, float("nan")], "b": pd.array([True, None], dtype="boolean")})
    path = write_table(frame, tmp_path / "n.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"a": 1.5, "b": True}, {"a": None, "b": None}]


def test_atomic_write_leaves_the_old_file_when_the_block_fails(tmp_path):
    target = write(tmp_path / "keep.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]  # no temporary file left behind


def test_write_json_and_file_sha256(tmp_path):
    path = write_json({"b": 1, "a": "é"}, tmp_path / "sub" / "x.json")
    assert json.loads(path.read_text(encoding="utf-8")) == {"b": 1, "a": "é"}
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
