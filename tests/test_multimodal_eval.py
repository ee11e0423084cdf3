"""The evaluation of image + text benchmarks: loading, messages with images, judges, metrics, `bsa eval`."""

from __future__ import annotations

import csv

import pytest

from bsa.multimodal import fields
from bsa.multimodal.benchmark import IMAGE_PATH, MIME, TYPOGRAPHY, image_in_words, load_multimodal
from bsa.pipeline.errors import DataError
from tests.mm_support import COLUMNS, ITEMS, image_sha256, write_benchmark


def _rewrite(path, column, row_index, value):
    rows = list(csv.reader(path.open(encoding="utf-8")))
    rows[row_index + 1][COLUMNS.index(column)] = value
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


# -- 1. loading and validation -------------------------------------------------------------------------------

def test_benchmark_loads_with_images_flags_and_hashes(tmp_path):
    frame = load_multimodal(write_benchmark(tmp_path))
    assert list(frame["id"]) == [item[0] for item in ITEMS]
    assert list(frame[fields.COMBINATION]) == ["RIRT", "RIST", "SIRT", "SIST", "SIST", "benign", "benign"]
    assert frame[fields.IMG_RISK].tolist() == [True, True, False, False, False, False, False]
    assert frame[fields.TEXT_RISK].tolist() == [True, False, True, False, False, False, False]
    assert frame.at[1, fields.IMAGE_SHA256] == image_sha256(tmp_path, "rist-1")
    assert frame.at[0, IMAGE_PATH] == str((tmp_path / "images" / "rirt-1.png").resolve())
    assert set(frame[MIME]) == {"image/png"}
    assert frame.at[2, fields.CATEGORY_LEVELS[2]] is None  # an empty deeper level stays empty
    assert image_in_words(frame.iloc[1].to_dict()) == (TYPOGRAPHY, "homemade explosive")


@pytest.mark.parametrize(("column", "row", "value", "message"), [
    (fields.IMAGE, 2, "images/absent.png", "absent.png"),
    (fields.IMG_RISK, 3, "maybe", "'maybe' is not a boolean"),
    (fields.COMBINATION, 0, "RIXT", "unknown combination 'RIXT'"),
    (fields.COMBINATION, 1, "SIRT", "combination SIRT disagrees with img_risk=True and text_risk=False"),
    (fields.CATEGORY_LEVELS[0], 4, "", "needs its primary category"),
    ("id", 5, "rirt-1", "duplicate id rirt-1 \\(first on line 2\\)"),
    ("text", 6, " ", "empty value"),
    (fields.RENDER_SPEC, 1, "{not json", "not a render spec"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, column, row, value, message):
    path = write_benchmark(tmp_path)
    _rewrite(path, column, row, value)
    with pytest.raises(DataError, match=message) as err:
        load_multimodal(path)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), row + 2, column)


def test_unreadable_image_and_wrong_hash_are_errors(tmp_path):
    path = write_benchmark(tmp_path)
    (tmp_path / "images" / "sirt-1.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="sirt-1.png: not a readable image") as err:
        load_multimodal(path)
    assert (err.value.line, err.value.field) == (4, fields.IMAGE)
    path = write_benchmark(tmp_path / "again")
    rows = list(csv.reader(path.open(encoding="utf-8")))
    rows[0].append(fields.IMAGE_SHA256)
    for row in rows[1:]:
        row.append("0" * 64 if row[0] == "sist-1" else "")
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    with pytest.raises(DataError, match="not the recorded one") as err:
        load_multimodal(path)
    assert (err.value.line, err.value.field) == (5, fields.IMAGE_SHA256)


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "bench.csv"
    path.write_text("id,text,image\nx,hello,a.png\n", encoding="utf-8")
    with pytest.raises(DataError, match="missing column\\(s\\) lang, img_risk, text_risk, combination"):
        load_multimodal(path)
