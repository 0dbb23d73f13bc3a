"""What a run did (:class:`RunSummary`): its counts, why it stopped, and the
exit code the CLI (and ``batchgen.run``) gives for it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.errors import ExitCode, RunFatalError, StorageError


@dataclass
class RunSummary:
    """What a run did, and how the CLI exits for it."""

    run_dir: Path
    total: int
    skipped: int
    done: int = 0
    failed: int = 0
    pending: int = 0
    fatal: RunFatalError | None = None
    storage: StorageError | None = None
    stopped_by: str | None = None
    notes: list[str] = field(default_factory=list)
    batched: int = 0  # a streamed run's requests left waiting in provider batches

    @property
    def exit_code(self) -> ExitCode:
        if self.storage is not None:
            return ExitCode.STORAGE
        if self.stopped_by == "interrupt":
            return ExitCode.INTERRUPTED
        if self.stopped_by == "submitted":
            return ExitCode.SUBMITTED
        if self.fatal is not None:
            return ExitCode.RUN_FATAL
        if self.stopped_by == "budget":
            return ExitCode.BUDGET
        if self.stopped_by == "unavailable":
            return ExitCode.UNAVAILABLE
        if self.failed or self.pending:
            return ExitCode.FAILED  # never 0 while a request of the job is unfinished
        return ExitCode.OK

    @property
    def status(self) -> str:
        """The run's end as the store's ``runs`` table keeps it."""
        if self.stopped_by:
            return f"stopped:{self.stopped_by}"
        return "failed" if self.failed else "done"

    @property
    def why_stopped(self) -> str | None:
        """One line for stderr on why the run ended short of done, and what to
        do about it; None when there is nothing to say."""
        if self.stopped_by == "submitted" and self.batched:
            n = self.batched
            return (f"{n} request{'s wait' if n != 1 else ' waits'} in the provider's Batch "
                    "API, where an earlier run sent them; a streamed run does not send them "
                    "again: run with --via batch to collect them (with --no-wait, to look once)")
        if self.stopped_by == "submitted":
            return ("submitted to the provider's Batch API; run the same command again to "
                    "collect")
        if self.storage is not None:
            return f"stopped: {self.storage}"
        if self.fatal is not None:
            return f"stopped: {self.fatal}"
        if self.stopped_by == "budget":
            return "stopped by the budget; raise it and run again to continue"
        if self.stopped_by == "interrupt":
            return "interrupted; run the same command again to resume"
        if self.stopped_by == "unavailable":
            n = self.pending
            return (f"stopped: the endpoint stayed unreachable; {n} request"
                    f"{'s are' if n != 1 else ' is'} pending, none failed: run the same "
                    "command again to continue")
        if self.pending:
            n = self.pending
            return (f"{n} request{'s were' if n != 1 else ' was'} not finished; run the "
                    "same command again")
        return None


class FailedLog:
    """One log line per request that failed for good, up to :attr:`named` for
    one reason: a parameter the endpoint refuses fails every request alike,
    and 10,000 lines of it bury the rest of a cron job's log."""

    named = 10

    def __init__(self, log: logging.Logger, run_dir: Path) -> None:
        self.log = log
        self.run_dir = run_dir
        self.counts: dict[str, int] = {}

    def say(self, request_id: str, error: Exception) -> None:
        reason = str(error)
        n = self.counts[reason] = self.counts.get(reason, 0) + 1
        if n <= self.named:
            self.log.warning("%s failed for good: %s", request_id, error)
        if n == self.named:
            self.log.warning("more requests that fail for this reason are not named here; "
                             "`batchgen status %s` counts them", self.run_dir)
