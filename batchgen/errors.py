"""Every error batchgen raises on purpose.

The whole tree::

    BatchgenError                    root; ``exit_code`` says how the CLI exits
    ├── UsageError                   bad flags, missing API key, bad setting     (2)
    │   └── JobFileError             a job file is broken; lists every problem   (2)
    ├── LockedError                  another run holds the run directory         (75)
    ├── StoreError                   run.db unreadable or from a newer batchgen  (1)
    ├── StorageError                 the disk refused a write (full, read-only)  (74)
    ├── LocalEndpointError           llama-server / model missing or not healthy (1)
    └── AttemptError                 one streamed attempt failed; carries data
        ├── TransientError           worth another attempt (429, 5xx, cut, stall)
        ├── RequestFatalError        this request fails for good (400, 404, ...)
        │   └── ModerationError      content moderation refused the request
        └── RunFatalError            nothing will work: bad key, arrears, quota (4)

Core code raises these; only ``cli.py`` turns them into exit codes and text.
Messages never contain an API key: they are built from server replies, which
pass through :func:`batchgen.secrets.redact` first.
"""

from __future__ import annotations

from dataclasses import dataclass


class BatchgenError(Exception):
    """Root of every error batchgen raises on purpose."""

    exit_code = 1


class UsageError(BatchgenError):
    """The command line or environment is wrong; nothing was written."""

    exit_code = 2


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

    exit_code = 75


class StoreError(BatchgenError):
    """The run store cannot be used."""


class StorageError(BatchgenError):
    """The run directory's disk refused a write: full, read-only, failing.

    The run stops launching at once (what is committed stays) and exits 74,
    sysexits' EX_IOERR. ``no_space`` tells a full disk from other failures.
    """

    exit_code = 74

    def __init__(self, message: str, *, path: str, no_space: bool) -> None:
        super().__init__(message)
        self.path = path
        self.no_space = no_space


class LocalEndpointError(BatchgenError):
    """The embedded local endpoint could not be found or started."""


class AttemptError(BatchgenError):
    """One streamed attempt failed. The fields say what the server said."""

    error_class = "error"
    in_stream = False  # the server sent it as an error event inside a 200 stream

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
    exit_code = 4
