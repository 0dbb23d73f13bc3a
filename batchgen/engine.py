"""The asyncio core of a run: launch requests, stream attempts, journal text.

One task per active request; at most ``2 × concurrency`` exist at a time, so
memory does not grow with the job. Each task runs its attempts under the
tenacity policy; every attempt passes the :class:`Gate` (pause, RPM/TPM) and
holds an :class:`AdaptiveLimit` slot while it streams. Text lands in memory
buffers; a flusher commits them to the store a few times a second and writes
``texts/`` files for requests that finished, after their commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import retry, tokens
from .budget import BudgetGuard
from .errors import (
    AttemptError,
    ModerationError,
    RequestFatalError,
    RunFatalError,
    TransientError,
)
from .exports import text_files, write_many_atomic
from .limits import AdaptiveLimit, Breaker, Gate, ratelimit_pause
from .progress import Progress
from .store import AttemptEnd, Ended, Pending, RunStore
from .stream import StreamResult, stream_attempt
from .usage import Usage, estimate, from_report

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_RESERVE = 4096  # tokens assumed for TPM when a request sets no max_tokens
FINISH_BATCH = 0.01  # seconds: finished requests committed together
MAX_PENDING_TEXT = 8 * 1024 * 1024  # bytes of finished results waiting for their files
ENDED_OVERHEAD = 2048  # bytes a finished result holds besides its text


class _Stopped(Exception):
    """The run stopped launching; this request stays pending."""


@dataclass
class _Live:
    """Text of one streaming attempt: all of it, and the part not yet stored."""

    attempt_id: int
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    pending_content: list[str] = field(default_factory=list)
    pending_reasoning: list[str] = field(default_factory=list)
    seq: int = 0

    def on_text(self, content: str, reasoning: str) -> None:
        if content:
            self.content.append(content)
            self.pending_content.append(content)
        if reasoning:
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


@dataclass
class Outcome:
    """What the engine did, for the summary and the exit code."""

    done: int = 0
    failed: int = 0
    fatal: RunFatalError | None = None
    stopped_by: str | None = None  # "budget" | "interrupt" | "fatal"


@dataclass
class EngineDeps:
    """Side effects, passed in (STYLE.md 4)."""

    store: RunStore
    client: Any
    run_dir: Path
    run_id: int
    progress: Progress
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    redact: retry.Redact
    rng: random.Random
    flush_interval: float = 0.2
    budget: BudgetGuard | None = None


class Engine:
    def __init__(self, deps: EngineDeps, *, concurrency: int, max_attempts: int,
                 rpm: float | None, tpm: float | None) -> None:
        self.d = deps
        self.max_attempts = max_attempts
        self.limit = AdaptiveLimit(concurrency, deps.clock)
        self.gate = Gate(rpm=rpm, tpm=tpm, clock=deps.clock, sleep=deps.sleep)
        self.breaker = Breaker(self.gate)
        self.max_active = max(2 * concurrency, concurrency + 4)
        self.outcome = Outcome()
        self.live: dict[int, _Live] = {}
        self.finished: list[Ended] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._finished = asyncio.Event()
        self._closing = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchgen-texts")
        self._writes: set[asyncio.Future[None]] = set()
        self._pending_bytes = 0
        self._room = asyncio.Event()

    # ------------------------------------------------------------ control

    def stop(self, reason: str) -> None:
        """Stop launching attempts; in-flight ones finish unless cancelled."""
        self.stopping = True
        if self.outcome.stopped_by is None:
            self.outcome.stopped_by = reason

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def run(self) -> Outcome:
        flusher = asyncio.create_task(self._flush_loop())
        try:
            await self._launch_all()
        finally:
            # A flag, not cancel(): wait_for() in 3.11 can swallow a cancellation.
            self._closing = True
            self._finished.set()
            await flusher
            await self.flush()
            await self._drain_writes()
            self._writer.shutdown(wait=True)
        return self.outcome

    async def _launch_all(self) -> None:
        room = asyncio.Semaphore(self.max_active)
        try:
            for pending in self.d.store.pending():
                await room.acquire()
                await self._writer_room()
                if self.stopping:
                    room.release()
                    break
                if self.d.budget is not None:
                    reason = self.d.budget.admit(pending)
                    if reason is not None:
                        # stop launching; what was admitted runs to its end
                        room.release()
                        if self.outcome.stopped_by is None:
                            self.outcome.stopped_by = reason
                        break
                task = asyncio.create_task(self._request(pending))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                task.add_done_callback(lambda _t: room.release())
        finally:
            while self.tasks:
                await asyncio.gather(*list(self.tasks), return_exceptions=True)

    # ------------------------------------------------------------ requests

    async def _request(self, p: Pending) -> None:
        number = p.attempts
        reserve = tokens.prompt_tokens(p.body.get("messages") or []) + int(
            p.body.get("max_tokens") or p.body.get("max_completion_tokens")
            or DEFAULT_OUTPUT_RESERVE
        )
        try:
            async for attempt in retry.policy(self.max_attempts, sleep=self._sleep_unless_stopped,
                                              rng=self.d.rng):
                with attempt:
                    if self.stopping:
                        raise _Stopped
                    await self.gate.wait(reserve)
                    await self.limit.acquire()
                    try:
                        if self.stopping:
                            raise _Stopped
                        if number > p.attempts and not self._retry_fits(p):
                            raise _Stopped
                        number += 1
                        await self._attempt(p, number, reserve)
                    finally:
                        self.limit.release()
        except _Stopped:
            return
        except RunFatalError as exc:
            if self.outcome.fatal is None:
                self.outcome.fatal = exc
                log.warning("stopping the run: %s", exc)
            self.stop("fatal")
        except (TransientError, RequestFatalError) as exc:
            log.warning("%s failed for good: %s", p.id, exc)
            self.d.store.mark(p.id, "failed")
            self.outcome.failed += 1
            self.d.progress.update(failed=1, in_flight=self.limit.active)
        finally:
            if self.d.budget is not None:
                self.d.budget.release(p)

    def _retry_fits(self, p: Pending) -> bool:
        """A retry spends again: it goes only while the budget still fits."""
        budget = self.d.budget
        if budget is None or budget.spent + sum(budget.reserved.values()) <= budget.budget.max_cost:
            return True
        if self.outcome.stopped_by is None:
            self.outcome.stopped_by = "budget"
        return False

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        if not self.stopping:
            await self.d.sleep(seconds)

    async def _attempt(self, p: Pending, number: int, reserve: int) -> None:
        store = self.d.store
        attempt_id = store.start_attempt(p, run_id=self.d.run_id, n=number, now=self.d.clock())
        live = _Live(attempt_id)
        self.live[attempt_id] = live
        result = StreamResult()
        try:
            await stream_attempt(self.d.client, p.body, live.on_text, result,
                                 redact=self.d.redact, on_open=self.gate.on_accepted)
            if result.finish_reason == "content_filter":
                raise ModerationError("the provider's content filter stopped the output",
                                      error_class="moderation", code="content_filter",
                                      provider_request_id=result.request_id)
        except asyncio.CancelledError:
            self._end(live, p, AttemptEnd(status="aborted", error_class="interrupted",
                                          error_message="stopped by the user",
                                          provider_request_id=result.request_id),
                      self._billed(p, live, result))
            raise
        except Exception as exc:
            err = retry.classify(exc, redact=self.d.redact)
            log.info("%s attempt %d failed: %s", p.id, number, err)
            self._end(live, p, AttemptEnd(
                status="error", error_class=err.error_class, error_code=err.code,
                http_status=err.http_status, error_message=err.message,
                provider_request_id=err.provider_request_id or result.request_id,
            ), self._billed(p, live, result))
            self._learn(err)
            raise err from None
        self._note_headers(result)
        content, reasoning = "".join(live.content), "".join(live.reasoning)
        usage = from_report(result.usage, p.body, content, reasoning)
        # Journaled by the flusher, many at once, within FINISH_BATCH seconds.
        calls = json.dumps(result.tool_call_list(), ensure_ascii=False) \
            if result.tool_calls else None
        self.finished.append(Ended(
            attempt_id, AttemptEnd(status="done", finish_reason=result.finish_reason,
                                   provider_request_id=result.request_id, tool_calls=calls),
            usage, self.d.clock(), request_id=p.id, content=content, reasoning=reasoning))
        self.live.pop(attempt_id, None)
        if self.d.budget is not None:
            self.d.budget.charge(p, usage)
        self._finished.set()
        self.outcome.done += 1
        self.limit.on_success()
        self.breaker.record(True)
        self.gate.settle(reserve, usage.total_tokens)
        self.d.progress.update(done=1, tokens=usage.completion_tokens,
                               in_flight=self.limit.active - 1)

    def _billed(self, p: Pending, live: _Live, result: StreamResult) -> Usage | None:
        """What an unfinished attempt cost: nothing if no byte of output came back."""
        if result.usage:
            return from_report(result.usage, p.body, "".join(live.content),
                               "".join(live.reasoning))
        if result.chunks == 0:
            return None
        return estimate(p.body, "".join(live.content), "".join(live.reasoning))

    def _end(self, live: _Live, p: Pending, end: AttemptEnd, usage: Usage | None) -> None:
        """An attempt that did not finish: its text so far and its end, now."""
        segment = live.take_segment()
        if segment is not None:
            self.d.store.add_segments([segment])
        self.d.store.end_attempt(live.attempt_id, end, usage=usage, now=self.d.clock())
        self.live.pop(live.attempt_id, None)
        if self.d.budget is not None:
            self.d.budget.charge(p, usage)

    def _note_headers(self, result: StreamResult) -> None:
        pause = ratelimit_pause(result.ratelimit) if result.ratelimit else None
        if pause:
            log.info("rate limit exhausted per x-ratelimit headers; holding starts %.1f s", pause)
            self.gate.pause_for(pause)

    def _learn(self, err: AttemptError) -> None:
        """Feed an attempt's failure to the rate limiter and the retry budget."""
        if isinstance(err, TransientError):
            if err.http_status == 429 or err.error_class == "rate_limited":
                # Back off globally: the first 429 pauses every start; after that
                # the learned start rate is the back-off (a pause per 429 would
                # idle the whole run each time the rate probes the limit).
                if self.gate.learned_rate is None:
                    self.gate.pause_for(err.retry_after if err.retry_after is not None
                                        else retry.backoff(1, None, self.d.rng) + 1.0)
                self.limit.on_throttle()
                self.gate.on_throttle()
            self.breaker.record(False)

    # ------------------------------------------------------------ journal

    def closing(self) -> bool:
        return self._closing

    async def _flush_loop(self) -> None:
        # Every flush_interval, and at once when a request finished: a finished
        # result should be on disk before a kill can make a re-run pay for it.
        loop = asyncio.get_running_loop()
        next_segments = loop.time() + self.d.flush_interval
        while not self._closing:
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
                next_segments = loop.time() + self.d.flush_interval
            await self.flush(segments=segments)

    async def flush(self, segments: bool = True) -> None:
        """Commit (with the text streamed so far when ``segments``), then write
        the files of requests that finished; their text went in with them."""
        if segments:
            rows = [s for s in (live.take_segment() for live in list(self.live.values())) if s]
            if rows:
                self.d.store.add_segments(rows)
        finished, self.finished = self.finished, []
        if finished:
            self.d.store.end_attempts(finished)
        self.d.store.commit()
        if finished:
            # Files follow the commit on a writer thread, so commits never wait
            # for them. Creating a file costs ~1 ms here: when short requests
            # finish faster than that, the launcher waits (see _writer_room).
            size = sum(len(d.content) + len(d.reasoning) + ENDED_OVERHEAD for d in finished)
            self._pending_bytes += size
            future = asyncio.get_running_loop().run_in_executor(
                self._writer, _write_all, self.d.run_dir, finished)
            future.add_done_callback(functools.partial(self._written, size=size))
            self._writes.add(future)
        self.d.progress.update(in_flight=self.limit.active)

    def _written(self, future: asyncio.Future[None], *, size: int) -> None:
        self._writes.discard(future)
        self._pending_bytes -= size
        self._room.set()
        if not future.cancelled() and future.exception() is not None:
            # the store has the text; the export at the end writes it again
            log.warning("could not write texts/ files yet: %s", future.exception())

    async def _writer_room(self) -> None:
        """Hold launches while too much finished text waits for its files."""
        while self._pending_bytes > MAX_PENDING_TEXT:
            self._room.clear()
            await self._room.wait()

    async def _drain_writes(self) -> None:
        while self._writes:
            await asyncio.wait(list(self._writes))


def _write_all(run_dir: Path, finished: list[Ended]) -> None:
    files = []
    for done in finished:
        assert done.request_id is not None
        files += text_files(run_dir, done.request_id, done.content, done.reasoning)
    write_many_atomic(files)
