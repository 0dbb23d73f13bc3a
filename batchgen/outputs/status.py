"""``batchgen status``: a read-only look at a run store, safe while a run is
active — as text, or as JSON for scripts and monitoring (``--format json``)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchgen.jobs.shards import find_shards
from batchgen.outputs.report import STOPPED
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
    # every failed request's reason, and how many failed for it: most first
    failure_reasons: list[dict[str, Any]] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)
    outage: str | None = None  # the endpoint unreachable: since when, why, the next try
    # how the latest run ended, when it left requests pending and none runs now
    last_run: str | None = None
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
    wait = nxt - (time.time() if now is None else now)
    return f"{head}, next try in {wait:.0f} s" if wait >= 0.5 else f"{head}, trying now"


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
            if b.note and (b.state in ("dropped", "left") or b.where == "failed"):
                where += f": {b.note}"
            st.batches.append(f"{b.name}: {where}{counted}; "
                              f"{b.requests} request{'s' if b.requests != 1 else ''} of {b.model}")
    st.pending = counts["pending"] - st.streaming
    st.outage = outage_text(store.meta("outage"), st.running)
    if not st.running and st.pending + st.batched:
        status = store.latest_status()
        status = "killed" if status == "running" else status  # its process died
        st.last_run = STOPPED.get(status or "", None)
    st.at_the_cap = store.at_the_cap()
    row = store.usage_totals()
    st.attempts, st.prompt_tokens = row["n"], row["p"]
    st.completion_tokens, st.estimated_attempts = row["c"], row["e"]
    for fail in store.failed_in_order():
        if len(st.failures) >= failed_limit:
            break
        st.failures.append(f"{fail['id']}: {_reason(fail)}")
    st.failure_reasons = [{"reason": _reason(row), "requests": row["requests"]}
                          for row in store.failure_reasons()]
    return st


def _reason(fail: Any) -> str:
    where = " ".join(
        str(x) for x in (fail["error_class"],
                         f"HTTP {fail['http_status']}" if fail["http_status"] else None,
                         fail["error_code"]) if x
    )
    return f"{where}: {fail['error_message'] or ''}".rstrip()


def render_status(path: Path, shown: str, fmt: str, failed_limit: int = 10) -> str:
    """``batchgen status`` of a run directory, or of a sharded job's directory
    (every shard, the shards not started, and all of them together); ``shown``
    is the directory as the user named it."""
    shards = find_shards(path) if not (path / "run.db").exists() else {}
    if not shards:
        st = read_status(path, failed_limit=failed_limit)
        if fmt == "json":
            return json.dumps({"run_dir": shown, **_fields(st)}, ensure_ascii=False)
        return "\n".join(_lines(shown, st))
    n = max(n for _, n in shards)
    each = {shard.name: read_status(shard, failed_limit=failed_limit)
            for shard in shards.values()}
    total = {key: sum(getattr(st, attr) for st in each.values()) for key, attr in
             (("requests", "total"), ("done", "done"), ("streaming", "streaming"),
              ("pending", "pending"), ("failed", "failed"))}
    missing = [f"shard-{k}-of-{n}" for k in range(1, n + 1) if (k, n) not in shards]
    if fmt == "json":
        return json.dumps({"run_dir": shown, "shards": {name: _fields(st)
                                                         for name, st in each.items()},
                           "not_started": missing, "all": total}, ensure_ascii=False)
    lines = [f"{shown}: {len(shards)} of {n} shards"]
    for name, st in each.items():
        state = "running" if st.running else "not running"
        lines.append(f"  {name}: {state}; {st.total} requests, {st.done} done, "
                     f"{st.streaming} streaming, {st.pending} pending, {st.failed} failed")
        if st.outage:
            lines.append(f"    {st.outage}")
        lines += [f"    failed {fail}" for fail in st.failures]
    if missing:
        lines.append(f"  not started: {', '.join(missing)}")
    lines.append(f"  all shards: {total['requests']} requests, {total['done']} done, "
                 f"{total['streaming']} streaming, {total['pending']} pending, "
                 f"{total['failed']} failed")
    return "\n".join(lines)


def _fields(st: Status) -> dict[str, Any]:
    """A run's status for ``--format json``: ``requests`` is the job's count."""
    fields = asdict(st)
    return {"running": fields.pop("running"), "requests": fields.pop("total"), **fields}


def _lines(shown: str, st: Status) -> list[str]:
    lines = [f"{shown}: {'running' if st.running else 'not running'}"]
    if st.outage:
        lines.append(f"  {st.outage}")
    lines += [f"  requests:  {st.total}", f"  done:      {st.done}",
              f"  streaming: {st.streaming}", f"  pending:   {st.pending}"]
    if st.last_run:
        lines.append(f"  last run:  {st.last_run}")
    if st.batched:
        lines.append(f"  batched:   {st.batched} (in a provider batch)")
    lines.append(f"  failed:    {st.failed}")
    if st.at_the_cap:
        lines.append(f"  at the cap: {st.at_the_cap} done but stopped at the output cap "
                     "(finish_reason length; run.on_length: continue goes on)")
    lines.append(f"  attempts:  {st.attempts}")
    n = st.estimated_attempts
    est = f" ({n} attempt{'s' if n != 1 else ''} estimated)" if n else ""
    lines.append(f"  tokens:    {st.prompt_tokens:,} prompt, "
                 f"{st.completion_tokens:,} completion{est}")
    lines += [f"  batch {batch}" for batch in st.batches]
    lines += _reasons(st)
    lines += [f"  failed {fail}" for fail in st.failures]
    return lines


REASONS_SHOWN = 5


def _reasons(st: Status) -> list[str]:
    """Why the failed requests failed, most common first, once more fail than
    are listed by id (a wrong parameter fails them all alike)."""
    if st.failed <= len(st.failures):
        return []
    out = [f"  failed for: {r['requests']:,} × {r['reason']}"
           for r in st.failure_reasons[:REASONS_SHOWN]]
    rest = len(st.failure_reasons) - REASONS_SHOWN
    if rest > 0:
        out.append(f"  failed for: {rest} other reason{'s' if rest != 1 else ''} "
                   "(--format json lists them all)")
    return out
