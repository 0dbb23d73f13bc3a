"""``--via batch``: a run's pending requests through the provider's Batch API.

Half the price for work that can wait (Model Studio and OpenAI bill batch
requests at 50%), into the same run store, outputs and report as a streamed
run, with the same guarantees:

- **nothing submitted twice**: each remote step is recorded before it is
  taken (``batchgen.store.batches``) and looked up again after a crash — an
  uploaded file by its name, a created batch by its input file;
- **nothing lost**: a batch's output lines become finished attempts (usage as
  reported, priced at the batch price); its error lines are classified as a
  streamed error would be (a 4xx fails the request; a 5xx, a 429 or a line the
  batch never answered — it expired or was cancelled — goes into the next
  batch, or is streamed with ``--fallback stream``), so every request is
  answered exactly once;
- **answers checked as streamed ones are**: an answer to a schema that does
  not fit is an invalid attempt and goes into the next batch, up to
  ``run.max_invalid`` times; one that fell into a degenerate loop
  (``run.guard``) is found when it arrives — paid for whole, as a batch
  cannot be left early — and ``run.guard.on_repetition`` says what follows;
  with ``run.on_length: continue`` one cut at the output cap goes on streamed,
  from its text (a batch cannot continue it);
- **an outage loses nothing**: a Batch API call that reaches no server
  (connection refused, a name that does not resolve, TLS) starts an outage,
  waited out as a streamed run waits one (``batchgen.pacing.outage``: one try
  at a time, 1 s doubling to 60 s); past ``run.outage_timeout`` the run stops
  with every unfinished request pending (exit 69), and the same command goes on;
- **a batch the provider fails** (its input did not pass validation) is not
  sent again and again: a line its ``errors`` name fails, the others go on, a
  reason of the whole file stops the run (exit 4) (:meth:`BatchRunner._refused`);
- ``--no-wait`` submits and exits 5; the same command later reports progress
  (exit 5 again) or, once the batches ended, collects (exit 0 or 1). Without
  it, the run polls with back-off until everything is collected; Ctrl-C leaves
  the batches running at the provider, to be collected by running again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from batchgen.batch_api import client as batchapi
from batchgen.engine.continuation import refusal
from batchgen.engine.deps import BatchOutcome
from batchgen.engine.guards import loop_found
from batchgen.engine.progress import Progress
from batchgen.errors import BatchApiError, RequestFatalError, RunFatalError, TransientError
from batchgen.jobs.records import RunSettings
from batchgen.outputs.files import text_path, write_atomic
from batchgen.pacing.outage import Outage, OutageTimeout, transport_failure
from batchgen.store.attempts import AttemptEnd
from batchgen.store.batches import BatchRow
from batchgen.store.runstore import RunStore
from batchgen.tokens.usage import from_report
from batchgen.wire import retry

if TYPE_CHECKING:
    from batchgen.engine.budget import BatchBudget

log = logging.getLogger(__name__)

POLL_FIRST = 2.0
POLL_CAP = 60.0
STEP_RETRIES = 8  # consecutive failed Batch API calls before the run gives up (resumable)


class BatchRunner:
    def __init__(self, store: RunStore, client: Any, settings: RunSettings, *, run_id: int,
                 progress: Progress, redact: retry.Redact,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.time,
                 budget: BatchBudget | None = None, base_url: str) -> None:
        self.store = store
        self.base_url = base_url  # where this run's batches go, and are looked up
        self.budget = budget
        self.batches = store.batches()
        self.remote = batchapi.Remote(client)
        self.run_id = run_id
        self.max_attempts = settings.max_attempts
        self.max_invalid = settings.max_invalid
        self.guard = settings.guard
        self.settings = settings
        self.no_wait = settings.no_wait
        self.fallback = settings.fallback
        self.progress = progress
        self.redact = redact
        self.sleep = sleep
        self.poll_first, self.poll_cap = POLL_FIRST, POLL_CAP
        self.outcome = BatchOutcome()
        self.rng = random.Random()
        self._seen: dict[int, dict[str, int]] = {}
        self._released: set[str] = set()
        self._failed: set[str] = set()  # failed for good in this run: not sent again now
        self.outage = Outage(timeout=settings.outage_timeout, clock=clock, sleep=sleep,
                             on_change=lambda state: progress.note(
                                 self.outage.describe() if state is not None
                                 else "the endpoint answers again"))

    async def run(self) -> BatchOutcome:
        """Rounds of steps and polls until every batch is collected (or submitted,
        with ``--no-wait``). A failing Batch API call is retried with back-off; one
        that keeps failing ends the run with a message — every step taken so far
        is recorded, so the same command goes on from there."""
        delay, failures = self.poll_first, 0
        for b in self.batches.drop_stale(self.base_url):  # changed: planned anew below
            log.info("dropped batch %s (not created yet): a request or the endpoint changed",
                     b.run_key)
        # those in open batches and those about to go into new ones
        self.progress.start(sum(b.requests for b in self.batches.open())
                            + self.store.count_todo(), 0)
        while True:
            try:
                state = await self._round()
                failures = 0
                self.outage.answered()
            except Exception as exc:  # the Batch API's answers, classified
                err = retry.classify(exc, redact=self.redact)
                if isinstance(err, RunFatalError):
                    self.outcome.fatal = err
                    return self.outcome
                if transport_failure(err, answered=False):  # the endpoint's, not a step's
                    self.outage.failed(err, answered=False, probe=self.outage.active)
                    try:
                        await self.outage.admit()  # the next try, when its time comes
                    except OutageTimeout as stop:
                        self.outcome.unavailable = (f"stopped: {stop} (run.outage_timeout "
                                                    f"{self.outage.timeout:g} s)")
                        return self.outcome
                    self.outage.release()
                    continue
                failures += 1
                if not isinstance(err, TransientError) or failures > STEP_RETRIES:
                    raise BatchApiError(
                        f"the provider's Batch API failed: {err}. Every step taken is "
                        "recorded in run.db: run the same command again to go on") from None
                log.warning("Batch API call failed (%s); trying again in %.0f s", err,
                            retry.backoff(failures, err.retry_after, self.rng))
                await self.sleep(retry.backoff(failures, err.retry_after, self.rng))
                continue
            if self.outcome.fatal is not None:  # no request can succeed: stop here
                return self.outcome
            if state == "ended":
                break
            if state == "waiting":
                if self.no_wait:
                    self.outcome.submitted = True
                    self.outcome.lines = [f"batch {b.name}: {b.where}, {b.done_text()} "
                                          f"({b.model})" for b in self.batches.open()]
                    break
                await self.sleep(delay)
                delay = min(self.poll_cap, delay * 1.5)
            else:  # something ended: look again soon
                delay = self.poll_first
        return self.outcome

    async def _round(self) -> str:
        """One round: remote steps, new batches, a poll of each running batch.
        Returns ``ended`` (nothing left open), ``collected`` or ``waiting``."""
        for batch in self.batches.open():
            await self._advance(batch)
        self._plan_new()
        for batch in self.batches.open():
            await self._advance(batch)
        submitted = [b for b in self.batches.open() if b.state == "submitted"]
        if not submitted:
            return "ended"
        ended = False
        for batch in submitted:
            ended |= await self._poll(batch)
        return "collected" if ended else "waiting"

    # ------------------------------------------------------------ planning

    def _plan_new(self) -> None:
        """Pending requests (with attempts left) into new batches, per model; with a
        budget, in job order while their worst cases fit what it leaves."""
        by_model: dict[str, list[tuple[str, str, bytes]]] = {}
        room: float | None = None  # asked of the budget at the first request it decides
        self.outcome.over_budget, self.outcome.over_budget_why = 0, None
        for p in self.store.pending():
            if p.id in self._released or p.id in self._failed:
                continue  # streamed after the batches (--fallback stream); failed for good now
            invalid = self.store.attempts_of_class(p.id, p.fingerprint, "schema") \
                if p.schema is not None else 0  # counted apart (run.max_invalid)
            if p.attempts - invalid >= self.max_attempts:
                self.store.mark(p.id, "failed", reason="no attempts left after batch errors")
                self._failed.add(p.id)
                self.outcome.failed += 1
                self.progress.update(failed=1)
                continue
            if self.budget is not None:
                room = self.budget.room() if room is None else room
                worst = self.budget.worst(p.id, p.model, p.body)
                if self.outcome.over_budget or worst > room:
                    if not self.outcome.over_budget:
                        self.outcome.over_budget_why = self.budget.over_budget_note(p, worst, room)
                    self.outcome.over_budget += 1  # this one and the rest wait for room
                    continue
                room -= worst
            by_model.setdefault(p.model, []).append(
                (p.id, p.fingerprint, batchapi.line(p.id, p.body)))
        self.store.commit()
        for model, lines in by_model.items():
            for chunk in batchapi.chunks(lines):
                batch = self.batches.plan(model, [(rid, fp) for rid, fp, _ in chunk],
                                          self.base_url)
                log.info("planned batch %s: %d requests of %s", batch.run_key, len(chunk), model)

    # ------------------------------------------------------------ remote steps

    async def _advance(self, b: BatchRow) -> None:
        """Take the next remote steps of a batch, each recorded before it is taken."""
        if b.state in ("planned", "uploading"):
            file_id = await self.remote.find_file(b.filename) if b.state == "uploading" else None
            if file_id is None:
                data = self._file(b)
                self.batches.step(b.id, "uploading")
                file_id = await self.remote.upload(b.filename, data)
            self.batches.step(b.id, "uploaded", file_id=file_id)
            b = self.batches.get(b.id)
        if b.state in ("uploaded", "creating"):
            assert b.file_id is not None  # noqa: S101 - an invariant, for the type checker
            remote = await self.remote.find_batch(b.file_id) if b.state == "creating" else None
            if remote is None:
                self.batches.step(b.id, "creating")
                remote = await self.remote.create(b.file_id, b.run_key)
            self.batches.step(b.id, "submitted", batch_id=batchapi.batch_id(remote),
                              remote_status=batchapi.status(remote),
                              counts=batchapi.counts(remote))
            self.outcome.lines.append(f"submitted batch {batchapi.batch_id(remote)}: "
                                      f"{b.requests} request{'s' if b.requests != 1 else ''} "
                                      f"of {b.model}")

    def _file(self, b: BatchRow) -> bytes:
        out = []
        for rid, _ in self.batches.items(b.id):
            out.append(batchapi.line(rid, self.store.request_body(rid)))
        return b"".join(out)

    async def _poll(self, b: BatchRow) -> bool:
        """Look at a running batch; collect it when it ended. True when it ended."""
        assert b.batch_id is not None  # noqa: S101 - an invariant, for the type checker
        remote = await self.remote.retrieve(b.batch_id)
        status, counts = batchapi.status(remote), batchapi.counts(remote)
        if counts and counts != self._seen.get(b.id, b.counts):  # the provider's own count
            self.progress.note(f"batch {b.batch_id} {status}: {counts.get('completed', 0)}/"
                               f"{counts.get('total') or b.requests} answered"
                               + (f", {counts['failed']} failed" if counts.get("failed") else ""))
        self._seen[b.id] = counts
        if status not in batchapi.ENDED:
            self.batches.step(b.id, "submitted", remote_status=status, counts=counts)
            return False
        await self._collect(b, remote, status, counts)
        return True

    # ------------------------------------------------------------ collecting

    async def _collect(self, b: BatchRow, remote: Any, status: str,
                       counts: dict[str, int]) -> None:
        """Output and error lines into the store, in one transaction with the batch's
        end: a crash before the commit collects it again, never twice."""
        output_id, error_id = batchapi.files_of(remote)
        answered: dict[str, dict[str, Any]] = {}
        for file_id in (output_id, error_id):
            if file_id:
                for raw in (await self.remote.content(file_id)).splitlines():
                    if raw.strip():
                        entry = json.loads(raw)
                        answered[str(entry.get("custom_id"))] = entry
        items = dict(self.batches.items(b.id))
        stale = self.batches.stale(b.id)
        if status == "failed":
            self._refused(b, remote, items, stale, counts)
            return
        released = []
        done, failed = self.outcome.done, self.outcome.failed
        for rid, fingerprint in items.items():
            entry = answered.get(rid)
            if rid in stale:  # what the request is now goes on its own
                if entry is not None:
                    self._superseded(rid, fingerprint, b.model, entry)
                continue
            if entry is None:
                released.append(rid)  # never answered (expired, cancelled, failed batch)
                continue
            if not self._record(rid, fingerprint, b.model, entry):
                released.append(rid)
        self.batches.release(released)
        # what was recorded: an answer that goes into another batch is not done yet
        self.progress.update(done=self.outcome.done - done, failed=self.outcome.failed - failed)
        if self.fallback == "stream":
            self.outcome.released += released
            self._released.update(released)
        self.batches.step(b.id, "collected", remote_status=status, counts=counts,
                          output_file_id=output_id, error_file_id=error_id,
                          note=f"{len(released)} to send again" if released else None)
        log.info("collected batch %s (%s): %d answered, %d to send again", b.batch_id, status,
                 len(items) - len(released), len(released))

    def _record(self, rid: str, fingerprint: str, model: str, entry: dict[str, Any]) -> bool:
        """One answered line as an attempt. False when the request goes again."""
        response = entry.get("response") or {}
        status = response.get("status_code")
        body = response.get("body") or {}
        sent = self.store.request_body(rid)
        now = time.time()
        attempt = self._attempt(rid, fingerprint, model, now)
        if status == 200 and isinstance(body, dict) and body.get("choices"):
            message = (body["choices"][0] or {}).get("message") or {}
            content = message.get("content") or ""
            reasoning = message.get("reasoning_content") or message.get("reasoning") or ""
            calls = message.get("tool_calls")
            usage = from_report(body.get("usage"), sent, content if isinstance(content, str)
                                else "", reasoning if isinstance(reasoning, str) else "")
            keep = loop_found(content, self.guard) if self.guard.repetition \
                and isinstance(content, str) else None
            if keep is not None:  # a loop, found once the whole answer is here
                if self.guard.on_repetition != "keep":
                    return self._looped(rid, attempt, content, keep, usage, now,
                                        provider_id=response.get("request_id"))
                body["choices"][0]["finish_reason"] = "repetition"
                content = content[:keep]
            elif body["choices"][0].get("finish_reason") == "length" and not calls \
                    and self._goes_on(rid, fingerprint, sent, content, reasoning, usage):
                self.store.add_segments([(attempt, 0, content, reasoning)])
                self.store.end_attempt(attempt, AttemptEnd(
                    status="aborted", error_class="length", finish_reason="length",
                    error_message="cut at the output cap: continued, streamed"),
                    usage=usage, now=now)
                self.outcome.released.append(rid)  # streamed on from its text
                self._released.add(rid)
                return False
            problem = self._invalid(rid, content)
            if problem is not None:  # asked again, as a streamed answer would be
                return self._asked_again(rid, fingerprint, attempt, problem, usage, now,
                                         finish=body["choices"][0].get("finish_reason"),
                                         provider_id=response.get("request_id"))
            self.store.write_attempts([], [_ended(
                attempt, rid, now, usage, content, reasoning,
                finish=body["choices"][0].get("finish_reason"), calls=calls,
                provider_id=response.get("request_id"))])
            self.outcome.done += 1
            return True
        err = retry.from_payload(status if isinstance(status, int) else None,
                                 body if body else {"error": entry.get("error") or {}},
                                 request_id=response.get("request_id"), redact=self.redact)
        self.store.end_attempt(attempt, AttemptEnd(
            status="error", error_class=err.error_class, error_code=err.code,
            http_status=err.http_status, error_message=err.message,
            provider_request_id=err.provider_request_id), usage=None, now=now)
        if isinstance(err, RequestFatalError):
            self.store.mark(rid, "failed")
            self._failed.add(rid)
            self.outcome.failed += 1
            return True
        if isinstance(err, RunFatalError) and self.outcome.fatal is None:
            self.outcome.fatal = err
        return False

    def _refused(self, b: BatchRow, remote: Any, items: dict[str, str], stale: set[str],
                 counts: dict[str, int]) -> None:
        """A batch the provider failed (its input did not pass validation; no line
        answered). A line it names fails with its reason; a reason of the whole
        file, which a new batch would meet again, stops the run (exit 4), requests
        pending, unless ``--fallback stream`` streams them. An attempt each."""
        reasons = batchapi.errors_of(remote)
        by_line = {line: (code, message) for line, code, message in reasons if line}
        whole = next(((code, message) for line, code, message in reasons if not line),
                     None if by_line else (None, "it gave no reason"))
        now, released, failed = time.time(), [], self.outcome.failed
        for n, (rid, fingerprint) in enumerate(items.items(), start=1):  # the file's order
            if rid not in stale:
                code, message = by_line.get(n) or whole or (None, "another line of its file")
                self.store.end_attempt(self._attempt(rid, fingerprint, b.model, now), AttemptEnd(
                    status="error", error_class="batch_failed", error_code=code,
                    error_message=f"the provider failed batch {b.batch_id}: {message}"),
                    usage=None, now=now)
                if n in by_line:
                    self.store.mark(rid, "failed")
                    self._failed.add(rid)
                    self.outcome.failed += 1
                else:
                    released.append(rid)
        self.batches.release(released)
        self.progress.update(failed=self.outcome.failed - failed)
        self.batches.step(b.id, "collected", remote_status="failed", counts=counts,
                          note="; ".join(m for _, _, m in reasons[:3]) or "no reason given")
        if self.fallback == "stream":  # what the batch did not answer is streamed
            self.outcome.released += released
            self._released.update(released)
        elif whole is not None and self.outcome.fatal is None:
            self.outcome.fatal = RunFatalError(
                f"the provider failed batch {b.batch_id}: {whole[1].rstrip('. ')}; its "
                f"{len(released)} request{'s are' if len(released) != 1 else ' is'} pending: fix "
                "what it names, then run again",
                error_class="batch_failed", code=whole[0])

    def _goes_on(self, rid: str, fingerprint: str, sent: dict[str, Any], content: Any,
                 reasoning: Any, usage: Any) -> bool:
        """Whether an answer cut at the output cap goes on (``run.on_length:
        continue``), as a streamed segment: a batch cannot continue it, a stream
        can, from its text — within the limits a streamed answer has."""
        s = self.settings
        return (s.on_length == "continue" and isinstance(content, str) and bool(content)
                and not reasoning and refusal(sent) is None
                and self.store.length_segments(rid, fingerprint) < s.max_continuations
                and (s.max_total_tokens is None
                     or usage is None or usage.completion_tokens < s.max_total_tokens))

    def _looped(self, rid: str, attempt: int, content: str, keep: int, usage: Any,
                now: float, *, provider_id: Any) -> bool:
        """An answer that fell into a degenerate loop (``run.guard``): paid for
        whole, since a batch cannot be left early; then what
        ``run.guard.on_repetition`` says, as for a stream: ``retry`` sends it
        again (counted against ``run.max_attempts``); ``fail`` fails it with
        its text to the loop's first copy in ``texts/<id>.partial.md``
        (``keep``, done with that text, is the caller's). True when it failed."""
        message = (f"a degenerate loop: the same text over and over after {keep:,} "
                   f"characters, in an answer of {len(content):,}")
        fail = self.guard.on_repetition == "fail"
        if fail:
            with contextlib.suppress(OSError):
                write_atomic(text_path(self.store.path.parent, rid).with_suffix(".partial.md"),
                             content[:keep].encode("utf-8"))
            message += f" (kept: texts/{rid}.partial.md)"
        self.store.end_attempt(attempt, AttemptEnd(
            status="error", error_class="repetition", error_message=message,
            provider_request_id=provider_id if isinstance(provider_id, str) else None),
            usage=usage, now=now)
        log.warning("%s: %s (run.guard.on_repetition: %s)", rid, message,
                    self.guard.on_repetition)
        if fail:
            self.store.mark(rid, "failed")
            self._failed.add(rid)
            self.outcome.failed += 1
        return fail

    def _superseded(self, rid: str, fingerprint: str, model: str,
                    entry: dict[str, Any]) -> None:
        """An answer to a request that changed while its batch ran (its prompt
        edited, say): paid for, so kept as an attempt with its usage, and not
        the request's answer."""
        body = (entry.get("response") or {}).get("body")
        now = time.time()
        attempt = self._attempt(rid, fingerprint, model, now)
        usage = from_report(body.get("usage"), self.store.request_body(rid), "", "") \
            if isinstance(body, dict) and body.get("usage") else None
        self.store.end_attempt(attempt, AttemptEnd(
            status="error", error_class="superseded",
            error_message="the request changed while its batch ran; this answer is not kept"),
            usage=usage, now=now)

    def _invalid(self, rid: str, content: Any) -> str | None:
        """What is wrong with an answer that must fit a schema, or None."""
        schema = self.store.request_schema(rid)
        if schema is None:
            return None
        from batchgen.engine.structured import check_for

        return check_for(schema).problem(content if isinstance(content, str) else "")

    def _asked_again(self, rid: str, fingerprint: str, attempt: int, problem: str,
                     usage: Any, now: float, *, finish: Any, provider_id: Any) -> bool:
        """An answer that does not fit its schema: an attempt of class ``schema``
        with its usage (paid for), then the request goes again, up to
        ``run.max_invalid`` times, after which it fails. False when it goes again."""
        self.store.end_attempt(attempt, AttemptEnd(
            status="error", error_class="schema",
            finish_reason=finish if isinstance(finish, str) else None,
            error_message=f"the answer {problem}",
            provider_request_id=provider_id if isinstance(provider_id, str) else None),
            usage=usage, now=now)
        if self.store.attempts_of_class(rid, fingerprint, "schema") > self.max_invalid:
            self.store.mark(rid, "failed")
            self._failed.add(rid)
            self.outcome.failed += 1
            return True
        return False

    def _attempt(self, rid: str, fingerprint: str, model: str, now: float) -> int:
        return self.store.add_batch_attempt(rid, fingerprint, model, run_id=self.run_id,
                                            now=now)


def _ended(attempt: int, rid: str, now: float, usage: Any, content: Any, reasoning: Any, *,
           finish: Any, calls: Any, provider_id: Any) -> Any:
    from batchgen.store.attempts import Ended

    return Ended(attempt, AttemptEnd(
        status="done", finish_reason=finish if isinstance(finish, str) else None,
        provider_request_id=provider_id if isinstance(provider_id, str) else None,
        tool_calls=json.dumps(calls, ensure_ascii=False) if calls else None),
        usage, now, request_id=rid, content=content if isinstance(content, str) else "",
        reasoning=reasoning if isinstance(reasoning, str) else "")
