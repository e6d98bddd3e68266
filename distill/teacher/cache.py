"""Content-addressed teacher response cache: SQLite in WAL mode under ``$EAKD_HOME/cache``.

The key is the sha256 of a request's canonical JSON (see ``TeacherRequest.key``), so a request is
never paid for twice, whichever backend or process sends it. WAL mode lets several writers (the vLLM
worker process, parallel flows) append while readers read; every ``put`` is its own committed
transaction, so a ``kill -9`` loses at most the responses still in flight.

Only successful responses are stored (truncated ones included — they are valid answers); errors are
not, so a later run retries them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from distill.config import eakd_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def default_cache_path() -> Path:
    return eakd_home() / "cache" / "teacher.sqlite"


def _retry_busy(conn: sqlite3.Connection, sql: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    pause = 0.01
    while True:
        try:
            conn.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


class ResponseCache:
    """A tiny key -> JSON store. Safe for concurrent processes (SQLite WAL + busy timeout)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        # Switching a new file to WAL takes an exclusive lock, and SQLite answers SQLITE_BUSY at once
        # (without calling the busy handler) when another process is opening the same new file, so the
        # set-up statements are retried here; everything after them waits on the 60 s busy timeout.
        for sql in ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", SCHEMA):
            _retry_busy(self._conn, sql)

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for i in range(0, len(keys), 500):  # stay under SQLite's variable limit
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._conn.execute(f"SELECT key, response FROM responses WHERE key IN ({marks})", chunk):
                out[key] = json.loads(blob)
        return out

    def created_many(self, keys: list[str]) -> dict[str, float]:
        """When each stored key was written (epoch seconds): the run's tokens-over-time come from these."""
        out: dict[str, float] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            out.update(self._conn.execute(f"SELECT key, created FROM responses WHERE key IN ({marks})", chunk))
        return out

    def put(self, key: str, response: dict) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO responses (key, response, created) VALUES (?, ?, ?)",
            (key, json.dumps(response, separators=(",", ":")), time.time()),
        )

    def put_many(self, items: list[tuple[str, dict]]) -> None:
        now = time.time()
        rows = [(k, json.dumps(v, separators=(",", ":")), now) for k, v in items]
        self._conn.execute("BEGIN")
        self._conn.executemany("INSERT OR REPLACE INTO responses (key, response, created) VALUES (?, ?, ?)", rows)
        self._conn.execute("COMMIT")

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._conn.close()
