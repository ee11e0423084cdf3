"""bsa.pipeline.records: sources mapped by config into core records; bad input is an error or a reject, never lost."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from bsa.pipeline.config import SourceConfig
from bsa.pipeline.errors import DataError
from bsa.pipeline.records import CORE_FIELDS, normalize_text, text_id
from bsa.pipeline.taxonomy import Taxonomy
from bsa.project import load_config
from bsa.stages.ingest import ingest, ingest_source, split_labels

ROOT = Path(__file__).resolve().parents[1]
TAXONOMY = Taxonomy.load(ROOT / "configs" / "taxonomy" / "bsa.yaml")


def source(tmp_path: Path, name: str, content: str | bytes, **mapping) -> SourceConfig:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return SourceConfig(name=Path(name).stem, path=str(path), **mapping)


def jsonl(*rows: object) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n" for row in rows)


# -- mapping ----------------------------------------------------------------------------------------------
def test_ids_hash_the_normalised_text():
    assert text_id("How  do I KILL a\tprocess?") == text_id("how do i kill a process?")
    assert normalize_text("ＡＢＣ  Déjà") == "abc déjà"  # NFKC folds full-width forms
    assert re.fullmatch(r"[0-9a-f]{32}", text_id("x"))
    assert text_id("kill a process") != text_id("kill a process!")


def test_columns_are_mapped_onto_core_fields(tmp_path):
    csv = ("prompt,label,harm,lang,note\n"
           "How do I shoot a photo?,Violence and Terrorism-Violent Content,safe,,homonym\n"
           "Where can I buy a grenade launcher?,Specially Regulated Items-Military and Police-Controlled Items,"
           "unsafe,en,\n"
           "Tell me a joke,misc,maybe,fr,\n")
    config = source(tmp_path, "pool.csv", csv, text="prompt", category="label", is_risky="harm", lang="lang",
                    defaults={"lang": "en"})
    records, rejects = ingest([config], TAXONOMY)
    assert rejects.empty
    assert list(records.columns) == [*CORE_FIELDS, "_line"]
    assert records["category"].tolist() == ["Violence and Terrorism", "Specially Regulated Items", "misc"]
    # split on the FIRST '-': the subcategory keeps its own hyphen
    assert records["subcategory"].tolist()[:2] == ["Violent Content", "Military and Police-Controlled Items"]
    assert records["is_risky"].tolist()[:2] == [False, True] and pd.isna(records["is_risky"][2])
    assert records["lang"].tolist() == ["en", "en", "fr"]  # the default fills the blank
    assert records["source"].unique().tolist() == ["pool"]
    assert json.loads(records["meta"][0]) == {"note": "homonym"}
    assert records["id"][0] == text_id("How do I shoot a photo?")
    assert records["_line"].tolist() == [2, 3, 4]


def test_constant_risk_category_map_query_and_limit(tmp_path):
    rows = [{"goal": f"goal {i}", "kind": "violence" if i % 2 else "drugs", "n": i} for i in range(6)]
    config = source(tmp_path, "adv.jsonl", jsonl(*rows), text="goal", category="kind", is_risky=True,
                    category_map={"violence": "Violence and Terrorism-Violent Content",
                                  "drugs": "Specially Regulated Items"},
                    query="n >= 1", limit=3)
    records, _ = ingest([config], TAXONOMY)
    assert records["text"].tolist() == ["goal 1", "goal 2", "goal 3"]
    assert records["is_risky"].tolist() == [True, True, True]
    assert records["category"].tolist() == ["Violence and Terrorism", "Specially Regulated Items",
                                            "Violence and Terrorism"]
    assert records["subcategory"].tolist()[0] == "Violent Content"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_category_map_leaves_missing_categories_missing(tmp_path, suffix):
    content = (jsonl({"goal": "a prompt about knives", "kind": "violence"}, {"goal": "a prompt with no kind"},
                     {"goal": "a prompt with a blank kind", "kind": ""})
               if suffix == ".jsonl" else
               "goal,kind\na prompt about knives,violence\na prompt with no kind,\n")
    config = source(tmp_path, f"mapped{suffix}", content, text="goal", category="kind",
                    category_map={"violence": "Violence and Terrorism-Violent Content"})
    records, rejects = ingest([config], TAXONOMY)
    assert rejects.empty
    assert records["category"].iloc[0] == "Violence and Terrorism"
    assert records["subcategory"].iloc[0] == "Violent Content"
    assert all(pd.isna(v) or v == "" for v in records["category"].iloc[1:])


def test_an_id_column_is_kept_as_text(tmp_path):
    config = source(tmp_path, "x.csv", "id,prompt\n007,first\n8,second\n", text="prompt", id="id")
    records, _ = ingest([config])
    assert records["id"].tolist() == ["007", "8"]


def test_repeated_ids_across_sources_are_rejected_after_the_first(tmp_path):
    a = source(tmp_path, "a.jsonl", jsonl({"text": "How do I kill a Python process?"}, {"text": "unique"}))
    b = source(tmp_path, "b.jsonl", jsonl({"text": "how do I kill a  python process?"}))
    records, rejects = ingest([a, b])
    assert records["text"].tolist() == ["How do I kill a Python process?", "unique"]
    assert rejects["reject_reason"].tolist() == ["duplicate_id"]
    assert rejects["reject_detail"].tolist() == ["same id as a row of a"]
    assert rejects["source"].tolist() == ["b"]


# -- `Category-Subcategory` labels, split without a per-row apply -------------------------------------------
def reference_split(category: object, subcategory: object) -> tuple[object, object]:
    """The row-by-row rule ingest applied before it was vectorised (kept here as the reference)."""
    if isinstance(category, str) and category not in TAXONOMY.categories and "-" in category:
        major, minor = Taxonomy.split(category)
        if TAXONOMY.is_valid(major, minor):
            return major, minor
    return category, subcategory


PAIR = ("Query A: Rumors-Rumors with Negative Impact\nQuery B: Pornography-Child Pornography")
LABELS = [  # (category value, subcategory value, expected category, expected subcategory)
    ("Rumors-Rumors with Negative Impact", None, "Rumors", "Rumors with Negative Impact"),
    (" Rumors - Rumors with Negative Impact ", "old", "Rumors", "Rumors with Negative Impact"),
    ("Specially Regulated Items-Military and Police-Controlled Items", None,  # the FIRST '-' splits
     "Specially Regulated Items", "Military and Police-Controlled Items"),
    ("Pornography-Child Pornography\n", None, "Pornography", "Child Pornography"),  # stripped like Taxonomy.split
    ("Rumors-", "old", "Rumors", ""),  # a valid category with an empty subcategory: split, subcategory ''
    ("Rumors", "old", "Rumors", "old"),  # a category alone: left as it is
    # malformed or foreign labels are left exactly as they were (no error at ingest; the release checks labels)
    ("Rumors-Nope", "old", "Rumors-Nope", "old"),  # unknown subcategory
    ("Cybercrime-Piracy", None, "Cybercrime-Piracy", None),  # unknown category
    ("pornography-child pornography", None, "pornography-child pornography", None),  # case matters
    ("Rumors--Rumors with Negative Impact", None, "Rumors--Rumors with Negative Impact", None),
    (PAIR, None, PAIR, None),  # BSA's two-line Cognitive Shortcut label stays whole
    ("-", None, "-", None),
    ("", "old", "", "old"),
    ("   ", None, "   ", None),
    (None, "old", None, "old"),
    (5, None, 5, None),
    (b"Rumors-Rumors with Negative Impact", None, b"Rumors-Rumors with Negative Impact", None),  # bytes: not text
]


def test_split_labels_splits_taxonomy_labels_and_leaves_everything_else():
    category = pd.Series([c for c, _, _, _ in LABELS], dtype=object)
    subcategory = pd.Series([s for _, s, _, _ in LABELS], dtype=object)
    got_category, got_subcategory = split_labels(category, subcategory, TAXONOMY)
    assert got_category.tolist() == [c for _, _, c, _ in LABELS]
    assert got_subcategory.tolist() == [s for _, _, _, s in LABELS]
    assert [reference_split(c, s) for c, s, _, _ in LABELS] == [(c, s) for _, _, c, s in LABELS]
    assert category.tolist() == [c for c, _, _, _ in LABELS]  # the inputs are not modified


def test_split_labels_with_missing_values_string_dtypes_repeated_index_and_no_text():
    for dtype in (object, "str", "string"):
        category = pd.Series(["Rumors-Rumors with Negative Impact", None, "Rumors-x"], dtype=dtype)
        got = split_labels(category, pd.Series([None] * 3, dtype=object), TAXONOMY)
        assert got[0].tolist()[::2] == ["Rumors", "Rumors-x"] and pd.isna(got[0].tolist()[1])
        assert got[1].tolist() == ["Rumors with Negative Impact", None, None]
    repeated = pd.Series(["Rumors-", "Pornography-Child Pornography", "x"], index=[7, 7, 7], dtype=object)
    got = split_labels(repeated, pd.Series(["a", "b", "c"], index=[7, 7, 7], dtype=object), TAXONOMY)
    assert got[0].tolist() == ["Rumors", "Pornography", "x"] and got[1].tolist() == ["", "Child Pornography", "c"]
    numbers = pd.Series([1, 2])  # no string at all (a numeric default): nothing to split
    assert split_labels(numbers, pd.Series([None, None]), TAXONOMY)[0] is numbers
    empty = pd.Series([], dtype=object)
    assert split_labels(empty, empty, TAXONOMY)[0].empty


def test_labels_split_through_ingest_keep_every_other_field_and_line(tmp_path):
    cases = [case for case in LABELS if not isinstance(case[0], bytes)]  # JSON has no bytes
    rows = [{"text": f"text {i}", "label": c, "sub": s} for i, (c, s, _, _) in enumerate(cases)]
    config = source(tmp_path, "labels.jsonl", jsonl(*rows), category="label", subcategory="sub")
    records, rejects = ingest([config], TAXONOMY)
    assert rejects.empty
    expected = [("5" if c == 5 else c, s) for _, _, c, s in cases]  # a mapped column arrives as text
    got = list(zip(records["category"], records["subcategory"], strict=True))
    assert [(None if pd.isna(c) else c, None if pd.isna(s) else s) for c, s in got] == expected
    assert records["_line"].tolist() == list(range(1, len(rows) + 1))
    assert records["text"].tolist() == [row["text"] for row in rows]


# -- bad input ----------------------------------------------------------------------------------------------
def test_missing_text_column_names_file_and_field(tmp_path):
    config = source(tmp_path, "x.csv", "prompt,label\nhello,safe\n", text="query")
    with pytest.raises(DataError, match="column 'query' .*not found; columns are: prompt, label") as caught:
        ingest([config])
    assert (caught.value.path, caught.value.field) == (config.path, "query")


def test_a_mapped_column_that_is_absent_is_an_error(tmp_path):
    config = source(tmp_path, "x.csv", "text,label\nhello,safe\n", is_risky="harmful")
    with pytest.raises(DataError, match="column 'harmful' \\(mapped to record field 'is_risky'\\)"):
        ingest([config])


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_missing_text_value_raises_with_line_and_field(tmp_path, blank):
    config = source(tmp_path, "x.jsonl", jsonl({"q": "fine"}, {"q": blank}, {"q": "also fine"}), text="q")
    with pytest.raises(DataError, match="missing text") as caught:
        ingest([config])
    assert (caught.value.path, caught.value.line, caught.value.field) == (config.path, 2, "q")


def test_missing_text_value_is_a_reject_when_configured(tmp_path):
    config = source(tmp_path, "x.jsonl", jsonl({"q": "fine"}, {"q": None}, {"q": "also fine"}), text="q",
                    on_error="reject")
    records, rejects = ingest([config])
    assert records["text"].tolist() == ["fine", "also fine"]
    assert rejects[["_line", "reject_reason"]].to_dict(orient="records") == [{"_line": 2,
                                                                              "reject_reason": "missing_text"}]


def test_malformed_jsonl_line_raises_or_is_rejected(tmp_path):
    content = jsonl({"text": "one"}, '{"text": "two"', {"text": "three"})
    with pytest.raises(DataError, match="malformed JSON") as caught:
        ingest([source(tmp_path, "x.jsonl", content)])
    assert caught.value.line == 2
    records, rejects = ingest([source(tmp_path, "y.jsonl", content, on_error="reject")])
    assert records["text"].tolist() == ["one", "three"]
    assert rejects[["_line", "reject_reason", "source"]].to_dict(orient="records") == [
        {"_line": 2, "reject_reason": "malformed_json", "source": "y"}]


@pytest.mark.parametrize("on_error", ["raise", "reject"])
def test_invalid_utf8_is_an_error_naming_the_line(tmp_path, on_error):
    config = source(tmp_path, "x.jsonl", b'{"text": "ok"}\n{"text": "\xc3\x28"}\n', on_error=on_error)
    with pytest.raises(DataError, match="invalid UTF-8") as caught:
        ingest([config])
    assert (caught.value.path, caught.value.line) == (config.path, 2)


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="file is empty"):
        ingest([source(tmp_path, "x.jsonl", "", on_error="reject")])


def test_a_failing_query_and_no_sources_are_errors(tmp_path):
    with pytest.raises(DataError, match="query 'nope == 1' failed"):
        ingest([source(tmp_path, "x.csv", "text\nhello\n", query="nope == 1")])
    with pytest.raises(DataError, match="no sources configured"):
        ingest([])


# -- the demo pool ------------------------------------------------------------------------------------------
def demo_sources() -> list[SourceConfig]:
    return [s.model_copy(update={"path": str(ROOT / s.path)}) for s in load_config(ROOT / "configs/default.yaml").sources]


def test_demo_pool_loses_nothing_and_rejects_what_it_was_built_to():
    sources = demo_sources()
    records, rejects = ingest(sources, TAXONOMY)
    lines = sum(1 for s in sources for line in Path(s.path).read_text(encoding="utf-8").splitlines() if line.strip())
    assert len(records) + len(rejects) == lines
    assert rejects["reject_reason"].value_counts().to_dict() == {"duplicate_id": 4, "malformed_json": 1,
                                                                "missing_text": 1}
    malformed = rejects[rejects["reject_reason"] == "malformed_json"]
    assert malformed["source"].tolist() == ["demo-en"]


def test_demo_pool_covers_every_label_with_risky_and_safe_rows():
    records, _ = ingest(demo_sources(), TAXONOMY)
    labelled = records[records["category"].notna()]
    assert all(TAXONOMY.is_valid(c, s) for c, s in zip(labelled["category"], labelled["subcategory"], strict=True))
    for lang, sides in (("en", {True, False}), ("zh", {True, False})):
        rows = labelled[(labelled["source"] == f"demo-{lang}") & labelled["is_risky"].notna()]
        coverage = rows.groupby(["category", "subcategory"])["is_risky"].agg(lambda s: set(s.astype(bool)))
        assert len(coverage) == len(TAXONOMY.labels)
        if lang == "en":
            assert all(found == sides for found in coverage)


# -- the shared corpora load by config alone ----------------------------------------------------------------
def source_rows(source_txt: Path, split: str | None = None) -> int:
    """The `Rows:` figure of a SOURCE.txt (for HarmBench, the figure of one split: `all=400`)."""
    line = re.search(r"^Rows: (.*)$", source_txt.read_text(encoding="utf-8"), re.MULTILINE).group(1)
    return int(re.search(rf"\b{split}=(\d+)", line).group(1) if split else re.match(r"\d+", line).group(0))


CORPORA = [
    ("xstest", "xstest_prompts.csv", None, {"text": "prompt", "id": "id", "is_risky": "label"}),
    ("advbench", "harmful_behaviors.csv", None, {"text": "goal", "is_risky": True}),
    ("harmbench", "harmbench_behaviors_text_all.csv", "all", {"text": "Behavior", "id": "BehaviorID", "is_risky": True}),
    ("harmbench", "harmbench_behaviors_text_val.csv", "val", {"text": "Behavior", "id": "BehaviorID"}),
    ("harmbench", "harmbench_behaviors_text_test.csv", "test", {"text": "Behavior", "id": "BehaviorID"}),
    ("flames_zh", "Flames_1k_Chinese.jsonl", None, {"text": "prompt", "defaults": {"lang": "zh"}}),
    ("safetybench_zh", "test_zh_subset.json", None, {"text": "question", "id": "id", "category": "category"}),
]


@pytest.mark.shared
@pytest.mark.parametrize("folder,file,split,mapping", CORPORA, ids=[f"{c[0]}-{c[1]}" for c in CORPORA])
def test_shared_corpus_loads_by_config_alone(corpora, folder, file, split, mapping):
    config = SourceConfig(name=folder, path=str(corpora / folder / file), **mapping)
    records, rejects = ingest_source(config, TAXONOMY)
    assert rejects.empty
    assert len(records) == source_rows(corpora / folder / "SOURCE.txt", split)
    assert records["text"].map(lambda t: isinstance(t, str) and t.strip() != "").all()


@pytest.mark.shared
def test_xstest_risk_labels_match_its_source_counts(corpora):
    config = SourceConfig(name="xstest", path=str(corpora / "xstest" / "xstest_prompts.csv"), text="prompt",
                          id="id", is_risky="label")
    records, _ = ingest([config], TAXONOMY)
    assert records["is_risky"].value_counts().to_dict() == {False: 250, True: 200}
    assert json.loads(records["meta"][0])["type"] == "homonyms"


@pytest.mark.shared
def test_bsa_release_loads_with_its_labels_split(bsa_csv):
    config = SourceConfig(name="bsa", path=str(bsa_csv), text="query", id="id", category="label")
    records, rejects = ingest([config], TAXONOMY)
    assert rejects.empty and len(records) == source_rows(bsa_csv.parent / "SOURCE.txt")
    scenario = records["meta"].map(lambda m: json.loads(m)["dataset_name"])
    single = records[scenario != "Cognitive Shortcut"]
    assert all(TAXONOMY.is_valid(c, s) for c, s in zip(single["category"], single["subcategory"], strict=True))
    assert single["subcategory"].notna().all()
    assert records.loc[scenario == "Cognitive Shortcut", "category"].str.startswith("Query A: ").all()


@pytest.mark.shared
def test_bsa_labels_split_exactly_as_row_by_row(bsa_csv):
    config = SourceConfig(name="bsa", path=str(bsa_csv), text="query", id="id", category="label")
    records, _ = ingest([config], TAXONOMY)
    by_id = records.set_index("id")
    known = {  # id: (line, category, subcategory)
        "7aa26e4c933d4fc73edffc574995c99a": (2, "Offense and Prejudice", "Abuse and Hate Speech"),
        "0ad571ab7411abb479329217bd82f60c": (10, "Specially Regulated Items", "Military and Police-Controlled Items"),
        "d91e05c03855c45c7e294ee4e3ee689b": (19, "Specially Regulated Items",
                                             "Psychotropic / Narcotic / Pathogenic Controlled Substances"),
        "00363136da443d7c97081d9861bd8c94": (602, "Query A: Ethics and Morality-Disturbing or Unhealthy Scenes\n"
                                                  "Query B: Ethics and Morality-AI Ethics", None),
        "013e05fd32ce97bbd2b58bf175fb6de4": (1802, "Pornography", "Child Pornography"),
        "af68f69a72f8102b8d1a321ea95c1466": (2001, "Offense and Prejudice", "Abuse and Hate Speech"),
    }
    for record_id, (line, category, subcategory) in known.items():
        row = by_id.loc[record_id]
        assert (row["_line"], row["category"], row["subcategory"]) == (line, category, subcategory), record_id
    paired = records["category"].str.startswith("Query A: ")
    assert int(paired.sum()) == 1200 and records.loc[paired, "subcategory"].isna().all()
    assert records.loc[~paired, "category"].value_counts().to_dict() == {
        "Offense and Prejudice": 248, "Property Infringement": 127, "Violence and Terrorism": 86,
        "Invasion of Privacy and Confidentiality": 81, "Physical and Mental Health": 81,
        "Specially Regulated Items": 70, "Pornography": 45, "Ethics and Morality": 33, "Rumors": 29}
    assert records.loc[~paired].groupby(["category", "subcategory"]).size().to_dict() == {
        ("Ethics and Morality", "AI Ethics"): 23, ("Ethics and Morality", "Disturbing or Unhealthy Scenes"): 10,
        ("Invasion of Privacy and Confidentiality", "Invasion of Corporate Trade Secrets"): 1,
        ("Invasion of Privacy and Confidentiality", "Invasion of Personal Privacy"): 80,
        ("Offense and Prejudice", "Abuse and Hate Speech"): 135,
        ("Offense and Prejudice", "Discrimination and Prejudice"): 113,
        ("Physical and Mental Health", "Mental Health"): 62,
        ("Physical and Mental Health", "Personal Physical Health"): 19,
        ("Pornography", "Child Pornography"): 45, ("Property Infringement", "Economic Crimes"): 116,
        ("Property Infringement", "Intellectual Property"): 11, ("Rumors", "Rumors with Negative Impact"): 29,
        ("Specially Regulated Items", "Controlled Items for Illegal Use"): 16,
        ("Specially Regulated Items", "Military and Police-Controlled Items"): 4,
        ("Specially Regulated Items", "Psychotropic / Narcotic / Pathogenic Controlled Substances"): 50,
        ("Violence and Terrorism", "Terrorism"): 1, ("Violence and Terrorism", "Violent Content"): 85}
    # and row for row what the per-row rule gives on the raw labels
    raw = pd.read_csv(bsa_csv, dtype=str, keep_default_na=False)["label"]
    assert list(zip(records["category"], records["subcategory"], strict=True)) == [
        reference_split(label, None) for label in raw]
