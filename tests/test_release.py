"""The release: BSA-format CSV, JSONL/Parquet with provenance, funnel, pictures and the dataset card."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from PIL import Image

from bsa.benchmark import BSA_COLUMNS, SCENARIOS, risk_labels
from bsa.pipeline.errors import DataError
from bsa.pipeline.layout import stage_paths
from bsa.pipeline.taxonomy import Taxonomy
from bsa.release.card import category_counts
from bsa.release.files import label_problem, license_url, release_dir, write_release
from tests.release_build import ORDER, ROOT, synthetic_records, write_synthetic_build

TAXONOMY = Taxonomy.load(ROOT / "configs/taxonomy/bsa.yaml")


@pytest.fixture
def release(tmp_path):
    """A synthetic build, released: (config, release dir)."""
    config = write_synthetic_build(tmp_path / "build")
    write_release(config)
    return config, release_dir(config)


def read_bsa_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_csv_has_exactly_bsa_columns_and_every_row(release):
    _, out = release
    records = synthetic_records()
    csv = read_bsa_csv(out / "benchmark.csv")
    assert list(csv.columns) == BSA_COLUMNS
    assert sorted(csv["id"]) == sorted(records["id"])
    assert set(csv["dataset_name"]) == set(SCENARIOS)
    by_id = records.set_index("id")
    for row in csv.itertuples(index=False):  # multi-line labels and summaries survive the round trip
        assert row.query == by_id.loc[row.id, "text"]
        assert row.label == by_id.loc[row.id, "label"]
        assert row.risk_summary == by_id.loc[row.id, "risk_summary"]
        assert row.dataset_name == by_id.loc[row.id, "scenario"]


def test_rows_are_grouped_by_scenario_in_bsa_order_keeping_stage_order(release):
    _, out = release
    csv = read_bsa_csv(out / "benchmark.csv")
    ranks = csv["dataset_name"].map(SCENARIOS.index).tolist()
    assert ranks == sorted(ranks)
    records = synthetic_records()
    for scenario in SCENARIOS:
        expected = records.loc[records["scenario"] == scenario, "id"].tolist()
        assert csv.loc[csv["dataset_name"] == scenario, "id"].tolist() == expected


def test_jsonl_and_parquet_hold_the_same_rows_with_provenance(release):
    _, out = release
    csv = read_bsa_csv(out / "benchmark.csv")
    lines = [json.loads(line) for line in (out / "benchmark.jsonl").read_text(encoding="utf-8").splitlines()]
    parquet = pd.read_parquet(out / "benchmark.parquet")
    assert [row["id"] for row in lines] == csv["id"].tolist() == parquet["id"].tolist()
    for column in ["seed_ids", "generator_model", "prompt_sha256", "difficulty_failed", "difficulty_results"]:
        assert column in lines[0] and column in parquet.columns
    assert "text" not in parquet.columns and "scenario" not in parquet.columns
    assert parquet["difficulty_failed"].dtype.kind == "i"
    assert parquet["is_risky"].isna().sum() == 1 and None in [row["is_risky"] for row in lines]
    pd.testing.assert_frame_equal(parquet[BSA_COLUMNS].astype(str), csv, check_dtype=False)


def test_funnel_text_lists_every_stage_in_order(release):
    _, out = release
    lines = (out / "funnel.txt").read_text().splitlines()[2:]
    assert [line.split()[0] for line in lines] == ["ingest", *ORDER]
    assert "too_short 5" in lines[1]


def test_pictures_are_pngs(release):
    _, out = release
    for name in ("funnel.png", "categories.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 150


def card_parts(out) -> tuple[dict, str]:
    text = (out / "README.md").read_text(encoding="utf-8")
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_card_front_matter_points_datasets_at_the_parquet(release):
    _, out = release
    header, _ = card_parts(out)
    assert header["license"] == "cc-by-4.0"
    assert header["language"] == ["en", "zh"]
    assert header["configs"][0]["data_files"] == [{"split": "test", "path": "benchmark.parquet"}]


def test_card_reports_counts_funnel_models_prompts_and_licences(release):
    config, out = release
    _, body = card_parts(out)
    records = synthetic_records()
    for scenario, count in records["scenario"].value_counts().items():
        assert f"| {scenario} | {count} |" in body
    assert f"| Total | {len(records)} |" in body
    assert "| Pornography | 0 | 0 | 0 | 0 |" in body  # empty categories are shown, not hidden
    assert "| clean | 38 | 30 | `too_short` 5, `control_chars` 3 |" in body
    assert "smollm2-135m-instruct" in body and "requests 12" in body
    assert "`prompts/en/synthesis_ro.md` | `" + "ab" * 32 in body
    assert "| demo-en | `data/demo/pool_en.jsonl` | CC-BY-4.0 (the project's own pool" in body
    assert "benchmark's licence) |  | 5 |" in body  # items whose seeds came from demo-en
    assert "| xstest | `corpora/xstest.csv` | CC-BY-4.0 | Röttger et al., XSTest (2024) | 1 |" in body
    assert "- annotations: `data/demo/annotations_en.jsonl`" in body and "- clean:" not in body
    assert "Tiny test set." in body  # the config's Responsible-AI text
    assert "](funnel.png)" in body and "](categories.png)" in body
    assert "built on 2026-01-02" in body


def test_source_without_licence_is_flagged(tmp_path):
    config = write_synthetic_build(tmp_path / "build", own_sources=[])
    write_release(config)
    _, body = card_parts(release_dir(config))
    assert "| demo-en | `data/demo/pool_en.jsonl` | not stated in the config" in body


def test_datasets_loads_the_release_offline(release, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    _, out = release
    loaded = datasets.load_dataset(str(out), split="test", cache_dir=str(tmp_path / "hf-cache"))
    csv = read_bsa_csv(out / "benchmark.csv")
    assert loaded.num_rows == len(csv)
    assert loaded["id"] == csv["id"].tolist()
    assert loaded["label"] == csv["label"].tolist()


def test_category_counts_count_a_pair_under_query_a():
    frame = pd.DataFrame({"dataset_name": ["Cognitive Shortcut", "Risk Omission"],
                          "label": ["Query A: Rumors-Rumors with Negative Impact\nQuery B: Pornography-Child Pornography",
                                    "Rumors-Rumors with Negative Impact"]})
    counts = category_counts(frame, list(TAXONOMY.categories))
    assert counts.loc["Rumors", "Total"] == 2
    assert counts.loc["Pornography", "Total"] == 0
    assert counts.loc["Total", "Total"] == 2


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"scenario": "Risk omission"}, "scenario", "is not one of"),
    ({"label": "Rumors-Rumors with Negative Impact"}, "label", "'Query A: Cat-Sub' and 'Query B: Cat-Sub'"),
    ({"label": "Query A: Rumors-Gossip\nQuery B: Rumors-Rumors with Negative Impact"}, "label", "'Rumors-Gossip'"),
    ({"risk_summary": " "}, "risk_summary", "empty risk_summary"),
    ({"id": "not-an-id"}, "id", "32 hexadecimal digits"),
])
def test_a_row_that_breaks_bsa_format_stops_the_release(tmp_path, change, field, message):
    records = synthetic_records()  # row 1 is a Cognitive Shortcut item
    for column, value in change.items():
        records.loc[0, column] = value
    config = write_synthetic_build(tmp_path / "build", records)
    with pytest.raises(DataError) as err:
        write_release(config)
    assert err.value.field == field and err.value.line == 1
    assert message in err.value.message
    assert str(stage_paths(config, ORDER[-1]).output) == err.value.path


def test_repeated_id_and_missing_columns_are_errors(tmp_path):
    records = synthetic_records()
    records.loc[2, "id"] = records.loc[1, "id"]
    with pytest.raises(DataError, match="appears twice") as err:
        write_release(write_synthetic_build(tmp_path / "a", records))
    assert err.value.line == 3
    with pytest.raises(DataError, match="missing column") as err:
        write_release(write_synthetic_build(tmp_path / "b", synthetic_records().drop(columns=["scenario"])))
    assert err.value.field == "scenario"


def test_missing_last_stage_output_is_a_clear_error(tmp_path):
    config = write_synthetic_build(tmp_path / "build")
    stage_paths(config, ORDER[-1]).output.unlink()
    with pytest.raises(DataError, match="run `bsa build` first"):
        write_release(config)


def test_label_rules():
    assert label_problem("Rumors-Rumors with Negative Impact", "Over Sensitivity", TAXONOMY) is None
    assert label_problem("Specially Regulated Items-Military and Police-Controlled Items", "Risk Omission",
                         TAXONOMY) is None  # split on the first '-'
    assert "one 'Category-Subcategory'" in label_problem("Query A: Rumors-Rumors with Negative Impact\n"
                                                          "Query B: Rumors-Rumors with Negative Impact",
                                                          "Risk Omission", TAXONOMY)
    assert label_problem("Rumors", "Risk Omission", TAXONOMY) is not None
    assert risk_labels("Query A: A-b\nQuery B: C-d") == ["A-b", "C-d"]


def test_license_urls():
    assert license_url("CC-BY-4.0") == "https://creativecommons.org/licenses/by/4.0/"
    assert license_url("CC BY-NC 4.0") == "https://creativecommons.org/licenses/by-nc/4.0/"
    assert license_url("cc-by-nc-sa-4.0") == "https://creativecommons.org/licenses/by-nc-sa/4.0/"
    assert license_url("MIT") is None
