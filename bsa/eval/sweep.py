"""`bsa sweep`: a model evaluated over a grid of decoding settings (temperature x top_p x top_k), as BSA's
decoding study, each cell a run named by its settings (bsa.eval.naming) in `<output_dir>/sweeps/<model>/`.

Every cell is planned before any model is called; the cells share one judge and the reply cache
(`<output_dir>/llm-cache.sqlite`, the one `bsa eval` uses), and a cell whose metrics.json already records
the same settings, k and items is read back, not redone, so an interrupted sweep resumes where it stopped.
The default cell (the eval section's settings: temperature 0.6, top_p 0.95, no top_k unless the config says
otherwise) is the reference; it is run too when the grid does not hold it.

It writes `sweep.md` and `sweep.csv` (every cell's Think@1, Safe@1, Think@k, Safe@k and F-score with their
95% bootstrap intervals, and each figure's difference from the default cell) and one heatmap PNG per figure
(`heatmap_think_at_1.png`, ...: temperature down, top_p across, a panel per top_k). A cell differs
significantly from the default when the paired sign-flip test of bsa.eval.compare (over the shared items)
gives p < 0.05 after Holm's correction over the grid's cells, per figure.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from bsa.eval.compare import RESAMPLES, SIGNIFICANCE, compare_scores, load_run, shared_items
from bsa.eval.many import plan_all
from bsa.eval.naming import RULES, TOP_K, recorded_settings, results_dir
from bsa.eval.run import EvalPlan, EvalRequest, plan_eval, run_eval
from bsa.pipeline.config import BuildConfig
from bsa.pipeline.errors import ConfigError
from bsa.pipeline.io import file_sha256, write_table, write_text
from bsa.text.markdown import markdown_table

FIGURES = ["Think@1", "Safe@1", "Think@k", "Safe@k"]  # the heatmaps; the tables add the F-score
AXES = ("temperature", "top_p", TOP_K)


@dataclass(frozen=True)
class Grid:
    """The values of each decoding setting; the sweep runs every combination."""

    temperature: tuple[float, ...]
    top_p: tuple[float, ...]
    top_k: tuple[int, ...]

    @classmethod
    def of(cls, temperature: Sequence[float] | None = None, top_p: Sequence[float] | None = None,
           top_k: Sequence[int] | None = None) -> Grid:
        """A grid from the values given, BSA's (PAPER) for those not given."""
        return cls(tuple(temperature or PAPER.temperature), tuple(top_p or PAPER.top_p),
                   tuple(top_k or PAPER.top_k))

    def cells(self) -> list[tuple[float, float, int]]:
        return list(itertools.product(self.temperature, self.top_p, self.top_k))


PAPER = Grid((0.4, 0.6, 0.8, 1.0, 1.2), (0.5, 0.75, 0.95), (1, 20, 40))  # BSA's decoding study


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]  # one a cell (and the default cell), as in sweep.csv
    table: str  # sweep.md
    files: list[Path]


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the given order (None: no test, left out of the family)."""
    known = sorted((p, index) for index, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        adjusted[index] = running
    return adjusted


def finished(plan: EvalPlan) -> dict[str, Any] | None:
    """The metrics of a finished run of this plan (same settings, k, dataset and items), else None."""
    if recorded_settings(plan.out) is None or not (plan.out / "judged.csv").is_file():
        return None
    metrics = json.loads((plan.out / "metrics.json").read_text(encoding="utf-8"))
    run = metrics["run"]
    ids = set(pd.read_csv(plan.out / "judged.csv", dtype=str, keep_default_na=False)["id"])
    same = (metrics["k"] == plan.k and run.get("dataset_sha256") == file_sha256(plan.dataset_path)
            and ids == set(plan.items["id"].astype(str)))
    return metrics if same else None


def sweep_plans(base: EvalRequest, grid: Grid, config: BuildConfig) -> tuple[list[EvalPlan], EvalPlan]:
    """The cells' plans and the default cell's (one of them when the grid holds it)."""
    if base.run:
        raise ConfigError("a sweep names its cells by their settings: RUN= (--run) names one run")
    root = Path(base.output_dir)
    out = results_dir(root / "sweeps", f"{base.model}{RULES if base.rules else ''}")
    common = replace(base, output_dir=str(out), cache=base.cache or str(root / "llm-cache.sqlite"))
    plans = plan_all([replace(common, temperature=t, top_p=p, top_k=k) for t, p, k in grid.cells()], config)
    default = plan_eval(common, config)
    return plans, next((plan for plan in plans if plan.out == default.out), default)


def run_sweep(base: EvalRequest, grid: Grid, config: BuildConfig, *,
              resamples: int | None = None) -> SweepResult:
    """Run (or read back) every cell, compare each with the default cell, write the table and heatmaps."""
    plans, default = sweep_plans(base, grid, config)
    metrics = {}
    for plan in [*plans, *([] if default in plans else [default])]:
        metrics[plan.out] = finished(plan) or run_eval(plan)
    rows = [cell_row(plan, metrics[plan.out], plan is default) for plan in
            ([] if default in plans else [default]) + plans]
    _add_differences(rows, resamples or RESAMPLES)
    out = default.out.parent
    table = sweep_markdown(base.model, rows)
    columns = [*AXES, "run", "default"] + [f"{name}{suffix}" for name in [*FIGURES, "F-score"]
                                           for suffix in ("", " lo", " hi", " diff", " p", " p_holm", " significant")]
    frame = pd.DataFrame(rows).reindex(columns=columns).astype({TOP_K: "Int64"})
    files = [write_table(frame, out / "sweep.csv"),
             write_text(table, out / "sweep.md")]
    files += [heatmap(rows, grid, name, out / f"heatmap_{_slug(name)}.png") for name in FIGURES]
    return SweepResult(rows, table, files)


def cell_row(plan: EvalPlan, metrics: dict[str, Any], is_default: bool) -> dict[str, Any]:
    """A cell's settings, figures and intervals."""
    settings, ci = plan.run_settings, metrics.get("ci95") or {}
    row: dict[str, Any] = {**{axis: settings[axis] for axis in AXES}, "run": plan.name, "out": plan.out,
                           "default": is_default}
    for name in [*FIGURES, "F-score"]:
        low, high = ci.get(name) or (None, None)
        row.update({name: metrics[name], f"{name} lo": low, f"{name} hi": high})
    return row


def _add_differences(rows: list[dict[str, Any]], resamples: int) -> None:
    """Each cell's difference from the default cell (paired, over their shared items), p and Holm's p."""
    reference = load_run(next(row["out"] for row in rows if row["default"]))
    others = [row for row in rows if not row["default"]]
    for row in others:
        run = load_run(row["out"])
        shared = shared_items(reference, run)
        result = compare_scores(reference.scores.loc[shared], run.scores.loc[shared], resamples=resamples)
        for name in [*FIGURES, "F-score"]:
            row.update({f"{name} diff": result[name]["difference"], f"{name} p": result[name]["p"]})
    for name in [*FIGURES, "F-score"]:
        for row, adjusted in zip(others, holm([row[f"{name} p"] for row in others]), strict=True):
            row[f"{name} p_holm"] = adjusted
            row[f"{name} significant"] = adjusted is not None and adjusted < SIGNIFICANCE


def _figure(row: dict[str, Any], name: str) -> str:
    value, low, high = row[name], row[f"{name} lo"], row[f"{name} hi"]
    if value is None:
        return "-"
    return f"{value:.2f}" + (f" [{low:.2f}, {high:.2f}]" if low is not None else "")


def sweep_markdown(model: str, rows: list[dict[str, Any]]) -> str:
    """The sweep as Markdown: one row a cell, figures with intervals, and what differs from the default."""
    table = []
    for row in rows:
        differs = [f"{name} {row[f'{name} diff']:+.2f} (p {row[f'{name} p_holm']:.3g})"
                   for name in [*FIGURES, "F-score"] if row.get(f"{name} significant")]
        table.append({**{axis: "-" if row[axis] is None else row[axis] for axis in AXES},
                      **{name: _figure(row, name) for name in [*FIGURES, "F-score"]},
                      "vs default": "default" if row["default"] else ", ".join(differs) or "-"})
    return "\n".join([f"# Decoding sweep: {model}", "",
                      markdown_table([*AXES, *FIGURES, "F-score", "vs default"], table), "",
                      "Figures with their 95% bootstrap intervals. 'vs default': the figures whose difference "
                      "from the default cell (B - A, percentage points) is significant: paired sign-flip test "
                      f"over the shared items (bsa compare), Holm-corrected over the cells per figure, p < "
                      f"{SIGNIFICANCE}.", ""])


def _slug(name: str) -> str:
    return name.lower().replace("@", "_at_")


def heatmap(rows: list[dict[str, Any]], grid: Grid, name: str, path: Path) -> Path:
    """One figure's heatmap: temperature down, top_p across, a panel per top_k; each cell with its value
    and interval, `*` when it differs significantly from the default cell (outlined when in the grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = {(row["temperature"], row["top_p"], row[TOP_K]): row for row in rows}
    panels = len(grid.top_k)
    figure, axes = plt.subplots(1, panels, figsize=(1.6 + 2.2 * len(grid.top_p) * panels,
                                                    1.2 + 0.75 * len(grid.temperature)), squeeze=False, dpi=120)
    for axis, top_k in zip(axes[0], grid.top_k, strict=True):
        values = [[(cells.get((t, p, top_k)) or {}).get(name) for p in grid.top_p] for t in grid.temperature]
        image = axis.imshow([[float("nan") if v is None else v for v in line] for line in values],
                            cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i, t in enumerate(grid.temperature):
            for j, p in enumerate(grid.top_p):
                row = cells.get((t, p, top_k))
                if row is None:
                    continue
                mark = "*" if row.get(f"{name} significant") else ""
                axis.text(j, i, _figure(row, name).replace(" [", f"{mark}\n["), ha="center", va="center",
                          fontsize=7, color="white" if (row[name] or 0) < 60 else "black")
                if row["default"]:
                    axis.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
        axis.set(xticks=range(len(grid.top_p)), xticklabels=[f"{p:g}" for p in grid.top_p], xlabel="top_p",
                 yticks=range(len(grid.temperature)), yticklabels=[f"{t:g}" for t in grid.temperature],
                 ylabel="temperature", title=f"{name}, top_k {top_k}")
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    default = next(row for row in rows if row["default"])
    settings = ", ".join(f"{axis} {'-' if default[axis] is None else f'{default[axis]:g}'}" for axis in AXES)
    figure.suptitle(f"{name}. Default cell ({settings}; outlined when in the grid): {_figure(default, name)}. "
                    f"*: differs from it (Holm p < {SIGNIFICANCE})", fontsize=8, y=1.04)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)
    return path
