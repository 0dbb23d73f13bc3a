"""Writing attempts: their rows, the text they streamed, their usage.

An attempt's number (``attempts.id``) is handed out by the store when it
starts (:meth:`AttemptWrites.new_attempt`), and its row can wait in memory
until the next commit: :meth:`AttemptWrites.write_attempts` then inserts it —
with its end already in it when it finished before that commit, which is
what most short answers do. A row written at the start and updated at the
end would cost a second statement per request for nothing: until the commit
neither is on disk.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from batchgen.store.reads import Reader
from batchgen.store.records import Resume, Usage


@dataclass(frozen=True)
class Started:
    """An attempt as it starts: its ``attempts`` row before it ends."""

    id: int
    request_id: str
    fingerprint: str
    model: str
    run_id: int
    n: int
    mode: str  # fresh | continue | batch
    started: float
    continues: int | None = None  # the attempt it goes on from
    continuations: int | None = None
    prefix_chars: int | None = None


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended; everything goes into its ``attempts`` row."""

    status: str  # done | error | aborted
    finish_reason: str | None = None
    error_class: str | None = None
    error_code: str | None = None
    http_status: int | None = None
    error_message: str | None = None
    provider_request_id: str | None = None
    tool_calls: str | None = None  # JSON list, when the answer called tools
    first_token: float | None = None  # when the first text arrived


@dataclass(frozen=True)
class Ended:
    """One ended attempt, for :meth:`AttemptWrites.write_attempts`. A finished
    one carries its ``request_id`` and full text."""

    attempt_id: int
    end: AttemptEnd
    usage: Usage | None
    now: float
    request_id: str | None = None
    content: str = ""
    reasoning: str = ""
    value_json: str | None = None  # an answer to a schema: its JSON value, pretty-printed


_STILL_STREAMING = AttemptEnd(status="streaming")
_INSERT = (
    "INSERT INTO attempts (id, request_id, fingerprint, model, run_id, n, mode, started, "
    "continues, continuations, prefix_chars, ended, status, finish_reason, error_class, "
    "error_code, http_status, error_message, provider_request_id, tool_calls, first_token) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = (
    "UPDATE attempts SET ended=?, status=?, finish_reason=?, error_class=?, error_code=?, "
    "http_status=?, error_message=?, provider_request_id=?, tool_calls=?, first_token=? "
    "WHERE id=?"
)


def _end_columns(e: Ended | None) -> tuple[object, ...]:
    end = _STILL_STREAMING if e is None else e.end
    return (None if e is None else e.now, end.status, end.finish_reason, end.error_class,
            end.error_code, end.http_status, end.error_message, end.provider_request_id,
            end.tool_calls, end.first_token)


class AttemptWrites(Reader):
    """The writes of attempts, segments and usage (none of them commits)."""

    _last_attempt: int | None = None

    def new_attempt(self, request_id: str, fingerprint: str, model: str, *, run_id: int,
                    n: int, now: float, resume: Resume | None = None,
                    mode: str | None = None) -> Started:
        """A new attempt, numbered: ``fresh``, or ``continue`` going on from
        ``resume``; its row is written by :meth:`write_attempts`."""
        if self._last_attempt is None:
            row = self.db.execute("SELECT COALESCE(MAX(id), 0) FROM attempts").fetchone()
            self._last_attempt = int(row[0])
        self._last_attempt += 1
        if resume is None:
            return Started(self._last_attempt, request_id, fingerprint, model, run_id, n,
                           mode or "fresh", now)
        return Started(self._last_attempt, request_id, fingerprint, model, run_id, n,
                       mode or "continue", now, resume.parent, resume.depth + 1,
                       len(resume.text))

    def write_attempts(self, started: Iterable[Started], ended: list[Ended]) -> None:
        """Rows of attempts that ``started`` (each with its end, if it is among
        ``ended``), the end of the others in ``ended``; for a finished one (its
        ``request_id`` set) its text compacted into one segment and its request
        marked done — in the same transaction, so a result is either all there
        or not."""
        by_id = {e.attempt_id: e for e in ended}
        new = [(s.id, s.request_id, s.fingerprint, s.model, s.run_id, s.n, s.mode, s.started,
                s.continues, s.continuations, s.prefix_chars, *_end_columns(by_id.get(s.id)))
               for s in started]
        db = self.db
        if new:
            db.executemany(_INSERT, new)
        inserted = {row[0] for row in new}
        updated = [(*_end_columns(e), e.attempt_id) for e in ended
                   if e.attempt_id not in inserted]
        if updated:
            db.executemany(_UPDATE, updated)
        self.put_usage([(e.attempt_id, e.usage) for e in ended if e.usage is not None])
        done = [e for e in ended if e.request_id is not None]
        if done:
            # an attempt inserted just now has no segments yet: nothing to delete
            db.executemany("DELETE FROM segments WHERE attempt_id=?",
                           [(e.attempt_id,) for e in done if e.attempt_id not in inserted])
            db.executemany("INSERT INTO segments VALUES (?, 0, ?, ?)",
                           [(e.attempt_id, e.content, e.reasoning) for e in done])
            db.executemany("UPDATE requests SET state='done', done_attempt=?, reason=NULL "
                           "WHERE id=?", [(e.attempt_id, e.request_id) for e in done])

    def start_attempt(self, request_id: str, fingerprint: str, model: str, *, run_id: int,
                      n: int, now: float, resume: Resume | None = None,
                      mode: str | None = None) -> int:
        """A new attempt, its row written now; its number."""
        started = self.new_attempt(request_id, fingerprint, model, run_id=run_id, n=n,
                                   now=now, resume=resume, mode=mode)
        self.write_attempts([started], [])
        return started.id

    def add_segments(self, rows: list[tuple[int, int, str, str]]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO segments (attempt_id, seq, content, reasoning) "
            "VALUES (?, ?, ?, ?)",
            rows,
        )

    def end_attempt(self, attempt_id: int, end: AttemptEnd, *, usage: Usage | None,
                    now: float) -> None:
        """Record how an attempt that is already written ended (error, aborted)."""
        self.write_attempts([], [Ended(attempt_id, end, usage, now)])

    def put_usage(self, rows: list[tuple[int, Usage]]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO usage (attempt_id, prompt_tokens, completion_tokens, "
            "total_tokens, reasoning_tokens, cached_tokens, estimated, raw, prompt_method, "
            "completion_method, audio_prompt_tokens, audio_completion_tokens) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(attempt_id, u.prompt_tokens, u.completion_tokens, u.total_tokens,
              u.reasoning_tokens, u.cached_tokens, int(u.estimated), u.raw, u.prompt_method,
              u.completion_method, u.audio_prompt_tokens, u.audio_completion_tokens)
             for attempt_id, u in rows],
        )
