"""``batchgen status``: a read-only look at a run store, safe while a run is active."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.errors import StoreError, UsageError
from batchgen.store.batches import BatchStore
from batchgen.store.lock import RunLock
from batchgen.store.runstore import RunStore


@dataclass
class Status:
    running: bool
    total: int = 0
    done: int = 0
    streaming: int = 0
    pending: int = 0
    failed: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_attempts: int = 0
    batched: int = 0
    failures: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)


def read_status(run_dir: Path, failed_limit: int = 10) -> Status:
    db = run_dir / "run.db"
    if not db.exists():
        raise UsageError(f"{run_dir} holds no run (no run.db); is it a run directory?")
    store = RunStore(db, readonly=True)
    try:
        return _read(store, run_dir, failed_limit)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{db} cannot be read ({exc}); it may be damaged") from None
    finally:
        store.close()


def _read(store: RunStore, run_dir: Path, failed_limit: int) -> Status:
    counts = store.counts()
    st = Status(running=RunLock.is_held(run_dir))
    st.done, st.failed = counts["done"], counts["failed"]
    st.streaming = counts["streaming"] if st.running else 0
    st.total = st.done + st.failed + counts["pending"] + counts["batched"]
    st.batched = counts["batched"]
    batches = BatchStore(store.db, readonly=True)
    if batches.exists():
        for b in batches.all():
            c = b.counts
            counted = f", {c.get('completed', 0)}/{c.get('total', b.requests)} done" \
                f"{', ' + str(c['failed']) + ' failed' if c.get('failed') else ''}" if c else ""
            st.batches.append(f"{b.batch_id or '(not created yet)'}: "
                              f"{b.remote_status or b.state} ({b.state}){counted}; "
                              f"{b.requests} requests of {b.model}")
    st.pending = counts["pending"] - st.streaming
    row = store.query(
        "SELECT COUNT(*) AS n, COALESCE(SUM(u.prompt_tokens), 0) AS p, "
        "COALESCE(SUM(u.completion_tokens), 0) AS c, COALESCE(SUM(u.estimated), 0) AS e "
        "FROM attempts a LEFT JOIN usage u ON u.attempt_id = a.id"
    )[0]
    st.attempts, st.prompt_tokens = row["n"], row["p"]
    st.completion_tokens, st.estimated_attempts = row["c"], row["e"]
    for fail in store.failed_in_order():
        if len(st.failures) >= failed_limit:
            break
        where = " ".join(
            str(x) for x in (fail["error_class"],
                             f"HTTP {fail['http_status']}" if fail["http_status"] else None,
                             fail["error_code"]) if x
        )
        st.failures.append(f"{fail['id']}: {where}: {fail['error_message'] or ''}".rstrip())
    return st
