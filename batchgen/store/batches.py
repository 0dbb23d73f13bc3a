"""Provider batches in the run store: every remote step recorded before it is taken.

One row per batch this run directory sends through the provider's Batch API::

    batches      (id, run_key, model, state, file_id, batch_id, remote_status,
                  counts, output_file_id, error_file_id, requests, created,
                  updated, note)
    batch_items  (batch, request_id, fingerprint)

``state`` is the last step *begun*, committed before the call that makes it:

=============  ================================================================
``planned``    requests chosen (they are ``batched``, out of streaming); nothing
               sent yet
``uploading``  the input file is being uploaded; after a crash, look for it by
               its name (which holds the run key) before uploading again
``uploaded``   the file is there (``file_id``)
``creating``   ``batches.create`` is being called; after a crash, look for a
               batch whose metadata holds the run key before creating again
``submitted``  the provider runs it (``batch_id``); poll it
``collected``  its output and error files are in the store: done
``dropped``    not created at the provider, and a request in it changed (its
               prompt edited, the endpoint moved) before it was: its requests
               went back to pending, to go into a batch of what they are now
=============  ================================================================

A request is in at most one open batch; ``batch_items`` says which. An item
whose request changed after its batch was created is *stale*: its answer is
paid for, and is not the request's.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    run_key TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    state TEXT NOT NULL,
    file_id TEXT,
    batch_id TEXT,
    remote_status TEXT,
    counts TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    requests INTEGER NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    note TEXT,
    base_url TEXT
);
CREATE TABLE IF NOT EXISTS batch_items (
    batch INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (batch, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batch_items_request ON batch_items(request_id);
"""

OPEN_STATES = ("planned", "uploading", "uploaded", "creating", "submitted")
NOT_CREATED = ("planned", "uploading", "uploaded")  # no batch at the provider yet
CREATED = ("creating", "submitted")  # at the provider (or maybe): bought there
_COLUMNS = ("id, run_key, model, state, file_id, batch_id, remote_status, counts, "
            "output_file_id, error_file_id, requests, note")


@dataclass
class BatchRow:
    id: int
    run_key: str
    model: str
    state: str
    file_id: str | None
    batch_id: str | None
    remote_status: str | None
    counts: dict[str, int]
    output_file_id: str | None
    error_file_id: str | None
    requests: int
    note: str | None
    base_url: str | None = None  # the endpoint it went to; None in a store from before

    @property
    def filename(self) -> str:
        return f"batchgen-{self.run_key}.jsonl"

    @property
    def name(self) -> str:
        """The provider's batch id, once it has one."""
        return self.batch_id or "(not created yet)"

    @property
    def where(self) -> str:
        """Where it stands: the provider's status, else the last step begun."""
        return self.remote_status or self.state

    def done_text(self) -> str:
        """``completed/total done[, N failed]`` as the provider counts them."""
        c = self.counts
        failed = f", {c['failed']} failed" if c.get("failed") else ""
        return f"{c.get('completed', 0)}/{c.get('total', self.requests)} done{failed}"


class BatchStore:
    """Batch bookkeeping on a run store's connection (commits are the caller's)."""

    def __init__(self, db: sqlite3.Connection, readonly: bool = False) -> None:
        self.db = db
        if not readonly:
            db.executescript(SCHEMA)
        have = {r[1] for r in db.execute("PRAGMA table_info(batches)")}
        if have and "base_url" not in have and not readonly:  # a store from before
            db.execute("ALTER TABLE batches ADD COLUMN base_url TEXT")
            have.add("base_url")
        self._columns = _COLUMNS + (", base_url" if "base_url" in have else ", NULL")

    def exists(self) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE name='batches'"
                               ).fetchone() is not None

    def plan(self, model: str, items: list[tuple[str, str]], base_url: str) -> BatchRow:
        """Choose ``items`` (request id, fingerprint) for one new batch at the
        endpoint ``base_url``: they leave streaming (state ``batched``) in the same
        transaction."""
        now = time.time()
        key = uuid.uuid4().hex
        cur = self.db.execute(
            "INSERT INTO batches (run_key, model, state, requests, created, updated, base_url) "
            "VALUES (?, ?, 'planned', ?, ?, ?, ?)",
            (key, model, len(items), now, now, endpoint_of(base_url)))
        assert cur.lastrowid is not None  # noqa: S101 - an invariant, for the type checker
        self.db.executemany("INSERT INTO batch_items VALUES (?, ?, ?)",
                            [(cur.lastrowid, rid, fp) for rid, fp in items])
        self.db.executemany("UPDATE requests SET state='batched' WHERE id=?",
                            [(rid,) for rid, _ in items])
        self.db.commit()
        return self.get(cur.lastrowid)

    def get(self, batch: int) -> BatchRow:
        row = self.db.execute(
            f"SELECT {self._columns} FROM batches WHERE id=?", (batch,)  # noqa: S608
        ).fetchone()
        return _row(row)

    def open(self) -> list[BatchRow]:
        marks = ",".join("?" * len(OPEN_STATES))
        return [_row(r) for r in self.db.execute(
            f"SELECT {self._columns} FROM batches "  # noqa: S608
            f"WHERE state IN ({marks}) ORDER BY id", OPEN_STATES)]

    def all(self) -> list[BatchRow]:
        return [_row(r) for r in self.db.execute(
            f"SELECT {self._columns} FROM batches ORDER BY id")]  # noqa: S608

    def elsewhere(self, base_url: str) -> list[BatchRow]:
        """Batches created (or being created) at an endpoint other than
        ``base_url`` and not collected: only there can they be looked up."""
        marks = ",".join("?" * len(CREATED))
        here = endpoint_of(base_url)
        return [b for b in map(_row, self.db.execute(
            f"SELECT {self._columns} FROM batches "  # noqa: S608
            f"WHERE state IN ({marks}) ORDER BY id", CREATED))
            if b.base_url is not None and b.base_url != here]

    def leave(self, batch: BatchRow, base_url: str) -> None:
        """Give up on a batch at another endpoint (``--force``): its requests go
        back to streaming / the next batch here; what it answers is not collected."""
        self.release([rid for rid, _ in self.items(batch.id)])
        self.db.execute("UPDATE batches SET state='left', updated=?, note=? WHERE id=?",
                        (time.time(), f"submitted to {batch.base_url}; left by a run at "
                         f"{endpoint_of(base_url)} (--force)", batch.id))
        self.db.commit()

    def step(self, batch: int, state: str, **fields: Any) -> None:
        """Record a step (and what it learned), committed before what comes next."""
        names = [k for k in fields if k in ("file_id", "batch_id", "remote_status", "counts",
                                            "output_file_id", "error_file_id", "note")]
        values = [json.dumps(fields[k]) if k == "counts" else fields[k] for k in names]
        sets = "".join(f", {k}=?" for k in names)
        self.db.execute(f"UPDATE batches SET state=?, updated=?{sets} WHERE id=?",  # noqa: S608
                        (state, time.time(), *values, batch))
        self.db.commit()

    def items(self, batch: int) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self.db.execute(
            "SELECT request_id, fingerprint FROM batch_items WHERE batch=? ORDER BY request_id",
            (batch,))]

    def drop_stale(self, base_url: str) -> list[BatchRow]:
        """Open batches not yet created at the provider that hold a stale item,
        or were planned for an endpoint other than ``base_url``: dropped, their
        requests pending again; and a pending request an open batch holds as it
        is now: batched again (committed)."""
        marks = ",".join("?" * len(NOT_CREATED))
        here = endpoint_of(base_url)
        rows = [_row(r) for r in self.db.execute(
            f"SELECT {self._columns} FROM batches b "  # noqa: S608
            f"WHERE state IN ({marks}) AND (b.base_url IS NOT ? AND b.base_url IS NOT NULL "
            " OR EXISTS (SELECT 1 FROM batch_items i "
            " LEFT JOIN requests r ON r.id = i.request_id WHERE i.batch = b.id AND "
            " (r.fingerprint IS NOT i.fingerprint OR r.position IS NULL))) ORDER BY id",
            (*NOT_CREATED, here))]
        for b in rows:
            self.release([rid for rid, _ in self.items(b.id)])
            why = "a request changed before it was sent" if b.base_url in (None, here) \
                else f"planned for {b.base_url}, not sent there"
            self.db.execute("UPDATE batches SET state='dropped', updated=?, note=? WHERE id=?",
                            (time.time(), why, b.id))
        # a request pending while an open batch holds it as it is now (its edit
        # undone) is that batch's again, not sent in another
        open_marks = ",".join("?" * len(OPEN_STATES))
        self.db.execute(
            "UPDATE requests SET state='batched' WHERE state='pending' AND EXISTS ("  # noqa: S608
            "SELECT 1 FROM batch_items i JOIN batches b ON b.id = i.batch "
            "WHERE i.request_id = requests.id AND i.fingerprint = requests.fingerprint "
            f"AND b.state IN ({open_marks}))", OPEN_STATES)
        self.db.commit()
        return rows

    def stale(self, batch: int) -> set[str]:
        """The batch's items whose request changed (or left the job) since."""
        return {r[0] for r in self.db.execute(
            "SELECT i.request_id FROM batch_items i LEFT JOIN requests r "
            "ON r.id = i.request_id WHERE i.batch = ? AND "
            "(r.fingerprint IS NOT i.fingerprint OR r.position IS NULL)", (batch,))}

    def release(self, request_ids: list[str]) -> None:
        """Requests a batch did not answer go back to streaming / the next batch."""
        self.db.executemany("UPDATE requests SET state='pending' WHERE id=? AND state='batched'",
                            [(rid,) for rid in request_ids])


def _row(r: Any) -> BatchRow:
    return BatchRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7] or "{}"), r[8],
                    r[9], r[10], r[11], r[12])


def endpoint_of(base_url: str) -> str:
    """An endpoint as batches record it: its base URL without a trailing slash."""
    return base_url.rstrip("/")
