"""One run, start to end: check, lock, plan from the store, run, export (:class:`Runner`).

Nothing is written before the job file validated and the API key was found.
The plan is rebuilt from the run store every time (resume is derived from
disk, never from memory): finished requests with an unchanged fingerprint are
skipped without a call, attempts a killed process left streaming are recorded
as aborted, and everything else runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchgen import __version__
from batchgen.cost.pricing import PriceBook, overrides_to_json
from batchgen.engine.budget import BudgetGuard, check_budget, spent
from batchgen.engine.deps import EngineDeps, Outcome
from batchgen.engine.elsewhere import check_batches_here, leave_batches_elsewhere
from batchgen.engine.engine import Engine
from batchgen.engine.interrupt import Interrupt
from batchgen.engine.journal import storage_error
from batchgen.engine.memory import quiet_gc
from batchgen.engine.openfiles import fit_concurrency
from batchgen.engine.progress import NullProgress, Progress
from batchgen.engine.rundir import check_answers_seen, file_in_the_way
from batchgen.engine.summary import RunSummary
from batchgen.errors import StorageError, UsageError
from batchgen.jobs import media, validated
from batchgen.jobs.endpoints import withheld_note
from batchgen.jobs.headers import resolve as resolve_headers
from batchgen.jobs.load import Job
from batchgen.outputs import table
from batchgen.outputs.files import (
    clean_temp,
    export_all,
    files_stamp,
    prepare_reports,
    to_step_summary,
    write_reports,
)
from batchgen.secrets import Redactor, api_key_from_env, quiet_transport_logs
from batchgen.store.lock import RunLock
from batchgen.store.runstore import RunStore
from batchgen.tokens.estimator import Estimator
from batchgen.tokens.ledger import load_calibration, refine
from batchgen.tokens.tokenizers import counter_for
from batchgen.tokens.usage import estimate

if TYPE_CHECKING:
    from batchgen.pacing.redis_gate import SharedGate

log = logging.getLogger(__name__)

PREPARE_REPORTS_AFTER = 0.2  # s after the engine starts: its first requests go out first

# (base URL, API key, job, its headers as sent, what scrubs both from text)
ClientFactory = Callable[[str, str, Job, Mapping[str, str], Callable[[str], str]], Any]


@dataclass
class RunOptions:
    """Side effects of a run, with real defaults (tests pass fakes)."""

    progress: Progress = field(default_factory=NullProgress)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    client_factory: ClientFactory | None = None
    rng: random.Random = field(default_factory=random.Random)
    flush_interval: float = 0.1  # seconds between commits of streamed text
    handle_signals: bool = True
    force: bool = False  # run even where the store is gone but finished texts are not


def default_client(base_url: str, api_key: str, job: Job, headers: Mapping[str, str],
                   redact: Callable[[str], str]) -> Any:
    """The streaming transport (no read timeout: idleness is the engine's
    Watchdog's to judge, which knows when the process was stopped); ``headers``:
    the job's own, as sent."""
    from batchgen.wire.stream import make_client

    return make_client(base_url, api_key, connect_timeout=job.run.connect_timeout,
                       max_connections=job.run.concurrency, redact=redact, headers=headers)


def run_job(job: Job, options: RunOptions | None = None) -> RunSummary:
    """Run ``job`` to its end (or until stopped). Blocking; see :class:`RunSummary`."""
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(run_job_async(job, options or RunOptions()))
    finally:
        job.discard_spool()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed: shorter loop iterations keep 512 streams timely."""
    if os.environ.get("BATCHGEN_LOOP", "uvloop") != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def check_job(job: Job, book: PriceBook) -> Job:
    """What a run refuses in the job itself before anything is written or sent
    (a dry run refuses it too): a budget without a price for every model in its
    currency; ``--via batch`` for what the Batch API cannot take. The job
    returned has its budget's currency (``--max-cost`` alone takes the models')."""
    if job.budget is not None:
        job = replace(job, budget=check_budget(job, book))
    if job.run.via != "batch":
        return job
    from batchgen.batch_api.client import check_models

    if job.endpoint.local:
        raise UsageError("--via batch needs a provider's Batch API; the local endpoint has "
                         "none: run it streamed")
    check_models(job.info.models)  # stream-only models
    return job


async def run_job_async(job: Job, opts: RunOptions) -> RunSummary:
    """Run ``job`` inside a running event loop (see :class:`Runner`)."""
    return await Runner(job, opts).run()


class Runner:
    """One run of one job, phase by phase: :meth:`check` (nothing written),
    :meth:`locked` (the run directory, held), :meth:`plan` (from the store),
    :meth:`send` (the endpoint, the engine or the Batch API, then the cost
    truth) and :meth:`export`. What the phases share lives on the object."""

    def __init__(self, job: Job, opts: RunOptions) -> None:
        self.job = job
        self.opts = opts
        self.book = PriceBook(job.pricing)
        self.api_key = ""
        self.headers: dict[str, str] = {}  # endpoint.headers as sent
        self.redact = Redactor("")
        self.gate: SharedGate | None = None
        self.run_id = 0
        self.base_url = job.endpoint.base_url
        self.estimator = Estimator()
        self.recovered = 0
        self.interrupt = Interrupt()
        self.notes: list[str] = []  # said at the end of the run, beside the engine's

    async def run(self) -> RunSummary:
        self.interrupt.main = asyncio.current_task()
        self.check()
        self.gate = await self._shared_gate()  # Redis answers, or nothing is written
        try:
            quiet_transport_logs()
            with self.locked():
                return await self._with_store()
        finally:
            if self.gate is not None:
                await self.gate.close()

    # ---------------------------------------------------------------- check

    def check(self) -> None:
        """Everything that can refuse the run before anything is written: the
        API key, the job itself (:func:`check_job`), a proxy of a kind the
        transport does not speak, answers it would not see (a lost store, the
        job's shards)."""
        self.api_key = api_key_from_env(  # plain http: a server of the user's own
            self.job.endpoint.api_key_env,
            keyless_ok=self.job.endpoint.base_url.lower().startswith("http:"))
        self.headers, header_secrets = resolve_headers(self.job.endpoint.headers)
        self.redact = Redactor(self.api_key, *header_secrets)
        self.job = check_job(self.job, self.book)
        if self.job.endpoint.key_withheld:
            self._note(withheld_note(*self.job.endpoint.key_withheld,
                                     self.job.endpoint.base_url))
        if not self.job.endpoint.local:  # a proxy batchgen cannot speak, certificates that
            from batchgen.wire.transport import proxy_for, tls_context  # are not there: said

            base_url = self.job.endpoint.base_url  # before anything is written
            tls_context(base_url, proxied=proxy_for(base_url) is not None)
        check_answers_seen(self.job, self.opts.force)
        if not self.job.endpoint.local:  # a batch is looked up where it went
            check_batches_here(self.job.run_dir, self.job.endpoint.base_url, self.opts.force)
        if self.job.run.via != "batch":  # streams: each holds an open file
            fits, note = fit_concurrency(self.job.run.concurrency)
            if note is not None:
                self._note(note)
                self.job = replace(self.job, run=replace(self.job.run, concurrency=fits))

    def _note(self, note: str) -> None:
        """Said now (a warning: stderr), and again beside the run's summary."""
        log.warning("%s", note)
        self.notes.append(note)

    async def _shared_gate(self) -> SharedGate | None:
        job = self.job
        if not job.run.limits_url:
            return None
        from batchgen.pacing.redis_gate import SharedGate, account_id

        gate = SharedGate(job.run.limits_url, account_id(job.endpoint.base_url, self.api_key),
                          rpm=job.run.rpm, tpm=job.run.tpm, sleep=self.opts.sleep)
        try:
            await gate.check()
        except BaseException:
            await gate.close()
            raise
        return gate

    # ----------------------------------------------------------------- lock

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The run directory, made and held (one run at a time), its ``texts/``
        ready and temporary files a crash left removed."""
        run_dir = self.job.run_dir
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = RunLock(run_dir)
            lock.acquire()
        except OSError as exc:
            in_the_way = file_in_the_way(run_dir)
            if in_the_way is not None:
                raise UsageError(
                    f"the run directory {run_dir} cannot be made: {in_the_way} is a file, "
                    "not a directory; point --out (or output_dir:) elsewhere, or give the run "
                    "another name (--name, name:)") from None
            raise storage_error(exc, run_dir) from None
        try:
            try:
                (run_dir / "texts").mkdir(exist_ok=True)
                clean_temp(run_dir)
            except OSError as exc:
                raise storage_error(exc, run_dir) from None
            yield
        finally:
            lock.release()

    async def _with_store(self) -> RunSummary:
        job = self.job
        store = RunStore(job.run_dir / "run.db")
        try:
            try:
                summary = await self._phases(store)
            except (StorageError, sqlite3.OperationalError, OSError) as exc:
                summary = RunSummary(run_dir=job.run_dir, total=job.info.requests, skipped=0,
                                     storage=storage_error(exc, job.run_dir))
            if summary.storage is not None:
                summary.storage = _with_counts(summary.storage, store)
            return summary
        finally:
            self.opts.progress.close()
            with contextlib.suppress(sqlite3.Error):
                store.close()

    async def _phases(self, store: RunStore) -> RunSummary:
        self.plan(store)
        job = self.job
        todo = store.count_todo()
        start = store.counts()
        summary = RunSummary(run_dir=job.run_dir, total=job.info.requests, skipped=start["done"])
        if job.run.via != "batch":
            self.opts.progress.start(todo, start["done"])
        outcome = Outcome()
        if todo or (job.run.via == "batch" and start["batched"]):
            outcome = await self.send(store)
        summary.done, summary.failed = outcome.done, outcome.failed
        summary.fatal, summary.stopped_by = outcome.fatal, outcome.stopped_by
        summary.storage, summary.notes = outcome.storage, [*self.notes, *outcome.notes]
        counts = store.counts()
        # in a batch still running at the provider (--no-wait) is not "not run"
        summary.pending = counts["pending"] + (counts["batched"] if job.run.via != "batch"
                                               or outcome.stopped_by != "submitted" else 0)
        if job.run.via != "batch" and counts["batched"] and summary.stopped_by is None:
            summary.pending -= counts["batched"]  # not streamed: --via batch collects them
            summary.stopped_by, summary.batched = "submitted", counts["batched"]
        if summary.storage is not None:
            # the disk refused writes: what the store holds is what is done (an
            # answer whose commit the disk refused is pending), and outputs stay
            summary.done = max(0, counts["done"] - start["done"])
        else:
            self.export(store, summary)
        return summary

    # ----------------------------------------------------------------- plan

    def plan(self, store: RunStore) -> None:
        """Record this invocation, recover what a killed one left streaming, and
        bring the store's requests in line with the job (resume is derived from
        disk, never from memory)."""
        job, opts = self.job, self.opts
        self.run_id = store.begin_run(endpoint=job.endpoint_id, base_url=job.endpoint.base_url,
                                      region=job.endpoint.region, pid=os.getpid(),
                                      version=__version__, now=opts.clock())
        if opts.force and not job.endpoint.local:
            for note in leave_batches_elsewhere(store, job.endpoint.base_url):
                self._note(note)
        store.set_meta("pricing", overrides_to_json(job.pricing))
        if job.table is not None:  # what `batchgen export` writes for this run
            store.set_meta(table.META_KEY, job.table.to_json())
        store.set_meta(table.ON_LENGTH_KEY, job.run.on_length)  # the table's columns
        store.set_meta(table.SPEECH_KEY, "1" if job.info.speech else "")
        store.set_meta(table.INPUTS_KEY, json.dumps(job.inputs))  # `export -o` spares them
        store.set_meta("job", json.dumps({  # what `batchgen merge` checks shards against
            "name": job.name, "digest": job.info.job_digest,
            "requests": job.info.job_requests,
            "shard": list(job.shard) if job.shard else None}))
        estimator = self.estimator = Estimator(load_calibration(store))
        self.recovered = store.recover(lambda body, content, reasoning: estimate(
            body, content, reasoning, estimator), now=opts.clock())
        # The same plan as last time (same ids, same fingerprints, same order)
        # is not planned again; a new one comes from the rows validating kept
        # (batchgen.jobs.spool), or from resolving the job once more.
        if store.meta("plan") != job.info.plan_digest:
            store.sync_requests(job.plan_rows())
            store.set_meta("plan", job.info.plan_digest)
            if again := store.answered_before():  # an edit bought everything again
                self._note(f"{again:,} request{'s' if again != 1 else ''} answered before "
                           f"{'are' if again != 1 else 'is'} bought again: "
                           f"{'their' if again != 1 else 'its'} prompt, model, parameters or "
                           "endpoint changed since; `batchgen run --dry-run` says so before "
                           "a run")
            if left_out := store.answers_not_in_job():  # or another job of this name
                self._note(f"{left_out:,} answer{'s' if left_out != 1 else ''} in "
                           f"{job.run_dir} {'are' if left_out != 1 else 'is'} for requests "
                           "the job no longer has (removed, data rows edited, or another job "
                           "of this name): kept in run.db and texts/, left out of "
                           "results.jsonl" + (" and the table" if job.table is not None else ""))
        if job.validation_key is not None:  # the next run of these inputs need not validate
            kept = validated.record(job.validation_key, job.info)
            if store.meta(validated.META_KEY) != kept:
                store.set_meta(validated.META_KEY, kept)
        store.commit()
        job.discard_spool()

    # ----------------------------------------------------------------- send

    async def send(self, store: RunStore) -> Outcome:
        """Start the endpoint (a local server, if asked), then the engine (or the
        Batch API); both stop on signals. Then the cost truth, endpoint still up."""
        job, opts = self.job, self.opts
        budget = (BudgetGuard(job.budget, job, self.book, store, self.estimator)
                  if job.budget else None)
        restore = self.interrupt.install() if opts.handle_signals else (lambda: None)
        try:
            async with contextlib.AsyncExitStack() as stack:
                base_url = self.base_url = await self._endpoint(stack)
                local_url = base_url if job.endpoint.local else None
                # during the run, a tokenizer only if at hand (Qwen's costs ~60 MB and half a
                # second to load: it loads when a continuation or the refinement needs it)
                self.estimator.counter_for = lambda model: counter_for(model, local_url,
                                                                       wait=False)
                client = (opts.client_factory or default_client)(
                    base_url, self.api_key, job, self.headers, self.redact)
                close = getattr(client, "close", None)
                if close is not None:
                    stack.push_async_callback(close)
                outcome = await self._engine_or_batches(store, client, budget)
                if outcome.storage is None and not self.interrupt.came:
                    self.estimator.counter_for = lambda model: counter_for(model, local_url)
                    self._refine(store)
                return outcome
        except asyncio.CancelledError:
            if not self.interrupt.came:
                raise
            return Outcome(stopped_by="interrupt")
        finally:
            restore()

    async def _endpoint(self, stack: contextlib.AsyncExitStack) -> str:
        """The base URL to send to: the job's, or a local llama-server's."""
        job = self.job
        if not job.endpoint.local:
            return job.endpoint.base_url
        from batchgen.llama.server import LocalServer

        return await stack.enter_async_context(LocalServer(
            job.run_dir, model_path=job.endpoint.model_path,
            concurrency=job.run.concurrency, server_args=job.endpoint.server_args))

    async def _engine_or_batches(self, store: RunStore, client: Any,
                                 budget: BudgetGuard | None) -> Outcome:
        job, opts = self.job, self.opts
        engine = Engine(
            EngineDeps(store=store, client=client, run_dir=job.run_dir, run_id=self.run_id,
                       progress=opts.progress, clock=opts.clock, sleep=opts.sleep,
                       redact=self.redact, rng=opts.rng, flush_interval=opts.flush_interval,
                       budget=budget, estimator=self.estimator),
            job.run, continuation=job.endpoint.continuation, gate=self.gate,
            raw_audio=media.raw_audio_for(job.endpoint.base_url))
        outcome = Outcome()
        # report.html's imports and template, while the first requests are sent
        asyncio.get_running_loop().call_later(PREPARE_REPORTS_AFTER, prepare_reports)
        if job.run.via == "batch":  # a signal cancels it: the batches run on remotely
            outcome, released = await self._batches(store)
            engine.only = set(released)  # --fallback stream: what batches left unanswered
            if budget is not None and job.budget is not None:  # what the batches cost
                budget.spent = spent(store, self.book, job.budget.currency)
        if job.run.via != "batch" or (outcome.stopped_by is None and engine.only):
            self.interrupt.engine = engine  # a signal stops it and records what streamed
            with quiet_gc():  # streamed, or what an expired batch left (--fallback stream)
                streamed = await engine.run()
            streamed.done += outcome.done
            streamed.failed += outcome.failed
            streamed.notes = outcome.notes + streamed.notes
            outcome = streamed
        return outcome

    async def _batches(self, store: RunStore) -> tuple[Outcome, list[str]]:
        """The job's pending requests through the provider's Batch API; and
        what expired or cancelled batches left to stream (--fallback stream)."""
        from batchgen.batch_api.client import open_client
        from batchgen.engine.budget import BatchBudget
        from batchgen.engine.via_batch import BatchRunner

        job, opts = self.job, self.opts
        budget = (BatchBudget(job.budget, job, self.book, store, self.estimator)
                  if job.budget else None)
        sdk = open_client(self.base_url, self.api_key, connect_timeout=job.run.connect_timeout,
                          headers=self.headers)
        try:
            runner = BatchRunner(store, sdk, job.run, run_id=self.run_id,
                                 progress=opts.progress, redact=self.redact, sleep=opts.sleep,
                                 clock=opts.clock, budget=budget, base_url=self.base_url)
            result = await runner.run()
        finally:
            await sdk.close()
        stopped = ("submitted" if result.submitted else "fatal" if result.fatal
                   else "unavailable" if result.unavailable
                   else "budget" if result.over_budget else None)
        return Outcome(done=result.done, failed=result.failed, fatal=result.fatal,
                       stopped_by=stopped, notes=[*result.lines, *(
                           [result.unavailable] if result.unavailable else []), *(
                           [result.over_budget_why] if result.over_budget_why else [])]
                       ), result.released

    def _refine(self, store: RunStore) -> None:
        """Cost truth, with the endpoint still up (llama-server's /tokenize)."""
        try:
            refine(store, self.estimator)
        except sqlite3.Error:
            raise  # the disk: the run's storage error
        except Exception:  # estimates stay as they were; the next run refines
            log.warning("could not refine the estimated usage", exc_info=True)

    # --------------------------------------------------------------- export

    def export(self, store: RunStore, summary: RunSummary) -> None:
        """results.jsonl, failed.jsonl, texts/ and the reports, derived from the
        store; rewritten only when it changed since they were last written in
        full, or when one is missing (a file of texts/ or audio/ deleted since included)."""
        job = self.job
        state = f"{job.info.plan_digest}:{store.last_attempt_id()}:{self.recovered}:" \
                f"{overrides_to_json(job.pricing)}"
        outputs = [job.run_dir / name for name in
                   ("results.jsonl", "failed.jsonl", "report.md", "report.json", "report.html")]
        if job.table is not None:
            outputs.append(Path(job.table.path))
            state += f":{job.table.to_json()}"
        if (store.meta("exported") != f"{state}:{files_stamp(job.run_dir)}"
                or not all(path.exists() for path in outputs)):
            export_all(store, job.run_dir, self.book)
            if job.table is not None:
                table.write_from(store, job.run_dir, book=self.book)
            store.end_run(self.run_id, summary.status, self.opts.clock())
            write_reports(job.run_dir)
            store.set_meta("exported", f"{state}:{files_stamp(job.run_dir)}")
            store.commit()
        else:
            store.end_run(self.run_id, summary.status, self.opts.clock())
            # a CI job that finds the run finished still shows what it cost
            to_step_summary(job.run_dir / "report.md")


def _with_counts(error: StorageError, store: RunStore) -> StorageError:
    """The storage error, with what is safe and what is left."""
    try:
        counts = store.counts()
    except sqlite3.Error:
        return error
    left = counts["pending"] + counts["failed"]
    fix = "free space and run again" if error.no_space else "fix the disk and run again"
    done = counts["done"]
    return StorageError(f"{error}: {done} request{'s' if done != 1 else ''} done, {left} not "
                        f"finished; {fix}",
                        path=error.path, no_space=error.no_space)
