"""Every error batchgen raises on purpose, and every exit code.

The whole tree::

    BatchgenError                    root; ``exit_code`` says how the CLI exits
    ├── UsageError                   bad flags, missing API key, bad setting     (2)
    │   └── JobFileError             a job file is broken; lists every problem   (2)
    ├── LockedError                  another run holds the run directory         (75)
    ├── StoreError                   run.db unreadable or from a newer batchgen  (1)
    ├── StorageError                 the disk refused a write (full, read-only)  (74)
    ├── LocalEndpointError           llama-server / model missing or not healthy (1)
    │   └── ServerCrashed            llama-server died from a signal at start
    ├── BatchApiError                the provider's Batch API kept failing       (1)
    └── AttemptError                 one streamed attempt failed; carries data
        ├── TransientError           worth another attempt (429, 5xx, cut, stall)
        ├── RequestFatalError        this request fails for good (400, 404, ...)
        │   └── ModerationError      content moderation refused the request
        └── RunFatalError            nothing will work: bad key, arrears, quota (4)

:class:`ExitCode` is the one list of exit codes: the errors above, a run's
summary, the CLI's help and the documentation all take theirs from it.

Core code raises these; only ``cli.py`` turns them into exit codes and text.
Messages never contain an API key: they are built from server replies, which
pass through :func:`batchgen.secrets.redact` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class ExitCode(IntEnum):
    """How ``batchgen`` exits. :attr:`short` is the CLI help's wording,
    :attr:`meaning` the documentation's."""

    OK = 0
    FAILED = 1
    USAGE = 2
    BUDGET = 3
    RUN_FATAL = 4
    SUBMITTED = 5
    UNAVAILABLE = 69  # sysexits' EX_UNAVAILABLE
    STORAGE = 74  # sysexits' EX_IOERR
    LOCKED = 75  # sysexits' EX_TEMPFAIL
    INTERRUPTED = 130  # 128 + SIGINT, as shells report it

    @property
    def short(self) -> str:
        return _SHORT[self]

    @property
    def meaning(self) -> str:
        return _MEANING[self]


_SHORT = {
    ExitCode.OK: "all done",
    ExitCode.FAILED: "some failed or unfinished",
    ExitCode.USAGE: "bad usage or job file",
    ExitCode.BUDGET: "stopped by budget",
    ExitCode.RUN_FATAL: "stopped by a run-fatal API error",
    ExitCode.SUBMITTED: "submitted to the provider's Batch API (run again to collect)",
    ExitCode.UNAVAILABLE: "the endpoint was unreachable for run.outage_timeout (run again to "
                          "continue)",
    ExitCode.STORAGE: "the disk refused a write",
    ExitCode.LOCKED: "run directory locked",
    ExitCode.INTERRUPTED: "interrupted (run again to resume)",
}
_MEANING = {
    ExitCode.OK: "every request is done",
    ExitCode.FAILED: "some requests failed for good, or are not finished (see `failed.jsonl`, "
                     "`batchgen status`); `merge`: some shards are incomplete",
    ExitCode.USAGE: "bad usage, bad job file, missing API key, Redis unreachable, a "
                    "stream-only model sent `--via batch`, a file where the run directory "
                    "goes, answers this run would not see (a lost `run.db`, the job's "
                    "shards) — nothing was written or sent",
    ExitCode.BUDGET: "stopped by the budget",
    ExitCode.RUN_FATAL: "stopped by a run-fatal API error (bad key, access denied, arrears, "
                        "quota used up)",
    ExitCode.SUBMITTED: "submitted to the provider's Batch API (`--no-wait`): run the same "
                        "command again to collect; a streamed run that leaves requests "
                        "waiting in a batch an earlier run submitted: collect them with "
                        "`--via batch`",
    ExitCode.UNAVAILABLE: "the endpoint was unreachable (connection refused, DNS, TLS, or only "
                          "server errors) for longer than `run.outage_timeout`; every unfinished "
                          "request is left pending, none failed: run the same command again",
    ExitCode.STORAGE: "the disk refused a write (full, read-only); what was committed is "
                      "kept: free space and run again",
    ExitCode.LOCKED: "another run holds the run directory's lock",
    ExitCode.INTERRUPTED: "interrupted; run again to resume",
}


def exit_codes_help() -> str:
    """The exit codes in one sentence, for ``--help``."""
    return "Exit codes: " + ", ".join(f"{code.value} {code.short}" for code in ExitCode) + "."


class BatchgenError(Exception):
    """Root of every error batchgen raises on purpose."""

    exit_code: int = ExitCode.FAILED


class UsageError(BatchgenError):
    """The command line or environment is wrong; nothing was written."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a job file, with where it is and how to fix it."""

    file: str
    line: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class JobFileError(UsageError):
    """A job file is broken. ``problems`` lists each with file, line and fix."""

    def __init__(self, problems: list[Problem], *, truncated: bool = False) -> None:
        self.problems = problems
        self.truncated = truncated
        lines = [str(p) for p in problems]
        if truncated:
            lines.append("(more problems follow; fix these first)")
        super().__init__("\n".join(lines))


class LockedError(BatchgenError):
    """Another batchgen run holds this run directory."""

    exit_code = ExitCode.LOCKED


class StoreError(BatchgenError):
    """The run store cannot be used."""


class StorageError(BatchgenError):
    """The run directory's disk refused a write: full, read-only, failing.

    The run stops launching at once (what is committed stays) and exits 74,
    sysexits' EX_IOERR. ``no_space`` tells a full disk from other failures.
    """

    exit_code = ExitCode.STORAGE

    def __init__(self, message: str, *, path: str, no_space: bool) -> None:
        super().__init__(message)
        self.path = path
        self.no_space = no_space


class LocalEndpointError(BatchgenError):
    """The embedded local endpoint could not be found or started."""


class ServerCrashed(LocalEndpointError):
    """llama-server died from a signal while starting; ``signal`` says which."""

    def __init__(self, message: str, sig: int) -> None:
        super().__init__(message)
        self.signal = sig


class BatchApiError(BatchgenError):
    """The provider's Batch API kept failing; what was done is recorded."""


class AttemptError(BatchgenError):
    """One streamed attempt failed. The fields say what the server said."""

    error_class = "error"
    in_stream = False  # the server sent it as an error event inside a 200 stream

    during_outage = False  # failed while the endpoint was down: not the request's failure

    def __init__(
        self,
        message: str,
        *,
        error_class: str | None = None,
        http_status: int | None = None,
        code: str | None = None,
        provider_request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if error_class is not None:
            self.error_class = error_class
        self.http_status = http_status
        self.code = code
        self.provider_request_id = provider_request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [self.error_class]
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        if self.code:
            parts.append(self.code)
        return f"{' '.join(parts)}: {self.message}"


class TransientError(AttemptError):
    """Worth another attempt after a back-off."""

    error_class = "transient"


class RequestFatalError(AttemptError):
    """This request will not succeed as written; other requests may."""

    error_class = "request_fatal"


class ModerationError(RequestFatalError):
    """Content moderation refused the input or the output."""

    error_class = "moderation"


class RunFatalError(AttemptError):
    """No request can succeed (bad key, access denied, arrears, quota)."""

    error_class = "run_fatal"
    exit_code = ExitCode.RUN_FATAL
