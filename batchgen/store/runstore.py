"""The run store: one SQLite file (WAL) that is the journal of record.

Schema::

    meta      (key, value)                       schema version, job name
    runs      (id, started, ended, status, endpoint, base_url, pid, version)
    requests  (id, position, fingerprint, model, body, tags, state, done_attempt)
    attempts  (id, request_id, fingerprint, model, run_id, n, mode, started, ended,
               status, finish_reason, error_class, error_code, http_status,
               error_message, provider_request_id)
    segments  (attempt_id, seq, content, reasoning)   text as it streamed in
    usage     (attempt_id, prompt, completion, total, reasoning, cached,
               estimated, raw)

A request is done when ``requests.done_attempt`` points at an attempt whose
status is ``done``; its text is that attempt's segments in ``seq`` order. A
finished attempt's segments are compacted into one row in the same
transaction that marks it done. Writes accumulate in one open transaction;
the runner commits a few times a second (``commit``), so a ``kill -9`` loses at
most that fraction of a second of streamed text and never a finished result.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchgen.errors import StoreError, UsageError
from batchgen.store.attempts import AttemptEnd, AttemptWrites
from batchgen.store.batches import BatchStore
from batchgen.store.costed import CostedReads
from batchgen.store.estimates import CalibrationRow, EstimateReads
from batchgen.store.reads import StoreReads
from batchgen.store.records import PlanRow

SCHEMA_VERSION = 3

# Columns added after schema 1, as (table, column, SQL type). A store written
# by an older batchgen gets them on open; old rows read them as NULL.
_ADDED_COLUMNS = (
    ("attempts", "tool_calls", "TEXT"),  # schema 2: assembled tool-call deltas (JSON)
    ("requests", "reason", "TEXT"),  # schema 2: why a request failed outside any attempt
    ("attempts", "continues", "INTEGER"),  # schema 2: the attempt whose answer this goes on
    ("attempts", "continuations", "INTEGER"),  # schema 2: continuations in its chain so far
    ("attempts", "prefix_chars", "INTEGER"),  # schema 2: length of the answer it went on from
    ("usage", "prompt_method", "TEXT"),  # schema 2: exact, derived, tokenizer, calibrated, static
    ("usage", "completion_method", "TEXT"),  # schema 2: the same, for completion tokens
    ("attempts", "first_token", "REAL"),  # schema 2: when its first text arrived
    ("requests", "data_row", "TEXT"),  # schema 3: the data row's kept columns (JSON)
    ("requests", "schema", "TEXT"),  # schema 3: the JSON Schema its answer must fit
    ("usage", "audio_prompt_tokens", "INTEGER"),  # schema 3: audio tokens in the prompt
    ("usage", "audio_completion_tokens", "INTEGER"),  # schema 3: speech tokens in the answer
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL DEFAULT 'running',
    endpoint TEXT NOT NULL,
    base_url TEXT NOT NULL,
    region TEXT,
    pid INTEGER,
    version TEXT
);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    position INTEGER,
    fingerprint TEXT NOT NULL,
    model TEXT NOT NULL,
    body TEXT NOT NULL,
    tags TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    done_attempt INTEGER,
    reason TEXT,
    data_row TEXT,
    schema TEXT
);
CREATE INDEX IF NOT EXISTS requests_todo ON requests(position)
    WHERE position IS NOT NULL AND state != 'done';
CREATE INDEX IF NOT EXISTS requests_position ON requests(position)
    WHERE position IS NOT NULL;
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    model TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    n INTEGER NOT NULL,
    mode TEXT NOT NULL DEFAULT 'fresh',
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL DEFAULT 'streaming',
    finish_reason TEXT,
    error_class TEXT,
    error_code TEXT,
    http_status INTEGER,
    error_message TEXT,
    provider_request_id TEXT,
    tool_calls TEXT,
    continues INTEGER,
    continuations INTEGER,
    prefix_chars INTEGER,
    first_token REAL
);
CREATE INDEX IF NOT EXISTS attempts_request ON attempts(request_id);
CREATE INDEX IF NOT EXISTS attempts_streaming ON attempts(status) WHERE status = 'streaming';
CREATE TABLE IF NOT EXISTS segments (
    attempt_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    content TEXT NOT NULL DEFAULT '',
    reasoning TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (attempt_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
    attempt_id INTEGER PRIMARY KEY,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER,
    cached_tokens INTEGER,
    estimated INTEGER NOT NULL,
    raw TEXT,
    prompt_method TEXT,
    completion_method TEXT,
    audio_prompt_tokens INTEGER,
    audio_completion_tokens INTEGER
);
CREATE TABLE IF NOT EXISTS calibration (
    model TEXT NOT NULL,
    direction TEXT NOT NULL,
    samples INTEGER NOT NULL,
    sx REAL NOT NULL, sy REAL NOT NULL, sxx REAL NOT NULL, sxy REAL NOT NULL,
    PRIMARY KEY (model, direction)
);
"""


@dataclass(frozen=True)
class Pending:
    """A request that still needs a finished attempt."""

    id: str
    position: int
    fingerprint: str
    model: str
    body: dict[str, Any]
    tags: tuple[str, ...]
    attempts: int
    schema: str | None = None  # the JSON Schema its answer must fit (JSON text)


class RunStore(AttemptWrites, StoreReads, CostedReads, EstimateReads):
    """All reads and writes of ``run.db``. One writer at a time (the lock says who).

    Its reads come from :class:`StoreReads` (the run's own), :class:`CostedReads`
    (what reports price) and :class:`EstimateReads` (what the ledger refines).
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        try:
            if readonly:
                if not path.exists():
                    raise StoreError(f"no run store at {path}")
                self.db = _open_readonly(path)
            else:
                self.db = sqlite3.connect(path, timeout=10)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.executescript(_SCHEMA)
                self._check_version()
                self.db.commit()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: cannot open the run store ({exc})") from None
        self.db.execute("PRAGMA busy_timeout=10000")

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer batchgen (schema {row[0]}); upgrade batchgen"
            )
        for table, column, kind in _ADDED_COLUMNS:
            have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                # names come from _ADDED_COLUMNS above, never from a user
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    @classmethod
    @contextlib.contextmanager
    def reading(cls, run_dir: Path) -> Iterator[RunStore]:
        """``run_dir``'s store, opened read-only (safe while a run writes it) and
        closed after. A directory without one is a usage error; a store that
        cannot be read, also halfway through, a :class:`StoreError` that says so."""
        store = cls.open_readonly(run_dir)
        try:
            yield store
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{store.path} cannot be read ({exc}); it may be damaged") from None
        finally:
            store.close()

    @classmethod
    def open_readonly(cls, run_dir: Path) -> RunStore:
        """``run_dir``'s store, read-only, for a caller that closes it (prefer
        :meth:`reading`)."""
        db = run_dir / "run.db"
        if not db.is_file():
            raise UsageError(f"{run_dir} holds no run (no run.db); is it a run directory?")
        return cls(db, readonly=True)

    def batches(self, readonly: bool = False) -> BatchStore:
        """The provider-batch rows of this store."""
        return BatchStore(self.db, readonly=readonly)

    def close(self) -> None:
        try:
            self.db.commit()
        finally:
            self.db.close()

    def commit(self) -> None:
        self.db.commit()

    # ------------------------------------------------------------- runs

    def begin_run(self, *, endpoint: str, base_url: str, region: str | None,
                  pid: int, version: str, now: float) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (started, endpoint, base_url, region, pid, version) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (now, endpoint, base_url, region, pid, version),
        )
        self.db.commit()
        assert cur.lastrowid is not None  # noqa: S101 - an invariant, for the type checker
        return cur.lastrowid

    def end_run(self, run_id: int, status: str, now: float) -> None:
        self.db.execute("UPDATE runs SET ended=?, status=? WHERE id=?", (now, status, run_id))
        self.db.commit()

    def recover(self, estimate: Any, now: float) -> int:
        """Attempts left ``streaming`` by a killed process become ``aborted``.

        Their usage is estimated from the request and the text on disk
        (``estimate(body, content, reasoning) -> Usage``): they were billed.
        """
        rows = self.db.execute(
            "SELECT a.id, r.body, a.continues FROM attempts a "
            "JOIN requests r ON r.id = a.request_id WHERE a.status = 'streaming'"
        ).fetchall()
        for attempt_id, body, continues in rows:
            content, reasoning = self.attempt_text(attempt_id)
            sent = json.loads(body)
            if continues:  # its prompt held the answer it went on from
                prefix = {"role": "assistant", "content": self.chain_text(continues)}
                sent = {**sent, "messages": [*sent["messages"], prefix]}
            self.end_attempt(
                attempt_id,
                AttemptEnd(status="aborted", error_class="interrupted",
                           error_message="the process stopped while this attempt streamed"),
                usage=estimate(sent, content, reasoning),
                now=now,
            )
        self.db.commit()
        return len(rows)

    # ---------------------------------------------------------- requests

    def sync_requests(self, rows: Iterable[PlanRow]) -> int:
        """Make the ``requests`` table match the job's plan (``Request.row()``
        of each, in job order): positions, bodies, fingerprints.

        A request whose fingerprint changed becomes pending again; its earlier
        attempts stay in the ledger. Requests no longer in the job keep their
        rows (they were paid for) but lose their position.
        """
        db = self.db
        db.execute("UPDATE requests SET position = NULL WHERE position IS NOT NULL")
        sql = (
            "INSERT INTO requests (id, position, fingerprint, model, body, tags, data_row, "
            "schema) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "position = excluded.position, model = excluded.model, tags = excluded.tags, "
            "data_row = excluded.data_row, schema = excluded.schema, "
            "state = CASE WHEN requests.fingerprint = excluded.fingerprint "
            "  THEN requests.state ELSE 'pending' END, "
            "done_attempt = CASE WHEN requests.fingerprint = excluded.fingerprint "
            "  THEN requests.done_attempt ELSE NULL END, "
            "body = CASE WHEN requests.fingerprint = excluded.fingerprint "
            "  THEN requests.body ELSE excluded.body END, "
            "fingerprint = excluded.fingerprint"
        )
        count = 0
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= 2000:
                db.executemany(sql, batch)
                count += len(batch)
                batch.clear()
        if batch:
            db.executemany(sql, batch)
            count += len(batch)
        db.commit()
        return count

    def pending(self, page: int = 256) -> Iterator[Pending]:
        """Requests of the job that still need work, in job order, a page at a time."""
        last = -1
        while True:
            rows = self.db.execute(
                "SELECT r.id, r.position, r.fingerprint, r.model, r.body, r.tags, "
                " (SELECT COUNT(*) FROM attempts a WHERE a.request_id = r.id "
                "  AND a.fingerprint = r.fingerprint), r.schema "
                "FROM requests r WHERE r.position IS NOT NULL "
                "AND r.state IN ('pending', 'failed') "
                "AND r.position > ? ORDER BY r.position LIMIT ?",
                (last, page),
            ).fetchall()
            if not rows:
                return
            for rid, pos, fp, model, body, tags, n, schema in rows:
                yield Pending(rid, pos, fp, model, json.loads(body),
                              tuple(json.loads(tags)) if tags else (), n, schema)
                last = pos

    def last_attempt_id(self) -> int:
        row = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM attempts").fetchone()
        return int(row[0])

    def answers_not_in_job(self) -> int:
        """Answers bought for requests the job no longer has (kept, without a
        position, by :meth:`sync_requests`)."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM requests WHERE position IS NULL AND state = 'done'"
        ).fetchone()
        return int(row[0])

    def count_todo(self) -> int:
        """Requests to send now (not done, and not waiting in a provider batch)."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM requests WHERE position IS NOT NULL "
            "AND state IN ('pending', 'failed')"
        ).fetchone()
        return int(row[0])

    def mark(self, request_id: str, state: str, attempt_id: int | None = None,
             reason: str | None = None) -> None:
        if state == "done":
            self.db.execute("UPDATE requests SET state='done', done_attempt=?, reason=NULL "
                            "WHERE id=?", (attempt_id, request_id))
        else:
            self.db.execute("UPDATE requests SET state=?, reason=? WHERE id=?",
                            (state, reason, request_id))

    # ---------------------------------------------------------- attempts

    def save_calibration(self, rows: Iterable[CalibrationRow]) -> None:
        """The calibration learned now, in place of the one before (not committed)."""
        self.db.execute("DELETE FROM calibration")
        self.db.executemany("INSERT INTO calibration VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def add_batch_attempt(self, request_id: str, fingerprint: str, model: str, *,
                          run_id: int, now: float) -> int:
        """An attempt answered through the provider's Batch API (mode ``batch``),
        numbered after the request's attempts so far; its row written now."""
        n = self.db.execute("SELECT COUNT(*) FROM attempts WHERE request_id=? AND "
                            "fingerprint=?", (request_id, fingerprint)).fetchone()[0]
        return self.start_attempt(request_id, fingerprint, model, run_id=run_id, n=n + 1,
                                  now=now, mode="batch")

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def _open_readonly(path: Path) -> sqlite3.Connection:
    """Read a store without writing anything, also in a read-only directory.

    ``mode=ro`` still needs the WAL's shared-memory file; where that cannot be
    created (a read-only directory or mount, someone else's files), the store
    is opened ``immutable``: a finished run has no WAL left to miss.
    """
    uri = "file:" + urllib.parse.quote(str(path.resolve()))
    db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=10)
    try:
        db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        return db
    except sqlite3.OperationalError as exc:
        db.close()
        if "no such table" in str(exc):
            raise StoreError(f"{path} is not a batchgen run store") from None
    db = sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=10)
    db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    return db


def peek_meta(run_dir: Path, key: str) -> str | None:
    """One meta value of ``run_dir``'s store, or None: no store, no such key, or
    a store that cannot be read right now (locked, damaged). Never raises, never
    writes: for shortcuts that may simply be skipped."""
    path = run_dir / "run.db"
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])
