"""`bsa judge --samples FILE`: judge and score generations made elsewhere, into a normal run directory.

The file (JSONL or CSV) holds one sample a row: `id` or `query` (BSA's `question`), `answer`, and
optionally `reasoning` (BSA's `reasoning_content`), `sample` (the order of an item's samples), `status`
(`success`/`failed`, as BSA's batch scripts write it), `error`, `finish_reason` (`length`: cut by max_tokens)
and `model`. BSA's batch-script output (Batch_Call_LLM: id, question, answer, reasoning_content, status,
tokens, error) reads as it is. A row without reasoning has its `<think>` tags split from the answer, as the
engine splits a reply. Every item must have the same number of samples (k). The items are matched to the
benchmark (`--dataset`) by id, or by the query's exact text; everything after that is `bsa eval`'s judging
and scoring (bsa.eval.run.run_eval), so the same generations score the same either way.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from bsa.eval.run import EvalRequest, default_dataset, load_benchmark, plan_eval, run_eval
from bsa.pipeline.config import BuildConfig
from bsa.pipeline.errors import ConfigError, DataError
from bsa.pipeline.io import file_sha256, read_table
from bsa.pipeline.llm import Response
from bsa.pipeline.llm.reasoning import split_reasoning

ALIASES = {"query": ("query", "question"), "reasoning": ("reasoning", "reasoning_content")}
STATUSES = ("success", "failed")


def _column(frame: pd.DataFrame, name: str) -> str | None:
    return next((column for column in ALIASES.get(name, (name,)) if column in frame.columns), None)


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def read_samples(path: Path, frame: pd.DataFrame,
                 benchmark: pd.DataFrame) -> tuple[pd.DataFrame, list[list[Response]]]:
    """The benchmark items the file (read as `frame`) holds, in benchmark order, and each item's k samples
    as Responses.

    DataError naming the file, line and field for a row that names no item, an unknown id or query, an
    unknown status, or an item with another number of samples than the others."""
    if "answer" not in frame.columns:
        raise DataError(path, "missing column 'answer' (one sample a row: id or query, reasoning, answer)")
    id_column, query_column = _column(frame, "id"), _column(frame, "query")
    if id_column is None and query_column is None:
        raise DataError(path, "missing column 'id' or 'query' (or 'question'): which item each sample is of")
    by_id = {str(item): position for position, item in enumerate(benchmark["id"])}
    by_query = {str(query).strip(): position for position, query in enumerate(benchmark["query"])}
    reasoning_column = _column(frame, "reasoning")
    samples: dict[int, list[tuple[Any, int, Response]]] = {}
    for order, row in enumerate(frame.to_dict("records")):
        line = row.get("_line")
        item = _item_of(row, id_column, query_column, by_id, by_query, path, line)
        status = _text(row.get("status")).strip().lower() or "success"
        if status not in STATUSES:
            raise DataError(path, f"unknown status '{status}' (expected {' or '.join(STATUSES)})", line, "status")
        rank = row.get("sample")
        if "sample" in frame.columns and not _is_index(rank):
            raise DataError(path, f"sample '{rank}' is not a whole number", line, "sample")
        samples.setdefault(item, []).append((int(rank) if "sample" in frame.columns else order, order,
                                             _response(row, reasoning_column, status)))
    counts = {item: len(rows) for item, rows in samples.items()}
    k = max(counts.values(), key=list(counts.values()).count)  # the most common count
    for item, rows in samples.items():
        if len(rows) != k:
            first = frame.iloc[min(order for _, order, _ in rows)]
            raise DataError(path, f"item {benchmark['id'].iloc[item]} has {len(rows)} samples, the others "
                                  f"{k}: every item needs the same k", first.get("_line"), id_column or "query")
    positions = sorted(samples)
    items = benchmark.iloc[positions]
    return items, [[response for _, _, response in sorted(samples[p], key=lambda r: r[:2])] for p in positions]


def _is_index(value: Any) -> bool:
    try:
        return float(value) == int(float(value)) >= 0
    except (TypeError, ValueError):
        return False


def _item_of(row: dict, id_column: str | None, query_column: str | None, by_id: dict[str, int],
             by_query: dict[str, int], path: Path, line: Any) -> int:
    """The benchmark position of the row's item: by id when the row has one, else by the query's text."""
    item_id = _text(row.get(id_column)).strip() if id_column else ""
    if item_id:
        if item_id not in by_id:
            raise DataError(path, f"id {item_id} is not in the benchmark", line, id_column)
        return by_id[item_id]
    query = _text(row.get(query_column)).strip() if query_column else ""
    if not query:
        raise DataError(path, "no id and no query: which item is this sample of?", line, id_column or query_column)
    if query not in by_query:
        raise DataError(path, f"query {query[:60]!r} is not in the benchmark", line, query_column)
    return by_query[query]


def _response(row: dict, reasoning_column: str | None, status: str) -> Response:
    """A sample as the engine would have returned it."""
    if status == "failed":
        return Response(ok=False, error=f"failed where it was generated: {_text(row.get('error')) or 'no error given'}")
    split = split_reasoning(_text(row.get("answer")), _text(row.get(reasoning_column)) if reasoning_column else None)
    return Response(ok=True, content=split.content, reasoning=split.reasoning, reasoning_source=split.source,
                    reasoning_shape=split.shape, finish_reason=_text(row.get("finish_reason")),
                    model=_text(row.get("model")))


def judge_samples_file(request: EvalRequest, path: Path, config: BuildConfig) -> tuple[Any, dict]:
    """Judge and score the file's samples into `<output_dir>/<run>/`; (plan, metrics)."""
    if request.limit is not None:
        raise ConfigError("LIMIT (--limit) picks items to sample: `bsa judge` scores every item of the file")
    dataset = Path(request.dataset) if request.dataset else default_dataset(config)
    benchmark = load_benchmark(dataset)
    frame, _ = read_table(path)
    items, responses = read_samples(path, frame, benchmark)
    model = request.model or _model_of(frame, path)
    plan = plan_eval(replace(request, model=model, k=len(responses[0])), config, items=items, dataset=dataset)
    plan.generated = {"samples": str(path), "samples_sha256": file_sha256(path)}
    return plan, run_eval(plan, responses)


def _model_of(frame: pd.DataFrame, path: Path) -> str:
    """The file's `model` column when it names one model, else the file's name."""
    if "model" in frame.columns and frame["model"].nunique() == 1:
        return str(frame["model"].iloc[0])
    return path.stem
