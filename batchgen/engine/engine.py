"""The asyncio core of a run: launch requests, stream attempts, hand text to the journal.

One task per active request; at most ``2 × concurrency`` exist at a time, so
memory does not grow with the job. Each task runs its attempts under the
tenacity policy; every attempt passes the :class:`Gate` (pause, RPM/TPM) and
holds an :class:`AdaptiveLimit` slot while it streams. Text goes to the
:class:`~batchgen.engine.journal.Journal`, which commits it to the store.

Every request ends done, failed (with a reason) or pending: whatever goes
wrong inside a request's task — a header that does not parse, a bug — is
caught, logged and recorded as that request's failure; it never ends the task
silently. A storage failure stops the whole run (exit 74).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from batchgen.engine import structured
from batchgen.engine.continuation import (
    EchoFilter,
    continue_body,
    refusal,
    resumable,
    segment_tokens,
)
from batchgen.engine.deps import EngineDeps, Outcome
from batchgen.engine.endings import AttemptEndings
from batchgen.engine.guards import RepetitionStop, guarded
from batchgen.engine.journal import Journal, Live
from batchgen.engine.memory import TRIM_EVERY, trim_heap
from batchgen.engine.summary import FailedLog
from batchgen.errors import (
    AttemptError,
    ModerationError,
    RequestFatalError,
    RunFatalError,
    StorageError,
    TransientError,
)
from batchgen.jobs import media
from batchgen.jobs.records import RunSettings
from batchgen.outputs.audio import SpeechFile
from batchgen.outputs.files import pretty_json
from batchgen.pacing.gate import AdaptiveLimit, Breaker, Gate, StartGate, ratelimit_pause
from batchgen.pacing.outage import Outage, OutageState, OutageTimeout
from batchgen.secrets import printable
from batchgen.store.attempts import AttemptEnd, Ended
from batchgen.store.records import Resume, Usage
from batchgen.store.runstore import Pending
from batchgen.tokens import tokenizers
from batchgen.tokens.static import output_bound
from batchgen.tokens.usage import estimate, from_report
from batchgen.wire import retry
from batchgen.wire.stream import StreamResult, stream_attempt
from batchgen.wire.watchdog import Watchdog

log = logging.getLogger(__name__)

class _Stopped(Exception):
    """The run stopped launching; this request stays pending."""


class Engine(AttemptEndings):
    def __init__(self, deps: EngineDeps, settings: RunSettings, *, continuation: str = "none",
                 gate: StartGate | None = None, raw_audio: bool = True) -> None:
        self.d = deps
        self.raw_audio = raw_audio  # input_audio.data as bare base64 (else a data URL)
        self.media_base = Path(settings.media_base)  # where file:// paths are relative to
        self.media_roots = media.roots_from(settings.media_root, self.media_base)
        self._media_sent = 0
        concurrency = settings.concurrency
        idle_timeout, max_duration = settings.idle_timeout, settings.max_duration
        # how an interrupted answer goes on ("none": it starts over)
        self.form = continuation if settings.resume == "auto" else "none"
        self.max_attempts = settings.max_attempts
        self.limit = AdaptiveLimit(concurrency, deps.clock)
        self.gate: StartGate = gate or Gate(rpm=settings.rpm, tpm=settings.tpm,
                                            clock=deps.clock, sleep=deps.sleep)
        self.breaker = Breaker(self.gate)
        self.guard = settings.guard
        self.settings = settings
        self._last_outage: OutageState | None = None
        # outages an answer ended before any probe: the longest of each reason, how
        # many, and where in the notes they are said (one line for them all)
        self._blips: dict[str, float] = {}
        self._blip_count = 0
        self._blip_note: int | None = None
        self.failed_log = FailedLog(log, deps.run_dir)
        self.outage = Outage(timeout=settings.outage_timeout, clock=deps.clock,
                             sleep=deps.sleep, on_change=self._outage_changed)
        self.max_active = max(2 * concurrency, concurrency + 4)
        self.outcome = Outcome()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.only: set[str] | None = None  # run only these requests (None: every pending one)
        self.journal = Journal(deps.store, deps.run_dir, clock=deps.clock,
                               flush_interval=deps.flush_interval,
                               on_failure=self._storage_failed)
        self.watchdog = Watchdog(idle_timeout=idle_timeout, max_duration=max_duration)

    # ------------------------------------------------------------ control

    def stop(self, reason: str) -> None:
        """Stop launching attempts; in-flight ones finish unless cancelled."""
        self.stopping = True
        if self.outcome.stopped_by is None:
            self.outcome.stopped_by = reason

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def _storage_failed(self, error: StorageError) -> None:
        """Nothing more can be saved: buy nothing more."""
        self.outcome.storage = error
        self.stop("storage")
        self.cancel_all()

    async def run(self) -> Outcome:
        flusher = asyncio.create_task(self.journal.run())
        ticker = asyncio.create_task(self.watchdog.run())
        try:
            await self._launch_all()
        finally:
            ticker.cancel()
            self.journal.stop()
            await flusher
            await self.journal.close()
        return self.outcome

    async def _launch_all(self) -> None:
        room = asyncio.Semaphore(self.max_active)
        try:
            for pending in self.d.store.pending():
                if self.only is not None and pending.id not in self.only:
                    continue
                await room.acquire()
                await self.journal.room()
                if self.stopping:
                    room.release()
                    break
                if self.d.budget is not None:
                    reason = await self.d.budget.admit_settling(
                        pending, lambda: self.tasks, lambda: self.stopping)
                    if reason is not None or self.stopping:
                        # stop launching; what was admitted runs to its end
                        room.release()
                        if reason is not None and self.outcome.stopped_by is None:
                            self.outcome.stopped_by = reason
                            if self.d.budget.refused:
                                self.outcome.notes.append(self.d.budget.refused)
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
        try:
            await self._attempts(p)
        except (_Stopped, StorageError):
            return  # pending: a re-run picks it up
        except OutageTimeout as exc:
            if self.outcome.stopped_by is None:
                self.outcome.notes.append(f"stopped: {exc} (run.outage_timeout "
                                          f"{self.outage.timeout:g} s)")
                log.warning("stopping the run: %s", exc)
            self.stop("unavailable")  # this request, and every other, stays pending
        except RunFatalError as exc:
            if self.outcome.fatal is None:
                self.outcome.fatal = exc
                log.warning("stopping the run: %s", exc)
            self.stop("fatal")
        except (TransientError, RequestFatalError) as exc:
            self.failed_log.say(p.id, exc)
            self._fail(p, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, or something no one foresaw: this request only
            log.exception("%s: unexpected error", p.id)
            self._fail(p, printable(self.d.redact(f"{type(exc).__name__}: {exc}")))
        finally:
            if self.d.budget is not None:
                self.d.budget.release(p)

    def _fail(self, p: Pending, reason: str | None) -> None:
        try:
            self.journal.mark_failed(p.id, reason)
        except StorageError:
            return
        self.outcome.failed += 1
        self.d.progress.update(failed=1, in_flight=self.limit.active)

    async def _attempts(self, p: Pending) -> None:
        """The request's attempts under the retry policy (``wire.policy``).

        The first attempt goes without the policy's bookkeeping: most requests
        need only one, and tenacity's loop costs tens of µs of CPU per request
        (P7). If it fails transiently, its error is replayed into the policy as
        the policy's own first attempt, so the waits, the stop and the 429
        allowance are exactly those of a loop that had run it. The policy's
        module (and tenacity) is imported then, not at start-up.
        """
        tries = [p.attempts, self.d.estimator.prompt(p.body)[0] + output_bound(p.body)]
        try:
            await self._try(p, tries)
            return
        except TransientError as exc:
            failed: TransientError | None = exc
        from batchgen.wire import policy

        async for attempt in policy.policy(self.max_attempts, sleep=self._sleep_unless_stopped,
                                           rng=self.d.rng):
            with attempt:
                if failed is not None:
                    replay, failed = failed, None
                    raise replay
                await self._try(p, tries)

    async def _try(self, p: Pending, tries: list[int]) -> None:
        """One attempt, through the outage's door, the gate and a slot; ``tries``
        holds the request's attempt number so far and the tokens it reserves."""
        if self.stopping:
            raise _Stopped
        probe = await self.outage.admit()
        try:
            if self.stopping:
                raise _Stopped
            number, reserve = tries
            await self.gate.wait(reserve)
            await self.limit.acquire()
            try:
                if self.stopping:
                    raise _Stopped
                if number > p.attempts and not self._retry_fits(p):
                    raise _Stopped
                tries[0] = number = number + 1
                # cut at the cap and continued (the next segment), or an answer that did
                # not fit the schema asked again (run.max_invalid): one more attempt,
                # which spends again, so only while the budget fits (as for a retry)
                while await self._attempt(p, number, reserve, probe):
                    if not self._retry_fits(p):
                        raise _Stopped
                    tries[0] = number = number + 1
            finally:
                self.limit.release()
        finally:
            if probe:
                self.outage.release()

    def _outage_changed(self, state: OutageState | None) -> None:
        """Say it where people look: the progress line and ``batchgen status``,
        and once it is over, the run's summary."""
        if state is None and self._last_outage is not None:
            seen = self._last_outage
            lasted = self.d.clock() - seen.since
            if seen.probes:
                self.outcome.notes.append(
                    f"the endpoint was unreachable for {lasted:.0f} s ({seen.reason}); waited "
                    f"out with {seen.probes} probe{'s' if seen.probes != 1 else ''}, no "
                    "request failed for it")
            else:  # an answer ended it before its first probe: one line for them all
                self._blips[seen.reason] = max(lasted, self._blips.get(seen.reason, 0.0))
                self._blip_count += 1
                if self._blip_note is None:
                    self._blip_note = len(self.outcome.notes)
                    self.outcome.notes.append("")
                n = self._blip_count
                self.outcome.notes[self._blip_note] = (
                    f"new starts were held {n} time{'s' if n != 1 else ''}, "
                    f"{max(self._blips.values()):.1f} s at most, as the endpoint looked down "
                    f"({'; '.join(self._blips)}); an answer came back each time before any "
                    "probe, and no request failed for it")
        self._last_outage = state
        self.d.progress.note(self.outage.describe() if state is not None
                             else "the endpoint answers again")
        with contextlib.suppress(StorageError):
            self.journal.set_outage(None if state is None else {
                "since": state.since, "reason": state.reason, "probes": state.probes,
                "next": state.next_probe})

    def _retry_fits(self, p: Pending) -> bool:
        """A retry, a continuation's next segment or a re-asked answer spends
        again: it goes only while the budget still fits."""
        why = self.d.budget.again(p) if self.d.budget is not None else None
        if why is not None and self.outcome.stopped_by is None:
            self.outcome.stopped_by = "budget"
            self.outcome.notes.append(why)
        return why is None

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        if not self.stopping:
            await self.d.sleep(seconds)

    async def _resume(self, p: Pending, number: int) -> Resume | None:
        """The answer so far, when this attempt can go on from it, and the
        tokens it took (the rest of ``max_tokens``, or of ``run.max_total_tokens``,
        is what the continuation may still produce): the endpoint's figures
        where it reported them — a tokenizer's count of the whole text would
        replace them with one that differs at the seams — and the model's
        tokenizer, where there is one, for the attempts whose usage was estimated."""
        if self.form == "none" or number == 1 or refusal(p.body):
            return None
        estimator = self.d.estimator
        resume = resumable(self.d.store, p.id, p.fingerprint,
                           lambda text: estimator.text(p.model, text)[0])
        if resume is None or not resume.estimated_text:
            return resume
        counter = estimator.counter_for(p.model)
        if counter is None and tokenizers.QWEN_MODELS.match(p.model):
            counter = await asyncio.to_thread(tokenizers.qwen_counter)  # loaded once, off-loop
        if counter is not None:
            with contextlib.suppress(Exception):  # the stored estimate stands
                resume = replace(resume, tokens=resume.reported + await asyncio.to_thread(
                    counter.count, resume.estimated_text))
        return resume

    async def _attempt(self, p: Pending, number: int, reserve: int, probe: bool = False
                       ) -> bool:
        """One attempt; True when another is to follow at once: its answer was
        cut at the output cap and goes on as the next segment (``run.on_length:
        continue``), or did not fit the request's schema and is asked again
        (``run.max_invalid``)."""
        resume = await self._resume(p, number)
        segments = self.settings.on_length == "continue"
        limits = segment_tokens(p.body, resume.tokens if resume else 0,
                                self.settings.max_total_tokens) if segments else None
        if resume is not None:
            body = continue_body(p.body, resume.text, self.form, resume.tokens, limits)
        else:
            body = {**p.body, **limits} if limits else p.body
        live = self.journal.open(p, run_id=self.d.run_id, n=number, resume=resume)
        watched = guarded(live.on_text, self.guard) if self.guard.repetition else live.on_text
        if p.schema is not None and resume is None:  # a continuation starts mid-JSON
            watched = structured.watched(watched)
        on_text = watched if resume is None or self.form != "prefill" \
            else EchoFilter(resume.text, watched)
        result = StreamResult()
        speech = SpeechFile(self.d.run_dir, p.id) \
            if "audio" in (p.body.get("modalities") or []) else None
        if speech is not None:
            result.on_audio = speech.add
        watch = self.watchdog.watch()
        answered = False

        def opened() -> None:
            nonlocal answered
            answered = True
            self.gate.on_accepted()

        media_sent = False
        try:
            wire_body = self._with_media(body)
            media_sent = wire_body is not body
            await stream_attempt(self.d.client, wire_body, on_text, result,
                                 redact=self.d.redact, on_open=opened, watch=watch)
            del wire_body
            if result.finish_reason == "content_filter":
                raise ModerationError("the provider's content filter stopped the output",
                                      error_class="moderation", code="content_filter",
                                      provider_request_id=result.request_id)
        except RepetitionStop as stop:
            kept = self._repetition(p, body, live, result, resume, stop.keep, number)
            self._finish(p, body, kept, result, reserve, None, kept=True)
            return False
        except structured.NotJson as stop:
            return self._invalid(p, live, result, f"was stopped early: {stop}",
                                 self._billed(body, live, result))
        except asyncio.CancelledError:
            self._end(live, p, AttemptEnd(status="aborted", error_class="interrupted",
                                          error_message="stopped by the user",
                                          provider_request_id=result.request_id),
                      self._billed(body, live, result))
            raise
        except Exception as exc:
            err = retry.classify(exc, redact=self.d.redact)
            if resume is not None and isinstance(err, RequestFatalError) \
                    and not isinstance(err, ModerationError) and err.http_status in (400, None) \
                    and err.error_class in ("http_400", "error_event"):
                # the server does not continue this request: one fresh attempt instead
                err = TransientError(f"the continuation was refused: {err.message}",
                                     error_class="continuation_refused", code=err.code,
                                     http_status=err.http_status, retry_after=0.0,
                                     provider_request_id=err.provider_request_id)
            log.info("%s attempt %d failed: %s", p.id, number, err)
            self._end(live, p, AttemptEnd(
                status="error", error_class=err.error_class, error_code=err.code,
                http_status=err.http_status, error_message=err.message,
                provider_request_id=err.provider_request_id or result.request_id,
            ), self._billed(body, live, result))
            if self.outage.failed(err, answered=answered or result.chunks > 0, probe=probe,
                                  request=p.id):
                err.during_outage = True  # the endpoint's failure: held, not counted
            else:
                self._learn(err)
            raise err from None
        finally:
            self.watchdog.release(watch)
            if speech is not None:
                speech.close()
            if media_sent:
                self._media_sent += 1
                if self._media_sent % TRIM_EVERY == 0:
                    trim_heap()
        if self._cut_at_the_cap(p, body, live, result, resume):
            return True
        value_json = None
        if p.schema is not None:
            check = structured.check_for(p.schema)
            whole = (resume.text if resume is not None else "") + "".join(live.content)
            problem = check.problem(whole)
            if problem is not None:
                return self._invalid(p, live, result, problem, self._billed(body, live, result))
            value_json = pretty_json(check.parse(whole))
        if speech is not None:  # audio/<id>.wav in place before the answer is recorded done
            await asyncio.to_thread(speech.finish)
        self._finish(p, body, live, result, reserve, resume, value_json=value_json)
        return False

    def _with_media(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` as sent: its ``file://`` parts read now and put in as data
        (:func:`batchgen.jobs.media.expand`); a file that no longer passes its
        checks fails the request."""
        try:
            return media.expand(body, self.media_base, self.media_roots,
                                self.settings.max_media_bytes, raw_audio=self.raw_audio)
        except media.MediaProblem as exc:
            raise RequestFatalError(f"a file changed since the job was checked: {exc}",
                                    error_class="media") from None

    def _finish(self, p: Pending, body: dict[str, Any], live: Live, result: StreamResult,
                reserve: int, resume: Resume | None, kept: bool = False,
                value_json: str | None = None) -> None:
        """The answer is whole and paid for: nothing after this point may lose it.
        ``kept``: the answer a loop's first copy left (its cost is on the
        looping attempt): recorded without usage of its own."""
        content, reasoning = "".join(live.content), "".join(live.reasoning)
        estimator = self.d.estimator
        usage: Usage | None = None
        if not kept:
            try:
                usage = from_report(result.usage, body, content, reasoning, estimator)
            except Exception:  # usage is accounting: estimate it rather than lose the answer
                log.exception("%s: unreadable usage %r; estimated", p.id, result.usage)
                usage = estimate(body, content, reasoning, estimator)
            if resume is None:  # what the server reports teaches the estimates
                estimator.calibration.learn(p.model, body, usage, content, reasoning)
        calls = json.dumps(result.tool_call_list(), ensure_ascii=False) \
            if result.tool_calls else None
        whole = content if resume is None else resume.text + content
        self.journal.finish(Ended(
            live.attempt_id, AttemptEnd(status="done", finish_reason=result.finish_reason,
                                        provider_request_id=result.request_id, tool_calls=calls,
                                        first_token=live.first_token),
            usage, self.d.clock(), request_id=p.id, content=whole, reasoning=reasoning,
            value_json=value_json))
        if self.d.budget is not None and usage is not None:
            self.d.budget.charge(p, usage)
        self.outcome.done += 1
        self.limit.on_success()
        self.breaker.record(True)
        self.outage.answered()
        self.gate.settle(reserve, usage.total_tokens if usage is not None else 0)
        self._note_headers(result)
        self.d.progress.update(done=1, tokens=usage.completion_tokens if usage else 0,
                               in_flight=self.limit.active - 1)

    def _note_headers(self, result: StreamResult) -> None:
        if not result.ratelimit:
            return
        pause = ratelimit_pause(result.ratelimit)
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
