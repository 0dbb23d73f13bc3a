"""``batchgen status``: a read-only look at a run store, safe while a run is active."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

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
    outage: str | None = None  # the endpoint unreachable: since when, why, the next try
    at_the_cap: int = 0  # done, but stopped at the output cap (finish_reason length)


def outage_text(kept: str | None, running: bool, now: float | None = None) -> str | None:
    """What a run recorded of an outage of its endpoint, in words."""
    if not kept:
        return None
    try:
        state = json.loads(kept)
        since = time.strftime("%H:%M:%S", time.localtime(float(state["since"])))
        reason, probes, nxt = str(state["reason"]), int(state["probes"]), float(state["next"])
    except (ValueError, TypeError, KeyError, OverflowError):
        return None
    head = f"endpoint unreachable since {since} — {reason}; {probes} probe" \
           f"{'s' if probes != 1 else ''}"
    if not running:
        return head + "; the run stopped waiting (run.outage_timeout): run it again"
    wait = max(0.0, nxt - (time.time() if now is None else now))
    return f"{head}, next try in {wait:.0f} s"


def read_status(run_dir: Path, failed_limit: int = 10) -> Status:
    with RunStore.reading(run_dir) as store:
        return _read(store, run_dir, failed_limit)


def _read(store: RunStore, run_dir: Path, failed_limit: int) -> Status:
    counts = store.counts()
    st = Status(running=RunLock.is_held(run_dir))
    st.done, st.failed = counts["done"], counts["failed"]
    st.streaming = counts["streaming"] if st.running else 0
    st.total = st.done + st.failed + counts["pending"] + counts["batched"]
    st.batched = counts["batched"]
    batches = store.batches(readonly=True)
    if batches.exists():
        for b in batches.all():
            counted = f", {b.done_text()}" if b.counts else ""
            where = f"{b.where} ({b.state})" if b.where != b.state else b.state
            if b.note and b.state == "dropped":
                where += f": {b.note}"
            st.batches.append(f"{b.name}: {where}{counted}; "
                              f"{b.requests} request{'s' if b.requests != 1 else ''} of {b.model}")
    st.pending = counts["pending"] - st.streaming
    st.outage = outage_text(store.meta("outage"), st.running)
    st.at_the_cap = store.at_the_cap()
    row = store.usage_totals()
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
