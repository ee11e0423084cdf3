"""The persistent LLM cache: one SQLite file (WAL), every successful reply keyed by the request's hash.

Each reply is committed as soon as it arrives, so a crash or SIGKILL loses only requests in flight, and a
rerun re-sends nothing that finished. Failures are logged in a separate table (and dropped once the request
succeeds), never served as answers. Requests are stored for inspection; API keys travel in headers and are
never part of a request body, a key or a row.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY, endpoint TEXT, model TEXT, request TEXT, content TEXT, reasoning TEXT,
    finish_reason TEXT, usage TEXT, created REAL);
CREATE TABLE IF NOT EXISTS failures (
    key TEXT PRIMARY KEY, endpoint TEXT, request TEXT, error TEXT, raw TEXT, attempts INTEGER, updated REAL);
"""
_CHUNK = 500  # keys per SELECT (SQLite's variable limit is 999 on old builds)


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
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; fsync at checkpoints
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)

    def get_many(self, keys: Iterable[str]) -> dict[str, CachedReply]:
        """The cached replies among `keys`."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, CachedReply] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            rows = self._db.execute(
                "SELECT key, content, reasoning, model, finish_reason, usage FROM replies "
                f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for key, content, reasoning, model, finish_reason, usage in rows:
                found[key] = CachedReply(content, reasoning, model, finish_reason,
                                         json.loads(usage) if usage else None)
        return found

    def put(self, key: str, endpoint: str, request: str, reply: CachedReply) -> None:
        """Store a successful reply (committed at once) and clear any failure logged for the key."""
        usage = json.dumps(reply.usage) if reply.usage else None
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?,?,?,?,?,?,?,?,?)",
                             (key, endpoint, reply.model, request, reply.content, reply.reasoning,
                              reply.finish_reason, usage, time.time()))
            self._db.execute("DELETE FROM failures WHERE key = ?", (key,))

    def record_failure(self, key: str, endpoint: str, request: str, error: str, raw: str, attempts: int) -> None:
        """Log a request that failed after all retries (the next run sends it again)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO failures VALUES (?,?,?,?,?,?,?)",
                             (key, endpoint, request, error, raw, attempts, time.time()))

    def failures(self) -> list[dict]:
        """The failure log: key, endpoint, error, raw reply, attempts."""
        rows = self._db.execute("SELECT key, endpoint, error, raw, attempts FROM failures ORDER BY updated")
        return [dict(zip(("key", "endpoint", "error", "raw", "attempts"), row, strict=True)) for row in rows]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        self._db.close()
