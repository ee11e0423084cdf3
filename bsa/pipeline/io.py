"""Read and write tables by file extension (JSONL, CSV, Parquet), atomically, with precise errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from bsa.pipeline.errors import DataError

FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".tsv": "tsv"}


def table_format(path: str | Path) -> str:
    """The format of a table file, from its extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(path, f"unknown table format '{suffix}' (use one of {', '.join(FORMATS)})")
    return FORMATS[suffix]


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(path, f"invalid UTF-8 (byte {raw[err.start]:#04x} at offset {err.start})", line) from err


def read_jsonl(path: str | Path, on_error: str = "raise") -> tuple[list[dict], list[dict]]:
    """Rows of a JSON Lines file, and the lines that failed (when on_error='reject').

    Every row gets `_line` (its 1-based line number) so later errors can point at it.
    """
    path = Path(path)
    text = _decode(path, path.read_bytes())
    rows, bad = [], []
    # lines end at \n only: str.splitlines would also split inside a value at U+2028, U+2029 or U+0085,
    # which json.dumps(ensure_ascii=False) writes as they are (a trailing \r is JSON whitespace)
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object, got {type(row).__name__}")
        except ValueError as err:
            if on_error == "raise":
                raise DataError(path, f"malformed JSON ({err})", number) from err
            bad.append({"_line": number, "_raw": line, "reject_reason": "malformed_json", "reject_detail": str(err)})
            continue
        row["_line"] = number
        rows.append(row)
    return rows, bad


def read_table(path: str | Path, on_error: str = "raise", allow_empty: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A table file as a DataFrame with a `_line` column, plus a frame of rows that could not be parsed.

    `_line` says where a row sits in the file, for error messages, in every format: the physical line for
    JSON Lines (blank lines skipped), the record's line counting the header as line 1 for CSV/TSV (equal to
    the physical line unless an earlier value spans lines), and the 1-based row number for JSON and Parquet,
    which have no lines to speak of. A Parquet file that already holds `_line` (ingest's rejects keep the line
    of their source) keeps it. An empty file is an error: it almost always means a failed export upstream.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty")
    fmt = table_format(path)
    bad = pd.DataFrame()
    if fmt == "jsonl":
        rows, bad_rows = read_jsonl(path, on_error)
        frame = pd.DataFrame(rows)
        bad = pd.DataFrame(bad_rows)
    elif fmt == "json":
        data = json.loads(_decode(path, path.read_bytes()))
        if isinstance(data, dict):  # {id: {...}} or {"data": [...]}
            data = data.get("data", data.get("rows")) or [{"id": k, **v} for k, v in data.items()]
        frame = pd.DataFrame(data)
        frame["_line"] = range(1, len(frame) + 1)
    elif fmt in ("csv", "tsv"):
        text = _decode(path, path.read_bytes())
        if not text.strip():
            raise DataError(path, "file is empty")
        import io as _io

        try:
            frame = pd.read_csv(_io.StringIO(text), sep="\t" if fmt == "tsv" else ",", dtype=str,
                                keep_default_na=False)
        except pd.errors.ParserError as err:
            raise DataError(path, f"malformed CSV ({err})") from err
        # pandas does not expose physical line numbers for quoted multi-line rows: record the row index
        # (header = line 1) which equals the line number for single-line rows.
        frame["_line"] = range(2, len(frame) + 2)
    else:
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises many types
            raise DataError(path, f"unreadable Parquet ({err})") from err
        if "_line" not in frame.columns:
            frame["_line"] = range(1, len(frame) + 1)
    if frame.empty and bad.empty and not allow_empty:
        raise DataError(path, "file has no rows")
    return frame, bad


def load_table(path: str | Path) -> pd.DataFrame:
    """A table for processing (build outputs and the like), errors raised: `read_table`'s frame, `_line`
    included whatever the format. An empty Parquet file is allowed (a stage may keep nothing).

    Code that hands the rows on as records (the runner, to a stage) drops `_line` itself.
    """
    frame, _ = read_table(path, allow_empty=Path(path).suffix.lower() == ".parquet")
    return frame


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed onto it only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; released files should be readable like any other
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and value != value:  # NaN
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame atomically in the format of the path's extension."""
    path = Path(path)
    fmt = table_format(path)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            frame.to_parquet(tmp, index=False)
        elif fmt in ("csv", "tsv"):
            frame.to_csv(tmp, index=False, sep="\t" if fmt == "tsv" else ",")
        elif fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as out:
                for row in frame.to_dict(orient="records"):
                    out.write(json.dumps({k: _jsonable(v) for k, v in row.items()}, ensure_ascii=False) + "\n")
        else:
            rows = [{k: _jsonable(v) for k, v in r.items()} for r in frame.to_dict(orient="records")]
            tmp.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_json(data: Any, path: str | Path) -> Path:
    """Write JSON atomically (UTF-8, indented, keys in insertion order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n", encoding="utf-8")
    return Path(path)


def write_text(text: str, path: str | Path) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
