"""The journal: what the engine streams, committed to the run store as it comes.

Text of every streaming attempt waits in memory (:class:`Live`) and is
committed as segments every ``flush_interval`` seconds; finished attempts are
committed in batches within ``FINISH_BATCH`` seconds of each other (attempt
end, usage, compacted text and the request marked done, in one transaction),
and their ``texts/`` files follow on a writer thread, after the commit
(:mod:`batchgen.engine.textfiles`). An attempt's row waits for the next
commit too, so one that finishes before it is written once, whole.

Every write goes through :meth:`Journal.guard`. When the disk refuses one —
full (SQLITE_FULL, ENOSPC), read-only, failing — the journal records a
:class:`~batchgen.errors.StorageError`, calls ``on_failure`` once (the engine
stops launching and cancels what streams: nothing more could be saved, so
nothing more should be bought) and from then on refuses every write with that
error. What was committed before stays; the run exits 74.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from batchgen.engine.textfiles import TextFiles
from batchgen.errors import StorageError
from batchgen.store.attempts import AttemptEnd, Ended, Started
from batchgen.store.records import Resume, Usage
from batchgen.store.runstore import Pending, RunStore

log = logging.getLogger(__name__)

FINISH_BATCH = 0.01  # seconds: finished requests committed together
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass
class Live:
    """Text of one streaming attempt: all of it, and the part not yet stored."""

    attempt_id: int
    clock: Callable[[], float] | None = None
    first_token: float | None = None  # when the first text arrived (time to first token)
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    pending_content: list[str] = field(default_factory=list)
    pending_reasoning: list[str] = field(default_factory=list)
    seq: int = 0
    on_reasoning: Callable[[], None] | None = None  # called at the first reasoning text

    def on_text(self, content: str, reasoning: str) -> None:
        if self.first_token is None and self.clock is not None:
            self.first_token = self.clock()
        if content:
            self.content.append(content)
            self.pending_content.append(content)
        if reasoning:
            if not self.reasoning and self.on_reasoning is not None:
                self.on_reasoning()
            self.reasoning.append(reasoning)
            self.pending_reasoning.append(reasoning)

    def take_segment(self) -> tuple[int, int, str, str] | None:
        if not self.pending_content and not self.pending_reasoning:
            return None
        row = (self.attempt_id, self.seq, "".join(self.pending_content),
               "".join(self.pending_reasoning))
        self.seq += 1
        self.pending_content.clear()
        self.pending_reasoning.clear()
        return row


def storage_error(exc: BaseException, run_dir: Path) -> StorageError:
    """What a refused write means, for a user who has to fix the disk."""
    if isinstance(exc, StorageError):
        return exc
    text = str(exc)
    no_space = (isinstance(exc, OSError) and exc.errno in _NO_SPACE) or (
        isinstance(exc, sqlite3.Error) and "full" in text.lower())
    if no_space:
        return StorageError(f"no space left on {run_dir}", path=str(run_dir), no_space=True)
    return StorageError(f"cannot write to {run_dir}: {text or type(exc).__name__}",
                        path=str(run_dir), no_space=False)


class Journal:
    """All writes of a running engine: attempts, segments, finishes, files."""

    def __init__(self, store: RunStore, run_dir: Path, *, clock: Callable[[], float],
                 flush_interval: float, on_failure: Callable[[StorageError], None]) -> None:
        self.store = store
        self.run_dir = run_dir
        self.clock = clock
        self.flush_interval = flush_interval
        self.on_failure = on_failure
        self.live: dict[int, Live] = {}
        self.started: dict[int, Started] = {}  # attempts whose row waits for the next flush
        self.finished: list[Ended] = []
        self.failure: StorageError | None = None
        self._finished = asyncio.Event()
        self._closing = False
        self.files = TextFiles(run_dir, self._fail)

    # ------------------------------------------------------------ writes

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Every write runs in here: a refused one becomes the run's StorageError."""
        if self.failure is not None:
            raise self.failure
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)
            assert self.failure is not None  # noqa: S101 - an invariant, for the type checker
            raise self.failure from None

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = storage_error(exc, self.run_dir)
            log.error("stopping: %s (%s)", self.failure, exc)
            self.on_failure(self.failure)

    def open(self, p: Pending, *, run_id: int, n: int, resume: Resume | None = None) -> Live:
        with self.guard():
            started = self.store.new_attempt(p.id, p.fingerprint, p.model, run_id=run_id, n=n,
                                             now=self.clock(), resume=resume)
        self.started[started.id] = started
        self.files.reserve(p.id)
        live = Live(started.id, self.clock,
                    on_reasoning=functools.partial(self.files.reserve, p.id, True))
        self.live[started.id] = live
        return live

    def end(self, live: Live, end: AttemptEnd, usage: Usage | None) -> None:
        """An attempt that did not finish: its text so far and how it ended, now."""
        self.live.pop(live.attempt_id, None)
        if live.first_token is not None:
            end = replace(end, first_token=live.first_token)
        with self.guard():
            segment = live.take_segment()
            if segment is not None:
                self.store.add_segments([segment])
            started = self.started.pop(live.attempt_id, None)
            self.store.write_attempts([started] if started is not None else [],
                                      [Ended(live.attempt_id, end, usage, self.clock())])

    def finish(self, done: Ended) -> None:
        """A finished attempt: committed by the flusher with others, within
        FINISH_BATCH seconds."""
        self.live.pop(done.attempt_id, None)
        self.finished.append(done)
        self._finished.set()

    def set_outage(self, state: dict[str, object] | None) -> None:
        """What ``batchgen status`` says of an outage of the endpoint (committed
        with the next flush); ``None`` when the endpoint answers."""
        with self.guard():
            self.store.set_meta("outage", json.dumps(state) if state is not None else "")

    def mark_failed(self, request_id: str, reason: str | None = None) -> None:
        with self.guard():
            self.store.mark(request_id, "failed", reason=reason)
        self.files.release(request_id)

    # ------------------------------------------------------------ flushing

    async def run(self) -> None:
        """Flush every ``flush_interval``, and at once when a request finished:
        a finished result should be on disk before a kill can make a re-run pay
        for it. Returns when :meth:`close` is called or storage failed."""
        loop = asyncio.get_running_loop()
        next_segments = loop.time() + self.flush_interval
        while not self.closing():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(),
                                       max(0.0, next_segments - loop.time()))
            if self._finished.is_set():
                await asyncio.sleep(FINISH_BATCH)  # let finishes that arrive together share it
            self._finished.clear()
            if self.closing():
                break
            segments = loop.time() >= next_segments
            if segments:
                next_segments = loop.time() + self.flush_interval
            with contextlib.suppress(StorageError):  # recorded; the engine stops
                self.flush(segments=segments)

    def closing(self) -> bool:
        return self._closing or self.failure is not None

    def stop(self) -> None:
        # A flag, not cancel(): wait_for() in 3.11 can swallow a cancellation.
        self._closing = True
        self._finished.set()

    async def close(self) -> None:
        """The last flush, then every file written; the writer thread ends."""
        try:
            if self.failure is None:
                with contextlib.suppress(StorageError):
                    self.flush()
        finally:
            await self.files.close()

    def flush(self, segments: bool = True) -> None:
        """Commit the rows of attempts started since the last flush and of
        those that finished (with the text streamed so far when ``segments``),
        then hand the finished ones' files to the writer; their text went in
        with them."""
        with self.guard():
            if segments:
                rows = [s for s in (live.take_segment() for live in list(self.live.values()))
                        if s]
                if rows:
                    self.store.add_segments(rows)
            finished, self.finished = self.finished, []
            started, self.started = list(self.started.values()), {}
            if started or finished:
                self.store.write_attempts(started, finished)
            self.store.commit()
        if finished:
            self.files.submit(finished)

    async def room(self) -> None:
        """Hold launches while too much finished text waits for its files."""
        await self.files.room()
