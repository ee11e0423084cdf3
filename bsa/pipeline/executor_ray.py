"""The Ray Data executor: the same stage steps as `LocalExecutor`, spread over a Ray cluster.

A `per_batch` step runs as `Dataset.map_batches` on pandas batches of `batch_rows` rows; a step that
`loads_models` runs in a pool of actors asking for a fraction of a CPU each, so every actor loads its
models once (the stage code caches them) and keeps them. A `whole` step runs as its `distributed` counterpart
where it offers one (on `Shards`: an aggregate then a map, a shuffle on a coarse partition of a key), else on
the rows gathered in input order. Rows carry `_seq`, their position in the stage's input, so gathering restores the local order
whatever the number of blocks. Counters and declared resources of the workers are sent to one actor and
merged into the stage's context. Stages that call LLM endpoints run in the driver (their engine is
asynchronous I/O with its own concurrency and one reply cache). Needs the `[ray]` extra.
"""

from __future__ import annotations

import os
import pickle
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property, partial
from typing import Any

import numpy as np
import pandas as pd

from bsa.pipeline.config import RaySettings
from bsa.pipeline.executor import LocalExecutor
from bsa.pipeline.keys import first_rows
from bsa.pipeline.stage import Stage, StageContext, StageResult, Step, split_rejects

SEQ = "_seq"  # a row's position in the stage's input: the order gathered rows are put back in


def _ray():
    try:
        import ray
    except ImportError as err:
        raise RuntimeError("executor: ray needs Ray Data: pip install 'bsa-builder[ray]'") from err
    return ray


class _Tally:
    """One actor collecting the workers' counters, declared resources and the nodes their batches ran on."""

    def __init__(self) -> None:
        self.counters: Counter = Counter()
        self.resources: dict[str, str] = {}
        self.nodes: set[str] = set()

    def add(self, counters: dict[str, int], resources: dict[str, str], node: str) -> None:
        self.counters.update(counters)
        self.resources.update(resources)
        self.nodes.add(node)

    def take(self) -> tuple[dict[str, int], dict[str, str], list[str]]:
        out = dict(self.counters), dict(self.resources), sorted(self.nodes)
        self.counters, self.resources, self.nodes = Counter(), {}, set()
        return out


def normalize(batch: pd.DataFrame, dtypes: dict[str, Any]) -> pd.DataFrame:
    """A batch as the stage code expects it: Arrow-backed columns as numpy/object ones (missing as None),
    the input's columns in their input dtypes."""
    import pyarrow as pa

    columns = {}
    for column in batch.columns:
        series = batch[column]
        kind = series.dtype.pyarrow_dtype if isinstance(series.dtype, pd.ArrowDtype) else None
        if kind is not None and pa.types.is_floating(kind):
            series = series.astype("float64")
        elif kind is not None and (pa.types.is_integer(kind) or pa.types.is_boolean(kind)) and not series.isna().any():
            series = series.astype(series.dtype.numpy_dtype)
        elif not isinstance(series.dtype, np.dtype) and column not in dtypes:  # Arrow strings, pickled objects
            series = pd.Series(series.to_numpy(dtype=object), index=series.index)
        if series.dtype == object:
            series = series.astype(object).where(series.notna(), None)
        if column in dtypes and series.dtype != dtypes[column]:
            series = series.astype(dtypes[column])
        columns[column] = series.to_numpy() if isinstance(series.dtype, np.dtype) else series.array
    return pd.DataFrame(columns, index=pd.RangeIndex(len(batch)))


class _StepCall:
    """A step applied to a batch, its counters and resources sent to the tally with the node it ran on (a task
    or an actor)."""

    def __init__(self, step: Step, config: Any, ctx: StageContext, tally: Any, dtypes: dict[str, Any]):
        self.step, self.config, self.ctx, self.tally, self.dtypes = step, config, ctx, tally, dtypes

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        ctx = replace(self.ctx, counters=Counter(), resources={}, stats={})
        out = self.step.function(normalize(batch, self.dtypes), self.config, ctx)
        node = _ray().get_runtime_context().get_node_id()
        _ray().get(self.tally.add.remote(dict(ctx.counters), dict(ctx.resources), node))
        return out


@dataclass(frozen=True)
class Shared:
    """A value put in the object store once (`Shards.share`) and handed to many tasks: a broadcast (the pairs
    every partition reads, say), read by `_BatchCall` and `_group_call` before the function sees it."""

    ref: Any


def _resolved(args: tuple) -> tuple:
    return tuple(_ray().get(arg.ref) if isinstance(arg, Shared) else arg for arg in args)


class _BatchCall:
    """A function applied to normalised batches: `function(batch, *args) -> frame` (the batch keeps `_seq`)."""

    def __init__(self, function: Callable[..., pd.DataFrame], args: tuple, dtypes: dict[str, Any]):
        self.function, self.args, self.dtypes = function, args, dtypes

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return self.function(normalize(batch, self.dtypes), *_resolved(self.args))


def _group_call(group: dict[str, np.ndarray], function: Callable[..., dict], args: tuple) -> dict[str, np.ndarray]:
    """`function(group, *args)` on the numpy columns of one shuffle group."""
    return function(group, *_resolved(args))


class _ItemCall:
    """`function(item, *args)` on one pickled item a batch, its result pickled (exact bytes back)."""

    def __init__(self, function: Callable[..., Any], args: tuple):
        self.function, self.args = function, args

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        results = [pickle.dumps(self.function(pickle.loads(item), *self.args)) for item in batch["item"]]
        return pd.DataFrame({"at": batch["at"].to_numpy(), "result": results})


def actor_pool(settings: RaySettings) -> dict[str, Any]:
    """`map_batches` options of a pool of model-loading actors."""
    cpus = _ray().cluster_resources().get("CPU", 1)
    return {"concurrency": settings.actors or max(1, int(cpus / settings.actor_cpus)), "num_cpus": settings.actor_cpus}


@dataclass
class Shards:
    """Rows spread over a cluster, as a step's `distributed` counterpart sees them: a Ray Dataset whose rows
    carry `_seq` (their position in the stage's input: "the earliest" is the lowest), the input's dtypes
    (batches are normalised to them) and the executor's settings."""

    source: Any  # a Ray Dataset, or a function making one (rows still in the driver: made on first use)
    dtypes: dict[str, Any]
    settings: RaySettings

    @cached_property
    def dataset(self) -> Any:
        return self.source() if callable(self.source) else self.source

    def map(self, function: Callable[..., pd.DataFrame], *args: Any) -> Shards:
        """`function(batch, *args) -> frame` on every batch (it must keep `_seq`); `args` are sent once."""
        call = _BatchCall(function, args, self.dtypes)
        return Shards(self.dataset.map_batches(call, batch_format="pandas", batch_size=self.settings.batch_rows),
                      self.dtypes, self.settings)

    def columns(self, names: list[str], where: Callable[[pd.DataFrame], pd.Series] | None = None) -> pd.DataFrame:
        """Some columns of the rows (`where` a batch's mask: of some rows), with `_seq`, in input order:
        what an aggregate needs in the driver (one number and a language a row, say)."""
        wanted = [*names, SEQ]

        def select(batch: pd.DataFrame) -> pd.DataFrame:
            return (batch if where is None else batch[where(batch).to_numpy(dtype=bool)])[wanted]

        frame = gather_frames(self.map(select).dataset, self.dtypes, keep_seq=True)
        return frame if set(wanted) <= set(frame.columns) else frame.reindex(columns=wanted)  # no rows at all

    def count(self) -> int:
        return self.dataset.count()

    def on_actors_kept(self, function: Callable[..., Any], items: list[Any], *args: Any) -> Shards:
        """`function(item, *args)` for each item (one call each: a chunk of rows to encode, say) in a pool of
        actors that keep what they load (models), as a `loads_models` step; the results left on the cluster:
        rows of `at` (the item's index) and `result` (pickled), materialised in the object store."""
        records = [{"at": at, "item": pickle.dumps(item)} for at, item in enumerate(items)]
        dataset = _ray().data.from_items(records, override_num_blocks=max(len(records), 1))
        pool = actor_pool(self.settings)
        pool["concurrency"] = max(1, min(pool["concurrency"], len(items)))  # an actor each call at most
        done = dataset.map_batches(_ItemCall, fn_constructor_args=(function, args), batch_size=1,
                                   batch_format="pandas", **pool)
        return Shards(done.materialize(), {}, self.settings)

    def frame(self, function: Callable[..., pd.DataFrame] | None = None, *args: Any) -> pd.DataFrame:
        """Every row (of `function(batch, *args)` on every batch, when given) in the driver, in no set order:
        for rows without `_seq`, such as `on_actors_kept`'s."""
        dataset = self.dataset if function is None else self.map(function, *args).dataset
        frames = [frame for frame in _ray().get(dataset.to_pandas_refs()) if len(frame)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    @property
    def partitions(self) -> int:
        """Shuffle partitions: a few per CPU (Ray's default of 200 costs a task each on a small cluster)."""
        return max(1, int(_ray().cluster_resources().get("CPU", 1)) * 2)

    def share(self, value: Any) -> Shared:
        """`value` put in the object store once, for the tasks it is handed to as an argument."""
        return Shared(_ray().put(value))

    def shuffle(self, explode: Callable[..., pd.DataFrame], group: Callable[..., dict], *args: Any,
                group_args: tuple = (), reads: tuple[str, ...] | None = None) -> pd.DataFrame:
        """`explode(batch, *args)` gives records with a `part` column (a coarse partition of a key, below
        `partitions`); the records of one part meet in one `group(numpy columns, *group_args) -> numpy columns`
        call; the driver gets every call's output, joined. `reads`: the only columns `explode` reads (the
        others are never converted for it)."""
        rows = self.dataset if reads is None else self.dataset.select_columns(
            [column for column in (*reads, SEQ) if column in (*self.dtypes, SEQ)])
        records = rows.map_batches(_BatchCall(explode, args, self.dtypes), batch_format="pandas",
                                   batch_size=self.settings.batch_rows)
        grouped = records.groupby("part", num_partitions=self.partitions).map_groups(
            _group_call, batch_format="numpy", fn_args=(group, group_args))
        frames = [frame for frame in _ray().get(grouped.to_pandas_refs()) if len(frame)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def gather_frames(dataset, dtypes: dict[str, Any], keep_seq: bool = False) -> pd.DataFrame:
    """Every row of a Dataset in input order (by `_seq`), the input's columns in their input dtypes."""
    # block by block: blocks may type a column differently (all missing in one), which Ray's own
    # to_pandas() joins into a pickled-object column
    blocks = [normalize(block, dtypes) for block in _ray().get(dataset.to_pandas_refs())]
    frame = pd.concat(blocks, ignore_index=True) if blocks else pd.DataFrame()
    if SEQ not in frame.columns:
        return frame
    frame = frame.sort_values(SEQ, kind="stable").reset_index(drop=True)
    return frame if keep_seq else frame.drop(columns=[SEQ])


def _keyed(batch: pd.DataFrame, partitions: int) -> pd.DataFrame:
    """Each row's key with a coarse partition of its hash (pandas' hash: the same in every process)."""
    hashed = pd.util.hash_pandas_object(batch["key"], index=False).to_numpy()
    return batch.assign(part=(hashed % np.uint64(partitions)).astype(np.int64))


def _earliest_of_keys(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Within one partition of the keys: each row whose key an earlier row holds, and that row's `_seq`."""
    order = np.argsort(np.asarray(group[SEQ], dtype=np.int64), kind="stable")
    seq = np.asarray(group[SEQ], dtype=np.int64)[order]
    first = seq[first_rows(pd.Series(np.asarray(group["key"], dtype=object)[order]))]
    later = first != seq
    return {SEQ: seq[later], "first": first[later]}


class RayExecutor:
    """Runs stages on a Ray cluster: the one at `address` (or RAY_ADDRESS), else a local one it starts."""

    def __init__(self, settings: RaySettings | None = None):
        self.settings = settings or RaySettings()
        self._started = False
        self.nodes: list[str] = []  # the nodes the last stage's per-batch steps ran on

    def _connect(self):
        ray = _ray()
        if not ray.is_initialized():
            address = self.settings.address or os.environ.get("RAY_ADDRESS")
            local = {} if address else {"num_cpus": self.settings.num_cpus,
                                        "object_store_memory": self.settings.object_store_memory}
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
            self._started = True
        return ray

    def close(self) -> None:
        """Shut down the cluster connection this executor opened."""
        if self._started:
            _ray().shutdown()
            self._started = False

    def run(self, stage: Stage, records: pd.DataFrame, config: Any, ctx: StageContext) -> StageResult:
        if stage.endpoints or not any(step.per_batch or step.distributed for step in stage.steps):
            return LocalExecutor(self.settings.batch_rows).run(stage, records, config, ctx)
        ray = self._connect()
        if stage.setup is not None:
            stage.setup(config, ctx)
        tally = ray.remote(num_cpus=0)(_Tally).remote()
        worker_ctx = replace(ctx, engine_factory=None, show_progress=False)
        frame: pd.DataFrame | None = records.reset_index(drop=True)
        dtypes = {column: records[column].dtype for column in records.columns}
        dataset = None
        for step in stage.steps:
            if step.per_batch:
                dataset = self.dataset(frame) if dataset is None else dataset
                dataset, frame = self._map(dataset, step, config, worker_ctx, tally, dtypes), None
                continue
            if step.distributed is not None:
                # materialised: a counterpart reads its rows more than once (an aggregate, then a map); rows
                # still in the driver are sent to the cluster only if the counterpart uses them
                source = dataset.materialize() if dataset is not None else partial(self.dataset, frame)
                shards = step.distributed(Shards(source, dtypes, self.settings), config, ctx)
                if shards is not None:
                    dataset, frame = shards.dataset, None
                    continue
            frame = self.gather(dataset, dtypes) if frame is None else frame  # no counterpart: in the driver
            frame, dataset = step.function(frame, config, ctx), None
        frame = self.gather(dataset, dtypes) if frame is None else frame
        counters, resources, self.nodes = ray.get(tally.take.remote())
        if self.nodes:
            ctx.log.info("%s: batches ran on %d node(s) of the cluster", stage.name, len(self.nodes))
        ctx.counters.update(counters)
        ctx.resources.update(resources)
        kept, rejected = split_rejects(frame, stage.reject_columns)
        return StageResult(kept, rejected, dict(ctx.stats))

    def first_rows(self, keys: pd.Series) -> np.ndarray:
        """Each row's position of the earliest row holding the same key (ingest's duplicate ids), found on the
        cluster: the keys hashed, shuffled by a coarse partition of the hash, the earliest `_seq` of each key
        within each partition; the driver gets back only the rows whose key an earlier row holds."""
        out = np.arange(len(keys), dtype=np.int64)
        if len(keys) == 0:
            return out
        self._connect()
        shards = Shards(self.dataset(pd.DataFrame({"key": keys.to_numpy(dtype=object)})), {}, self.settings)
        found = shards.shuffle(_keyed, _earliest_of_keys, shards.partitions)
        if len(found):
            out[found[SEQ].to_numpy(dtype=np.int64)] = found["first"].to_numpy(dtype=np.int64)
        return out

    def dataset(self, frame: pd.DataFrame):
        """The rows as a Ray Dataset of `blocks` blocks, each row with its `_seq`."""
        ray = _ray()
        blocks = self.settings.blocks or max(1, min(len(frame) // self.settings.batch_rows + 1,
                                                    int(ray.cluster_resources().get("CPU", 1)) * 2))
        frame = frame.assign(**{SEQ: np.arange(len(frame), dtype=np.int64)})
        bounds = np.linspace(0, len(frame), blocks + 1).astype(int)
        return ray.data.from_pandas([frame.iloc[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)])

    def _map(self, dataset, step: Step, config: Any, ctx: StageContext, tally: Any, dtypes: dict[str, Any]):
        options = {"batch_format": "pandas", "batch_size": self.settings.batch_rows}
        if not step.loads_models:
            return dataset.map_batches(_StepCall(step, config, ctx, tally, dtypes), **options)
        return dataset.map_batches(_StepCall, fn_constructor_args=(step, config, ctx, tally, dtypes),
                                   **actor_pool(self.settings), **options)

    @staticmethod
    def gather(dataset, dtypes: dict[str, Any]) -> pd.DataFrame:
        """Every row of a Dataset in input order (by `_seq`), the input's columns in their input dtypes."""
        return gather_frames(dataset, dtypes)
