"""The persistent LLM cache: one SQLite file (WAL), every successful reply keyed by the request's hash.

Writes go through one writer thread that commits whatever has gathered (group commit), so the event loop
never waits on the disk and a reply is committed within milliseconds: a crash or SIGKILL loses only
requests in flight, and a rerun re-sends nothing that finished. `flush()` waits until everything handed
over is committed (the engine flushes before `run` returns). Failures are logged in a separate table (and
dropped once the request succeeds), never served as answers. Requests are stored for inspection; API keys
travel in headers and are never part of a request body, a key or a row.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("bsa.llm.cache")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY, endpoint TEXT, model TEXT, request TEXT, content TEXT, reasoning TEXT,
    finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, reasoning_tokens INTEGER,
    created REAL);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY, endpoint TEXT, request TEXT, error TEXT, raw TEXT, attempts INTEGER, updated REAL);
"""
SCHEMA_VERSION = 2
_CHUNK = 500  # keys per SELECT (SQLite's variable limit is 999 on old builds)
_PUT, _FAIL, _FLUSH, _STOP = "put", "fail", "flush", "stop"  # messages to the writer thread
COALESCE = 0.005  # seconds the writer lets writes gather before a commit (fewer wake-ups and commits)


@dataclass(frozen=True)
class CachedReply:
    """A server's reply as received: the raw content (reasoning not yet split) and its metadata."""

    content: str
    reasoning: str | None = None  # the server's separate reasoning field
    model: str = ""
    finish_reason: str = ""
    usage: dict[str, int] | None = None


class LLMCache:
    """Successful replies by key, and a log of requests that failed after all retries."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect()
        self._migrate()
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name="llm-cache-writer", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; fsync at checkpoints
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def _migrate(self) -> None:
        """Create the tables; a cache of another layout is started afresh (it only holds replies)."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if self._db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]:
            log.warning("%s: written by another version of the engine (layout %d, expected %d): starting afresh",
                        self.path, version, SCHEMA_VERSION)
            self._db.executescript("DROP TABLE IF EXISTS replies; DROP TABLE IF EXISTS failures;")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedReply]:
        """The cached replies among `keys`."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, CachedReply] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            rows = self._db.execute(
                "SELECT key, content, reasoning, model, finish_reason, prompt_tokens, completion_tokens, "
                f"reasoning_tokens FROM replies WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for key, content, reasoning, model, finish_reason, prompt, completion, thought in rows:
                usage = None if prompt is None else {"prompt_tokens": prompt, "completion_tokens": completion}
                if usage is not None and thought is not None:
                    usage["reasoning_tokens"] = thought
                found[key] = CachedReply(content, reasoning, model, finish_reason, usage)
        return found

    def put(self, key: str, endpoint: str, request: str, reply: CachedReply) -> None:
        """Store a successful reply and clear any failure logged for the key (committed within ms)."""
        usage = reply.usage or {}
        self._pending.put((_PUT, (key, endpoint, reply.model, request, reply.content, reply.reasoning,
                                  reply.finish_reason, usage.get("prompt_tokens"), usage.get("completion_tokens"),
                                  usage.get("reasoning_tokens"), time.time())))

    def record_failure(self, key: str, endpoint: str, request: str, error: str, raw: str, attempts: int) -> None:
        """Log a request that failed after all retries (the next run sends it again)."""
        self._pending.put((_FAIL, (key, endpoint, request, error, raw, attempts, time.time())))

    def flush(self) -> None:
        """Wait until every write handed over so far is committed (re-raises a writer error)."""
        done = threading.Event()
        self._pending.put((_FLUSH, done))
        while not done.wait(0.5):
            if not self._writer.is_alive():
                break
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write_loop(self) -> None:
        db = self._connect()
        while True:
            batch = [self._pending.get()]
            time.sleep(COALESCE)
            while not self._pending.empty():
                batch.append(self._pending.get_nowait())
            try:
                self._commit(db, batch)
            except sqlite3.Error as err:
                self._error = err
            for kind, item in batch:
                if kind == _FLUSH:
                    item.set()
            if any(kind == _STOP for kind, _ in batch):
                db.close()
                return

    @staticmethod
    def _commit(db: sqlite3.Connection, batch: list[tuple[str, Any]]) -> None:
        """One transaction for a batch; failures first, so that a success logged with them wins."""
        puts = [item for kind, item in batch if kind == _PUT]
        fails = [item for kind, item in batch if kind == _FAIL]
        if not puts and not fails:
            return
        with db:
            db.execute("BEGIN")
            db.executemany("INSERT OR REPLACE INTO failures VALUES (?,?,?,?,?,?,?)", fails)
            db.executemany("INSERT OR REPLACE INTO replies VALUES (?,?,?,?,?,?,?,?,?,?,?)", puts)
            db.executemany("DELETE FROM failures WHERE key = ?", [(row[0],) for row in puts])

    def failures(self) -> list[dict]:
        """The failure log: key, endpoint, error, raw reply, attempts."""
        self.flush()
        rows = self._db.execute("SELECT key, endpoint, error, raw, attempts FROM failures ORDER BY updated")
        return [dict(zip(("key", "endpoint", "error", "raw", "attempts"), row, strict=True)) for row in rows]

    def close(self) -> None:
        """Commit what is pending, stop the writer and close the database."""
        if self._writer.is_alive():
            self._pending.put((_STOP, None))
            self._writer.join()
        self._db.close()
        if self._error is not None:
            raise self._error
