"""The release's dataset card (`README.md`) and its two pictures (`funnel.png`, `categories.png`).

The card's YAML front matter is the Hugging Face dataset-card header: `configs` points `datasets` at
benchmark.parquet, so `datasets.load_dataset("build/release")` loads the release from the local files.
Everything in the card comes from the released rows, the build's stats and manifest, and the config.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bsa.benchmark import SCENARIOS, label_categories
from bsa.multimodal import fields as mm
from bsa.multimodal.coverage import KINDS, cell_counts, coverage_table, level_names
from bsa.pipeline.config import SourceConfig
from bsa.pipeline.taxonomy import Taxonomy
from bsa.release.config import Config
from bsa.release.croissant.config import croissant_config
from bsa.release.files import (
    DATA_FILES,
    ReleaseInfo,
    build_endpoints,
    field_description,
    license_url,
    source_license,
    table_columns,
)
from bsa.release.images import COMBINATION_ORDER, IMAGES_DIR, ImageSet, is_multimodal, shown
from bsa.release.review import CORRECTED_OUTCOME, HELD_BACK, KEPT, REJECTED, RELEASE_FILE
from bsa.text.markdown import markdown_table

SPLIT = "test"
SCENARIO_COLORS = dict(zip(SCENARIOS, ("#d94801", "#2171b5", "#238b45"), strict=True))
COMBINATION_COLORS = dict(zip(COMBINATION_ORDER, ("#a50f15", "#fb6a4a", "#2171b5", "#6a51a3", "#238b45"),
                              strict=True))
NO_CATEGORY = "(no category)"
PAIRS_INTRO = ("A multimodal benchmark in the style of USB-SafeBench (arXiv 2505.23793): each item pairs an image "
               "with a text, and its combination says where the risk sits: in the image, in the text, in both, or "
               "only in the pair (SIST); benign pairs measure over-refusal. A model is scored on whether its answer "
               "is safe in each combination (Safety Rate) and whether it refuses benign pairs. ")


def first_category(label: str) -> str:
    """The category of an item's first risk (Query A's, for a Cognitive Shortcut pair)."""
    categories = label_categories(label)
    return categories[0] if categories else ""


def count_table(rows: pd.Series, columns: pd.Series, row_order: list[str], column_order: list[str],
                name: str) -> pd.DataFrame:
    """Items by `rows` (every name of `row_order`, most items first) and `columns` (in `column_order`), with
    totals."""
    table = pd.crosstab(rows, columns)
    index = list(row_order) + [c for c in table.index if c not in row_order]
    table = table.reindex(index=index, columns=[c for c in column_order if c in table.columns], fill_value=0)
    table["Total"] = table.sum(axis=1)
    table = table.sort_values("Total", ascending=False, kind="stable")
    table.loc["Total"] = table.sum()
    table.index.name = name
    return table


def category_counts(frame: pd.DataFrame, categories: list[str]) -> pd.DataFrame:
    """Items by category (rows: every category, most items first) and scenario (columns), with totals."""
    return count_table(frame["label"].map(first_category), frame["dataset_name"], categories, list(SCENARIOS),
                       "category")


def area_counts(frame: pd.DataFrame, areas: list[str]) -> pd.DataFrame:
    """Image + text items by primary category (every one of the taxonomy) and combination, with totals."""
    primary = frame[mm.CATEGORY_LEVELS[0]] if mm.CATEGORY_LEVELS[0] in frame.columns else pd.Series(index=frame.index)
    return count_table(primary.map(lambda v: NO_CATEGORY if v is None or v != v or not str(v) else str(v)),
                       frame[mm.COMBINATION], areas, COMBINATION_ORDER, "primary category")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_funnel(funnel: list[dict[str, Any]], path: Path) -> Path:
    """Rows in and out of each stage as paired horizontal bars (first stage on top), drops written beside."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(funnel) + 1.2))
    ypos = list(range(len(funnel)))
    rows_out = [row.get("rows_out", 0) for row in funnel]
    ax.barh([y - 0.2 for y in ypos], [row.get("rows_in", 0) for row in funnel], height=0.4, color="#c6dbef",
            label="rows in")
    ax.barh([y + 0.2 for y in ypos], rows_out, height=0.4, color="#2171b5", label="rows out")
    for y, row, out in zip(ypos, funnel, rows_out, strict=True):
        dropped = sum(row.get("dropped", {}).values())
        ax.text(out, y + 0.2, f" {out}" + (f", {dropped} dropped" if dropped else ""), va="center", fontsize=8)
    ax.set_yticks(ypos, [row.get("stage", "?") for row in funnel])
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.set_title("Build funnel")
    ax.legend(loc="lower right", fontsize=8)
    ax.margins(x=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_categories(counts: pd.DataFrame, path: Path, colors: dict[str, str] = SCENARIO_COLORS,
                    xlabel: str = "items (Cognitive Shortcut: by Query A's category)",
                    title: str = "Items by category and scenario") -> Path:
    """Items by category, stacked by scenario (`counts` as `category_counts` makes it; or by another split
    with its colours, as `area_counts` makes it)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    counts = counts.drop(index="Total").drop(columns="Total")
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(counts) + 1.5))
    left = pd.Series(0, index=counts.index)
    for scenario in counts.columns:
        ax.barh(counts.index, counts[scenario], left=left, color=colors[scenario], label=scenario)
        left += counts[scenario]
    ax.invert_yaxis()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_contents(info_frame: pd.DataFrame, taxonomy: Taxonomy, path: Path) -> Path:
    """categories.png: items by category and scenario, or for image + text items by primary category and
    combination."""
    if is_multimodal(info_frame):
        return plot_categories(area_counts(info_frame, list(taxonomy.categories)), path, COMBINATION_COLORS,
                               "items", "Items by primary category and combination")
    return plot_categories(category_counts(info_frame, list(taxonomy.categories)), path)


def hf_license(license_id: str) -> str:
    """A licence id as the Hub's card metadata spells it (`CC-BY-4.0` -> `cc-by-4.0`), `other` for a URL."""
    return "other" if license_id.startswith(("http://", "https://")) else license_id.lower().replace(" ", "-")


def size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "n>1M"


def front_matter(info: ReleaseInfo) -> dict[str, Any]:
    """The card's YAML header: licence, languages, size, and the data files `datasets` loads."""
    frame = info.records
    header: dict[str, Any] = {"pretty_name": info.config.name, "license": hf_license(info.section.license)}
    if "lang" in frame.columns:
        header["language"] = sorted(frame["lang"].dropna().astype(str).unique().tolist())
    header["tags"] = [k.lower().replace(" ", "-") for k in info.section.keywords]
    header["size_categories"] = [size_category(len(frame))]
    header["configs"] = [{"config_name": "default", "data_files": [{"split": SPLIT, "path": "benchmark.parquet"}]}]
    return header


def source_licence_text(source: SourceConfig, section: Config) -> str:
    licence = source_license(source, section)
    if licence is None:
        return "not stated in the config: check before redistributing"
    own = not source.license and source.name in section.own_sources
    return f"{licence} (the project's own pool, released under the benchmark's licence)" if own else licence


def sources_section(info: ReleaseInfo) -> str:
    rows = [[s.name, f"`{s.path}`", source_licence_text(s, info.section), s.citation or "",
             info.items_by_source.get(s.name, 0)] for s in info.config.sources]
    licence = info.section.license_url or license_url(info.section.license) or info.section.license
    return "\n\n".join([
        "## Sources and licences",
        f"The benchmark is released under **{info.section.license}** ({licence}). An item written from a "
        "source's rows may also be bound by that source's licence:",
        markdown_table(["source", "file", "licence", "citation", "items drawing on it"], rows),
    ])


def _reasons(row: dict[str, Any]) -> str:
    reasons = sorted(row.get("dropped", {}).items(), key=lambda kv: -kv[1])
    return ", ".join(f"`{reason}` {n}" for reason, n in reasons) or "-"


def funnel_section(info: ReleaseInfo) -> str:
    rows = [[row.get("stage", "?"), row.get("rows_in", 0), row.get("rows_out", 0), _reasons(row),
             f"{row.get('seconds', 0):.1f}"] for row in info.funnel]
    return "\n\n".join([
        "## How it was built",
        "Rows in and out of each stage of the build, and why rows left (each dropped row is kept with its "
        "reason in `build/NN_<stage>.rejects.parquet`):",
        markdown_table(["stage", "rows in", "rows out", "dropped (reason rows)", "seconds"], rows),
        "![Build funnel](funnel.png)",
        *files_read(info),
    ])


def review_section(info: ReleaseInfo) -> str:
    """Who reviewed the candidates, how much they agreed, and what their decisions did (or that no one did)."""
    review = info.review
    if review is None:
        return ("## Human review\n\n**No human review was done**: no person checked these items after the build "
                "(`bsa review export` puts them to reviewers; `bsa review import` records their decisions).")
    figures = review.agreement
    kappa = "undefined" if figures["kappa"] is None else f"{figures['kappa']:.3f}"
    agreement = (f"{figures['method']} {kappa} over the {figures['items']} items every reviewer decided (all "
                 f"agree on {figures['all_agree']:.1%} of them)" if figures["method"] else "not measured (one reviewer)")
    rows = [[name, entry["items"]] for name, entry in review.reviewers.items()]
    outcomes = [["candidates", len(review.outcomes)], ["kept as written", review.count(KEPT)],
                ["kept with a corrected risk summary", review.count(CORRECTED_OUTCOME)],
                ["rejected", review.count(REJECTED)], ["held back (too few reviews, or conflicting corrections)",
                                                         review.count(HELD_BACK)],
                ["disagreements (decisions or corrections differ)", len(review.disagreements)]]
    return "\n\n".join([
        "## Human review",
        f"The build's {len(review.outcomes)} candidate items were put to {len(review.reviewers)} reviewers, who "
        "accepted, rejected or fixed (accepted with a corrected risk summary) each. An item is released when the rule "
        f"**{review.rule.rule}** keeps it (a fix counts as an accept; at least {review.rule.min_reviewers} reviews "
        f"an item). Agreement on the decision: {agreement}.",
        markdown_table(["reviewer", "items reviewed"], rows),
        markdown_table(["outcome", "items"], outcomes),
        f"Every decision, note and outcome is in `{RELEASE_FILE}` (candidate set sha256 "
        f"`{review.candidates_sha256}`); each released item carries its own in the `review` column.",
    ])


def files_read(info: ReleaseInfo) -> list[str]:
    """The side files (annotations, models, word lists) each stage read, from the manifest."""
    stages = info.manifest.get("stages", {})
    lines = [f"- {name}: " + ", ".join(f"`{path}`" for path in entry["resources"])
             for name, entry in stages.items() if entry.get("resources")]
    return ["Files the stages read (their sha256 are in `build/manifest.json`):\n\n" + "\n".join(lines)] if lines else []


def _usage(usage: Any) -> str:
    """LLM usage from a stage's stats, flattened to `key value` pairs."""
    if not isinstance(usage, dict):
        return str(usage)
    parts = []
    for key, value in usage.items():
        parts.append(f"{key}: {_usage(value)}" if isinstance(value, dict) else f"{key} {value}")
    return "; ".join(parts)


def models_section(info: ReleaseInfo) -> str:
    endpoint_rows = [[name, e.get("model", ""), "embedded llama.cpp server" if e.get("base_url") == "local"
                      else e.get("base_url", "")] for name, e in build_endpoints(info.config, info.manifest).items()]
    usage_rows = [[row["stage"], _usage(row["llm"])] for row in info.funnel if row.get("llm")]
    prompts = info.manifest.get("prompts", {})
    prompt_rows = [[f"`prompts/{key}.md`", f"`{digest}`"] for key, digest in sorted(prompts.items())]
    parts = ["## Models and prompts", "Endpoints of the build config:",
             markdown_table(["endpoint", "model", "server"], endpoint_rows)]
    if usage_rows:
        parts += ["LLM calls by stage:", markdown_table(["stage", "usage"], usage_rows)]
    parts += ["Prompt templates used, by sha256 (also in `build/manifest.json`):",
              markdown_table(["template", "sha256"], prompt_rows) if prompt_rows else "No prompt was used."]
    return "\n\n".join(parts)


def contents_section(info: ReleaseInfo) -> str:
    counts = category_counts(info.records, list(info.taxonomy.categories))
    rows = [[index, *map(int, values)] for index, values in zip(counts.index, counts.to_numpy(), strict=True)]
    by_scenario = info.records["dataset_name"].value_counts()
    scenario_rows = [[s, int(by_scenario.get(s, 0))] for s in SCENARIOS] + [["Total", len(info.records)]]
    return "\n\n".join([
        "## Contents",
        markdown_table(["scenario", "items"], scenario_rows),
        "Items by category (a Cognitive Shortcut pair counts under the category of Query A's risk):",
        markdown_table(["category", *counts.columns], rows),
        "![Items by category and scenario](categories.png)",
    ])


COMBINATION_MEANINGS = {"RIRT": "risky image, risky text", "RIST": "risky image, safe text",
                        "SIRT": "safe image, risky text", "SIST": "both harmless alone, the pair harmful",
                        mm.BENIGN: "harmless pair (over-refusal set)"}


def pairs_contents_section(info: ReleaseInfo) -> str:
    """Contents of an image + text release: items by combination and primary category, then its images."""
    frame, images = info.records, info.images
    counts = area_counts(frame, list(info.taxonomy.categories))
    rows = [[index, *map(int, values)] for index, values in zip(counts.index, counts.to_numpy(), strict=True)]
    by_combination = frame[mm.COMBINATION].value_counts()
    combination_rows = [[c, COMBINATION_MEANINGS[c], int(by_combination.get(c, 0))] for c in COMBINATION_ORDER]
    return "\n\n".join([
        "## Contents",
        markdown_table(["combination", "where the risk sits", "items"],
                       [*combination_rows, ["Total", "", len(frame)]]),
        "Items by primary category and combination:",
        markdown_table(["primary category", *counts.columns], rows),
        "![Items by primary category and combination](categories.png)",
        coverage_section(frame, info.taxonomy),
        *([images_section(frame, images)] if images else []),
        *([cards_section(frame)] if images and cards_section(frame) else []),
    ])


def coverage_section(frame: pd.DataFrame, taxonomy: Taxonomy) -> str:
    """Items per cell of category x kind x language, empty cells shown: primary areas by language, then the
    secondary categories (both languages together) when the taxonomy has them."""
    langs = sorted(set(frame["lang"].astype(str)))
    primary = coverage_table(cell_counts(frame, 0), level_names(taxonomy, 0), langs)
    empty = int((primary[list(KINDS)] == 0).to_numpy().sum())
    parts = ["### Coverage",
             f"Items per primary category, combination and language: {empty} of {primary[list(KINDS)].size} cells "
             "are empty (the synthesis stage plans its items for the emptiest cells first; its stats list them).",
             markdown_table(["primary category", "lang", *KINDS], primary.to_numpy().tolist())]
    if taxonomy.depth > 1:
        secondary = coverage_table(cell_counts(frame, 1), level_names(taxonomy, 1), langs)
        merged = secondary.groupby("category", sort=False)[list(KINDS)].sum().reset_index()
        parts += ["Items per secondary category and combination (languages together):",
                  markdown_table(["secondary category", *KINDS], merged.to_numpy().tolist())]
    return "\n\n".join(parts)


def cards_section(frame: pd.DataFrame, per_language: int = 3) -> str:
    """A few of the typography cards the build rendered, in each language, one of each layout first."""
    rendered = frame[frame[mm.IMAGE_STYLE].astype(str).eq("typography") & frame[mm.RENDER_SPEC].notna()] \
        if mm.IMAGE_STYLE in frame.columns and mm.RENDER_SPEC in frame.columns else frame.iloc[0:0]
    if rendered.empty:
        return ""
    layouts = rendered[mm.RENDER_SPEC].map(lambda spec: json.loads(spec).get("layout", ""))
    tagged = rendered.assign(_layout=layouts)
    ordered = pd.concat([tagged.drop_duplicates(["lang", "_layout"]), tagged]).drop_duplicates("id")
    sample = ordered.sort_values("lang", kind="stable").groupby("lang", sort=True).head(per_language)
    rows = [[f"`{item['id']}`", item["lang"], item[mm.COMBINATION], item["_layout"],
             f"![{item[mm.COMBINATION]} card]({item[mm.IMAGE]})"] for item in sample.to_dict("records")]
    return "\n\n".join(["Rendered cards (typography the build drew from each item's render spec):",
                         markdown_table(["id", "lang", "combination", "layout", "card"], rows)])


def images_section(frame: pd.DataFrame, images: ImageSet) -> str:
    """How many images, of which styles, sources and formats, and one image of each combination."""
    shared = frame[mm.IMAGE].duplicated(keep=False)
    formats = Counter(images.files.values())
    style_rows = [[style, n, images.files_by_style[style]] for style, n in images.items_by_style.most_common()]
    source_rows = [[source, n, images.files_by_source[source]] for source, n in images.items_by_source.most_common()]
    samples = frame.drop_duplicates(mm.COMBINATION).set_index(mm.COMBINATION)
    sample_rows = [[c, f"`{samples.loc[c, 'id']}`", shown(samples.loc[c].get(mm.IMAGE_STYLE)),
                    f"![{c} item {samples.loc[c, 'id']}]({samples.loc[c, mm.IMAGE]})"]
                   for c in COMBINATION_ORDER if c in samples.index]
    return "\n\n".join([
        "### Images",
        f"{len(images.files)} image files for {len(frame)} items in `{IMAGES_DIR}/`, each named by the sha256 of "
        f"its bytes (an image used by several items is one file: {int(shared.sum())} items share "
        f"{frame.loc[shared, mm.IMAGE].nunique()} files); formats: "
        + ", ".join(f"{mime} {n}" for mime, n in sorted(formats.items())) + ". The `image` column holds the file's "
        "path relative to the table, `image_sha256` its hash.",
        markdown_table(["image style", "items", "image files"], style_rows),
        markdown_table(["image source", "items", "image files"], source_rows),
        "One item of each combination:",
        markdown_table(["combination", "id", "style", "image"], sample_rows),
    ])


def files_section(info: ReleaseInfo) -> str:
    rows = [[f"`{name}`", role, f"`{info.files.get(name, '')}`"] for name, role in DATA_FILES.items()]
    if info.images:
        rows[0][1] = "The image + text table `bsa eval` reads (id, text, lang and the image fields)."
        rows.append([f"`{IMAGES_DIR}/`", f"{len(info.images.files)} image files, each named by its sha256.", ""])
    if info.review is not None:
        rows.append(["`review.json`", "Every candidate's human review: decisions, notes, the rule, the outcome.",
                     ""])
    rows.append(["`croissant.json`", "Croissant metadata (with Responsible-AI fields), validated by mlcroissant.", ""])
    in_csv = table_columns(info.records)
    fields = [[f"`{column}`", field_description(column, bool(info.images)) or "provenance column of the build",
               "CSV, JSONL, Parquet" if column in in_csv else "JSONL, Parquet"]
              for column in info.records.columns]
    return "\n\n".join(["## Files", markdown_table(["file", "what", "sha256"], rows),
                        "Columns:", markdown_table(["column", "meaning", "in"], fields)])


def responsible_ai_section(info: ReleaseInfo) -> str:
    rai = croissant_config(info.config).rai.for_release(bool(info.images))
    parts = [("Intended use", rai.data_use_cases), ("Known biases", rai.data_biases),
             ("Limitations", rai.data_limitations), ("Sensitive content", rai.personal_sensitive_information),
             ("Social impact", rai.data_social_impact)]
    return "\n\n".join(["## Use, biases and limitations",
                        *(f"**{title}.** {text}" for title, text in parts if text)])


def loading_section(images: bool = False) -> str:
    if images:
        return "\n\n".join(["## Loading", "\n".join([
            "```python",
            'import pandas as pd\nfrom PIL import Image\nitems = pd.read_csv("benchmark.csv", keep_default_na=False)',
            'image = Image.open(items["image"][0])  # paths relative to this folder',
            'import mlcroissant as mlc  # `benchmark/image_content`: the image, decoded (PIL)',
            'items = list(mlc.Dataset("croissant.json").records("benchmark"))',
            "```"]), "Evaluating a vision model on it: `bsa eval --dataset benchmark.csv ...` (see the project's "
                     "docs/multimodal.md)."])
    return "\n\n".join(["## Loading", "\n".join([
        "```python",
        'import pandas as pd\nitems = pd.read_csv("benchmark.csv", keep_default_na=False)',
        'from datasets import load_dataset\nitems = load_dataset("path/to/this/folder", split="test")',
        'import mlcroissant as mlc\nitems = list(mlc.Dataset("croissant.json").records("benchmark"))',
        "```"])])


def render_card(info: ReleaseInfo) -> str:
    """The dataset card: YAML header, then what it is, contents, files, funnel, models, sources, caveats."""
    config = info.config
    header = yaml.safe_dump(front_matter(info), sort_keys=False, allow_unicode=True)
    what = PAIRS_INTRO if info.images else (
        "A benchmark in the format of Beyond Safe Answers (BSA, arXiv 2505.19690): each item is a query with the "
        "risk it hides (`risk_summary`) and that risk's label, in one of three scenarios. A reasoning model is "
        "scored on whether its reasoning recognises the risk, not only on whether its final answer is safe. ")
    intro = (f"{config.description}\n\n" if config.description else "") + what + (
        f"Version {config.version}, built on {info.date} by `bsa build --config {config.config_path}`.")
    versions = info.manifest.get("versions", {})
    built_with = ", ".join(f"{name} {version}" for name, version in versions.items())
    contents = pairs_contents_section(info) if info.images else contents_section(info)
    sections = [f"---\n{header}---", f"# {config.name}", intro, contents, files_section(info),
                funnel_section(info), review_section(info), models_section(info), sources_section(info), responsible_ai_section(info),
                loading_section(bool(info.images))]
    if info.section.citation:
        sections.append(f"## Citation\n\n```\n{info.section.citation.strip()}\n```")
    if built_with:
        sections.append(f"Software versions of the build: {built_with}.")
    return "\n\n".join(sections) + "\n"

