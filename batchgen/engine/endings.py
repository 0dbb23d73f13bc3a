"""How an attempt that did not simply finish is recorded (:class:`AttemptEndings`).

An answer that does not fit its schema, one cut at the output cap and taken
further, one the repetition guard stopped, and any attempt that ended early:
each is an ``attempts`` row with what it cost, and each decides what the
request does next. The engine (:class:`~batchgen.engine.engine.Engine`)
inherits these; they use its journal, settings and limits.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from batchgen.engine.continuation import refusal
from batchgen.engine.deps import EngineDeps
from batchgen.engine.journal import Journal, Live
from batchgen.errors import RequestFatalError, TransientError
from batchgen.jobs.records import GuardSettings, RunSettings
from batchgen.outputs.files import text_path, write_atomic
from batchgen.pacing.gate import AdaptiveLimit
from batchgen.pacing.outage import Outage
from batchgen.store.attempts import AttemptEnd
from batchgen.store.records import Resume, Usage
from batchgen.store.runstore import Pending
from batchgen.tokens.usage import estimate, from_report
from batchgen.wire.stream import StreamResult

log = logging.getLogger(__name__)


class AttemptEndings:
    """The endings of attempts other than a plain finish."""

    d: EngineDeps
    settings: RunSettings
    journal: Journal
    outage: Outage
    limit: AdaptiveLimit
    guard: GuardSettings
    form: str  # how an interrupted answer goes on ("none": it starts over)

    def _invalid(self, p: Pending, live: Live, result: StreamResult, problem: str,
                 usage: Usage | None) -> bool:
        """An answer that is not JSON fitting the request's schema: recorded as
        an attempt of class ``schema`` with its usage (it was paid for), then
        asked again as a fresh attempt — up to ``run.max_invalid`` times, apart
        from ``run.max_attempts`` — after which the request fails with reason
        ``schema`` and what was wrong."""
        self._end(live, p, AttemptEnd(status="error", error_class="schema",
                                      finish_reason=result.finish_reason,
                                      error_message=f"the answer {problem}",
                                      provider_request_id=result.request_id), usage)
        self.outage.answered()
        self.d.progress.update(tokens=usage.completion_tokens if usage else 0,
                               in_flight=self.limit.active)
        invalid = self.d.store.attempts_of_class(p.id, p.fingerprint, "schema")
        log.info("%s: invalid answer %d: %s", p.id, invalid, problem)
        if invalid > self.settings.max_invalid:
            raise RequestFatalError(f"the answer {problem} ({invalid} answers, none valid; "
                                    f"run.max_invalid {self.settings.max_invalid})",
                                    error_class="schema",
                                    provider_request_id=result.request_id)
        return True

    def _cut_at_the_cap(self, p: Pending, body: dict[str, Any], live: Live,
                        result: StreamResult, resume: Resume | None) -> bool:
        """An answer ended at the output cap that ``run.on_length: continue`` may
        take further: recorded as a segment (its usage, its text; the request
        stays open) and True. False where it ends here: another finish reason,
        on_length stop, a request that cannot be continued (thinking, tools,
        n > 1, or one whose continuation the endpoint refused), or a limit
        reached (max_continuations, max_total_tokens)."""
        s = self.settings
        if result.finish_reason != "length" or s.on_length != "continue" \
                or self.form == "none" or refusal(p.body) is not None or result.tool_calls:
            return False
        content, reasoning = "".join(live.content), "".join(live.reasoning)
        if reasoning:  # it thought, unannounced (a model not known to): it cannot go on
            return False
        try:
            usage = from_report(result.usage, body, content, reasoning, self.d.estimator)
        except Exception:  # accounting: estimated rather than lost
            usage = estimate(body, content, reasoning, self.d.estimator)
        done = (resume.tokens if resume is not None else 0) + usage.completion_tokens
        if self.d.store.length_segments(p.id, p.fingerprint) >= s.max_continuations \
                or (s.max_total_tokens is not None and done >= s.max_total_tokens) \
                or self.d.store.attempts_of_class(p.id, p.fingerprint, "continuation_refused"):
            return False  # the endpoint refused to go on: a fresh answer would be cut again
        self._end(live, p, AttemptEnd(status="aborted", error_class="length",
                                      finish_reason="length",
                                      error_message="cut at the output cap: continued",
                                      provider_request_id=result.request_id), usage)
        self.outage.answered()
        self.d.progress.update(tokens=usage.completion_tokens, in_flight=self.limit.active)
        return True

    def _repetition(self, p: Pending, body: dict[str, Any], live: Live, result: StreamResult,
                    resume: Resume | None, keep: int, number: int) -> Live:
        """The guard stopped a degenerate loop: what ``run.guard.on_repetition``
        says. The looping attempt is recorded as aborted with class
        ``repetition``, with all it streamed and what that cost (estimated, and
        refined from that text after the run). Then the request fails
        (``fail``: its text to the loop's first copy in ``texts/<id>.partial.md``),
        is asked again (``retry``, counted against ``run.max_attempts``), or
        (``keep``) is done with that text: returned is a record of the kept
        answer, finished with ``finish_reason: repetition`` and no usage of
        its own (its cost is the looping attempt's)."""
        streamed = "".join(live.content)
        billed = self._billed(body, live, result)
        kept = (resume.text if resume is not None else "") + streamed[:keep]
        message = (f"a degenerate loop: the same text over and over after "
                   f"{len(kept):,} characters; stopped after {len(streamed):,}")
        log.warning("%s attempt %d: %s (run.guard.on_repetition: %s)", p.id, number, message,
                    self.guard.on_repetition)
        self._end(live, p, AttemptEnd(status="error" if self.guard.on_repetition != "keep"
                                      else "aborted", error_class="repetition",
                                      error_message=message,
                                      provider_request_id=result.request_id), billed)
        if self.guard.on_repetition == "keep":
            answer = self.journal.open(p, run_id=self.d.run_id, n=number)
            answer.on_text(kept, "".join(live.reasoning))
            result.finish_reason = "repetition"
            return answer
        if self.guard.on_repetition == "retry":
            raise TransientError(message, error_class="repetition",
                                 provider_request_id=result.request_id) from None
        with contextlib.suppress(OSError):
            write_atomic(text_path(self.d.run_dir, p.id).with_suffix(".partial.md"),
                         kept.encode("utf-8"))
        raise RequestFatalError(f"{message} (kept: texts/{p.id}.partial.md)",
                                error_class="repetition",
                                provider_request_id=result.request_id) from None

    def _billed(self, body: dict[str, Any], live: Live, result: StreamResult) -> Usage | None:
        """What an unfinished attempt cost: nothing if no byte of output came back.
        ``body`` is what was sent: a continuation's prompt held the answer so far."""
        content, reasoning = "".join(live.content), "".join(live.reasoning)
        if result.usage:
            try:
                return from_report(result.usage, body, content, reasoning, self.d.estimator)
            except Exception:  # unreadable usage: estimated below
                log.info("unreadable usage %r", result.usage)
        if result.chunks == 0:
            return None
        return estimate(body, content, reasoning, self.d.estimator)

    def _end(self, live: Live, p: Pending, end: AttemptEnd, usage: Usage | None) -> None:
        """An attempt that did not finish: its text so far and its end, now."""
        self.journal.end(live, end, usage)
        if self.d.budget is not None:
            self.d.budget.charge(p, usage)
