"""A stage run's stats (`NN_<stage>.stats.json`), typed: the runner's figures, then the stage's own, which may
not take the runner's names; and the one-screen funnel made from them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageStats:
    """What the runner records of a stage run; `figures` are the stage's own (`StageContext.report`)."""

    stage: str
    rows_in: int
    rows_out: int
    dropped: dict[str, int]
    seconds: float
    finished_at: str
    counters: dict[str, int] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    llm: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        taken = sorted(set(self.figures) & RUNNER_KEYS)
        if taken:
            raise ValueError(f"stage {self.stage}: its stats may not use the runner's keys {taken}")

    def to_json(self) -> dict[str, Any]:
        """The stats file's content: the runner's keys, the stage's figures, then LLM usage (if any)."""
        data = {key: value for key, value in asdict(self).items() if key not in ("figures", "llm")}
        data.update(self.figures)
        if self.llm is not None:
            data["llm"] = self.llm
        return data


RUNNER_KEYS = frozenset(StageStats.__dataclass_fields__) - {"figures"}


def read_stats(path: Path) -> dict[str, Any]:
    """A stats file's content (an empty record of the stage when the file is missing)."""
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def funnel_table(summary: list[dict[str, Any]]) -> str:
    """The one-screen funnel: rows in and out of each stage and why they left."""
    header = f"{'stage':<12} {'in':>8} {'out':>8} {'dropped':>8} {'seconds':>8}  top reasons"
    lines = [header, "-" * len(header)]
    for row in summary:
        reasons = sorted(row.get("dropped", {}).items(), key=lambda kv: -kv[1])
        why = ", ".join(f"{k} {v}" for k, v in reasons[:4]) + (" ..." if len(reasons) > 4 else "")
        note = " (unchanged)" if row.get("skipped") else ""
        dropped = sum(row.get("dropped", {}).values())
        lines.append(f"{row.get('stage', '?'):<12} {row.get('rows_in', 0):>8} {row.get('rows_out', 0):>8} "
                     f"{dropped:>8} {row.get('seconds', 0):>8.1f}  {why}{note}")
    return "\n".join(lines)
