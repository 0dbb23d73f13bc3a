"""Reading the run store: finished and failed requests in job order, counts, text.

:class:`StoreReads` holds the queries that only read; :class:`~batchgen.store.runstore.RunStore`
(which owns the schema and every write) inherits them, and so does a store
opened read-only for ``status``, ``report`` and ``merge``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

# a failed request's error: its last attempt's, or why batchgen failed it itself
_FAILED = (
    "r.position, CASE WHEN r.reason IS NOT NULL OR a.id IS NULL "
    " THEN 'internal_error' ELSE a.error_class END AS error_class, a.error_code, "
    " a.http_status, COALESCE(r.reason, a.error_message) AS error_message "
    "FROM requests r LEFT JOIN attempts a ON a.id = "
    " (SELECT MAX(id) FROM attempts x WHERE x.request_id = r.id) "
    "WHERE r.position IS NOT NULL AND r.state = 'failed'"
)
_FAILED_IN_ORDER = "SELECT r.id, r.body, r.tags, r.schema, " + _FAILED + " ORDER BY r.position"
_FAILURE_REASONS = (
    "SELECT error_class, error_code, http_status, error_message, COUNT(*) AS requests "
    "FROM (SELECT " + _FAILED + ") GROUP BY 1, 2, 3, 4 ORDER BY requests DESC, MIN(position)"
)

class Reader:
    """What every part of the store's reads stands on: the connection and rows
    by column name."""

    db: sqlite3.Connection

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[sqlite3.Row]:
        """Rows one at a time, by column name: reports walk every attempt
        without holding them."""
        cur = self.db.cursor()
        cur.row_factory = sqlite3.Row
        yield from cur.execute(sql, params)


class StoreReads(Reader):
    def chain_text(self, attempt_id: int) -> str:
        """The answer so far at the end of ``attempt_id``: its text after the
        text of every attempt it went on from."""
        pieces = []
        node: int | None = attempt_id
        while node:
            pieces.append(self.attempt_text(node)[0])
            row = self.db.execute("SELECT continues FROM attempts WHERE id=?", (node,)).fetchone()
            node = row[0] if row else None
        return "".join(reversed(pieces))

    def attempt_text(self, attempt_id: int) -> tuple[str, str]:
        rows = self.db.execute(
            "SELECT content, reasoning FROM segments WHERE attempt_id=? ORDER BY seq",
            (attempt_id,),
        ).fetchall()
        return "".join(r[0] for r in rows), "".join(r[1] for r in rows)

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def done_in_order(self, with_cost: bool = False) -> Iterator[sqlite3.Row]:
        """Finished requests of the job in job order, with their text and usage.

        ``with_cost`` adds what each request cost over all its attempts (needs
        the ``bg_cost`` functions of :class:`batchgen.cost.pricing.StoreCosts`).
        """
        cost = (
            ", (SELECT SUM(bg_cost(x.run_id, x.model, ux.prompt_tokens, ux.completion_tokens, "
            "   ux.reasoning_tokens, ux.cached_tokens, x.mode, ux.audio_prompt_tokens, "
            "   ux.audio_completion_tokens)) FROM attempts x "
            "   LEFT JOIN usage ux ON ux.attempt_id = x.id WHERE x.request_id = r.id "
            "   AND x.fingerprint = r.fingerprint) AS cost, "
            " (SELECT MAX(ux.estimated) FROM attempts x JOIN usage ux ON ux.attempt_id = x.id "
            "   WHERE x.request_id = r.id AND x.fingerprint = r.fingerprint) AS cost_estimated, "
            " bg_currency(a.run_id, a.model) AS currency "
        ) if with_cost else " "
        cur = self.db.cursor()
        cur.row_factory = sqlite3.Row
        # `cost` is one of two fixed fragments above; nothing here comes from a user
        sql = (
            "SELECT r.id, r.position, r.model, r.fingerprint, r.tags, r.schema, "  # noqa: S608
            "a.id AS attempt_id, a.finish_reason, a.tool_calls, a.continuations"
            + cost
            + ", a.run_id, (SELECT COUNT(*) FROM attempts x WHERE x.request_id = r.id "
            "   AND x.fingerprint = r.fingerprint AND x.status != 'aborted') AS attempts, "
            " (SELECT COUNT(*) FROM attempts x WHERE x.request_id = r.id "
            "   AND x.fingerprint = r.fingerprint AND x.error_class = 'length') "
            "   AS length_continuations, "
            " s.content, s.reasoning, u.prompt_tokens + COALESCE(g.prompt_tokens, 0) "
            "   AS prompt_tokens, u.completion_tokens + COALESCE(g.completion_tokens, 0) "
            "   AS completion_tokens, "
            " u.total_tokens + COALESCE(g.total_tokens, 0) AS total_tokens, "
            " CASE WHEN u.reasoning_tokens IS NULL AND g.reasoning_tokens IS NULL THEN NULL "
            "   ELSE COALESCE(u.reasoning_tokens, 0) + COALESCE(g.reasoning_tokens, 0) END "
            "   AS reasoning_tokens, "
            " CASE WHEN u.cached_tokens IS NULL AND g.cached_tokens IS NULL THEN NULL "
            "   ELSE COALESCE(u.cached_tokens, 0) + COALESCE(g.cached_tokens, 0) END "
            "   AS cached_tokens, MAX(u.estimated, COALESCE(g.estimated, 0)) AS estimated "
            "FROM requests r JOIN attempts a ON a.id = r.done_attempt "
            "LEFT JOIN segments s ON s.attempt_id = a.id AND s.seq = 0 "
            "LEFT JOIN usage u ON u.attempt_id = a.id "
            # the segments an answer continued past the output cap: their usage is the answer's
            "LEFT JOIN (SELECT x.request_id, x.fingerprint, "
            "   SUM(ux.prompt_tokens) AS prompt_tokens, "
            "   SUM(ux.completion_tokens) AS completion_tokens, "
            "   SUM(ux.total_tokens) AS total_tokens, "
            "   SUM(ux.reasoning_tokens) AS reasoning_tokens, "
            "   SUM(ux.cached_tokens) AS cached_tokens, MAX(ux.estimated) AS estimated "
            "   FROM attempts x JOIN usage ux ON ux.attempt_id = x.id "
            "   WHERE x.error_class = 'length' GROUP BY x.request_id, x.fingerprint) g "
            "   ON g.request_id = r.id AND g.fingerprint = r.fingerprint "
            "WHERE r.position IS NOT NULL AND r.state = 'done' ORDER BY r.position"
        )
        yield from cur.execute(sql)

    def outcomes_in_order(self, data_only: bool, with_cost: bool) -> Iterator[sqlite3.Row]:
        """Every request of the job in job order, whatever its state, for the
        table: its data row, the answer (done), the error (failed), usage over
        the answer's segments and how many there were past the first
        (``length_continuations``), and (``with_cost``) what all its attempts cost."""
        cost = (
            " (SELECT SUM(bg_cost(x.run_id, x.model, ux.prompt_tokens, ux.completion_tokens, "
            "   ux.reasoning_tokens, ux.cached_tokens, x.mode, ux.audio_prompt_tokens, "
            "   ux.audio_completion_tokens)) FROM attempts x "
            "   JOIN usage ux ON ux.attempt_id = x.id WHERE x.request_id = r.id "
            "   AND x.fingerprint = r.fingerprint) AS cost, "
            " (SELECT bg_currency(x.run_id, x.model) FROM attempts x WHERE x.request_id = r.id "
            "   ORDER BY x.id DESC LIMIT 1) AS currency, "
        ) if with_cost else " NULL AS cost, NULL AS currency, "
        where = " AND r.data_row IS NOT NULL" if data_only else ""
        cur = self.db.cursor()
        cur.row_factory = sqlite3.Row
        # `cost` and `where` are fixed fragments above; nothing here comes from a user
        yield from cur.execute(
            "SELECT r.id, r.position, r.state, r.data_row, r.schema, r.model, s.content, "  # noqa: S608
            " s.reasoning, "
            " d.finish_reason, " + cost +
            " u.prompt_tokens + COALESCE(g.prompt_tokens, 0) AS prompt_tokens, "
            " u.completion_tokens + COALESCE(g.completion_tokens, 0) AS completion_tokens, "
            " CASE WHEN d.id IS NOT NULL THEN COALESCE(g.segments, 0) END "
            "   AS length_continuations, "
            " CASE WHEN r.state = 'failed' THEN COALESCE(r.reason, e.error_message, "
            "   e.error_class) END AS error "
            "FROM requests r "
            "LEFT JOIN attempts d ON d.id = r.done_attempt AND r.state = 'done' "
            "LEFT JOIN segments s ON s.attempt_id = d.id AND s.seq = 0 "
            "LEFT JOIN usage u ON u.attempt_id = d.id "
            "LEFT JOIN (SELECT x.request_id, x.fingerprint, "
            "   SUM(ux.prompt_tokens) AS prompt_tokens, "
            "   SUM(ux.completion_tokens) AS completion_tokens, COUNT(*) AS segments "
            "   FROM attempts x LEFT JOIN usage ux ON ux.attempt_id = x.id "
            "   WHERE x.error_class = 'length' GROUP BY x.request_id, x.fingerprint) g "
            "   ON g.request_id = r.id AND g.fingerprint = r.fingerprint AND d.id IS NOT NULL "
            "LEFT JOIN attempts e ON r.state = 'failed' AND e.id = "
            "   (SELECT MAX(id) FROM attempts x WHERE x.request_id = r.id) "
            "WHERE r.position IS NOT NULL" + where + " ORDER BY r.position"
        )

    def schemas(self) -> list[str]:
        """The distinct schemas the job's answers must fit (JSON text)."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT schema FROM requests WHERE position IS NOT NULL "
            "AND schema IS NOT NULL")]

    def data_rows(self) -> Iterator[str]:
        """The job's data rows (their kept columns, JSON), in job order."""
        for (raw,) in self.db.execute(
                "SELECT data_row FROM requests WHERE position IS NOT NULL "
                "AND data_row IS NOT NULL ORDER BY position"):
            yield raw

    def failed_in_order(self) -> Iterator[sqlite3.Row]:
        """Requests of the job that failed for good, with their last attempt's error."""
        cur = self.db.cursor()
        cur.row_factory = sqlite3.Row
        yield from cur.execute(_FAILED_IN_ORDER)

    def failure_reasons(self) -> list[sqlite3.Row]:
        """Each error the job's failed requests ended with, and how many
        (``requests``): most first."""
        cur = self.db.cursor()
        cur.row_factory = sqlite3.Row
        return cur.execute(_FAILURE_REASONS).fetchall()

    def counts(self) -> dict[str, int]:
        """Requests by state: done, failed, pending, batched (in a provider batch)."""
        out = {"done": 0, "failed": 0, "pending": 0, "batched": 0}
        for state, n in self.db.execute(
            "SELECT state, COUNT(*) FROM requests WHERE position IS NOT NULL GROUP BY state"
        ):
            out[state] = n
        row = self.db.execute(
            "SELECT COUNT(*) FROM attempts a JOIN requests r ON r.id = a.request_id "
            "WHERE a.status = 'streaming' AND r.state != 'done'"
        ).fetchone()
        out["streaming"] = int(row[0])
        return out

    # ------------------------------------------------------------ requests

    def request_body(self, request_id: str) -> dict[str, Any]:
        """The body a request is sent with."""
        row = self.db.execute("SELECT body FROM requests WHERE id=?", (request_id,)).fetchone()
        return dict(json.loads(row[0]))

    def request_schema(self, request_id: str) -> str | None:
        """The schema a request's answer must fit (JSON text), if it has one."""
        row = self.db.execute("SELECT schema FROM requests WHERE id=?", (request_id,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def request_model_body(self, request_id: str) -> tuple[str, dict[str, Any]]:
        row = self.db.execute("SELECT model, body FROM requests WHERE id=?",
                              (request_id,)).fetchone()
        return str(row[0]), dict(json.loads(row[1]))

    def batched_ids(self) -> list[str]:
        """Requests that wait in a provider batch."""
        return [r[0] for r in self.db.execute("SELECT id FROM requests WHERE state='batched'")]

    def planned(self) -> Iterator[tuple[str, str]]:
        """(id, fingerprint) of every request of the job."""
        yield from self.db.execute(
            "SELECT id, fingerprint FROM requests WHERE position IS NOT NULL")

    def done_among(self, ids: list[str]) -> set[tuple[str, str]]:
        """(id, fingerprint) of those of ``ids`` that are done (at most ~30,000 ids)."""
        marks = ",".join("?" * len(ids))
        # only placeholders go into the SQL; the ids are parameters
        sql = f"SELECT id, fingerprint FROM requests WHERE state='done' AND id IN ({marks})"  # noqa: S608
        return {(r[0], r[1]) for r in self.db.execute(sql, ids)}

    def answered_among(self, ids: list[str]) -> set[tuple[str, str]]:
        """(id, fingerprint) of every version of ``ids`` that was answered (an
        attempt done), the current one or an earlier (at most ~30,000 ids)."""
        marks = ",".join("?" * len(ids))
        sql = ("SELECT DISTINCT request_id, fingerprint FROM attempts "  # noqa: S608
               f"WHERE status='done' AND request_id IN ({marks})")
        return {(r[0], r[1]) for r in self.db.execute(sql, ids)}

    def answered_before(self) -> int:
        """Requests of the job to be answered again: an earlier version of
        each (another prompt, model or parameters) has its answer."""
        row = self.db.execute(  # from the answers: as many as were bought, not the job's size
            "SELECT COUNT(DISTINCT a.request_id) FROM attempts a JOIN requests r "
            "ON r.id = a.request_id WHERE a.status = 'done' AND a.fingerprint != r.fingerprint "
            "AND r.position IS NOT NULL AND r.state != 'done'"
        ).fetchone()
        return int(row[0])

    # ------------------------------------------------------------ attempts

    def attempt_chain(self, request_id: str, fingerprint: str) -> list[tuple[Any, ...]]:
        """Every attempt of this version of a request, oldest first, as (id,
        continues, continuations, status, error_class, completion_tokens,
        completion_method, estimated)."""
        return self.db.execute(
            "SELECT a.id, a.continues, a.continuations, a.status, a.error_class, "
            "u.completion_tokens, u.completion_method, u.estimated "
            "FROM attempts a LEFT JOIN usage u ON u.attempt_id = a.id "
            "WHERE a.request_id = ? AND a.fingerprint = ? ORDER BY a.id",
            (request_id, fingerprint),
        ).fetchall()

    def at_the_cap(self) -> int:
        """Requests of the job done with ``finish_reason: length``: stopped at
        the output cap (not continued, or past run.on_length's limits)."""
        return int(self.db.execute(
            "SELECT COUNT(*) FROM requests r JOIN attempts a ON a.id = r.done_attempt "
            "WHERE r.position IS NOT NULL AND r.state = 'done' AND a.finish_reason = 'length'"
        ).fetchone()[0])

    def length_segments(self, request_id: str, fingerprint: str) -> int:
        """Segments of this version of a request cut at the output cap and
        continued (``run.on_length: continue``)."""
        return self.attempts_of_class(request_id, fingerprint, "length")

    def attempts_of_class(self, request_id: str, fingerprint: str, error_class: str) -> int:
        """Attempts of this version of a request that ended with ``error_class``."""
        return int(self.db.execute(
            "SELECT COUNT(*) FROM attempts WHERE request_id=? AND fingerprint=? "
            "AND error_class=?", (request_id, fingerprint, error_class)).fetchone()[0])

    def continued(self) -> list[tuple[str, int]]:
        """(request id, the attempt it went on from) of each finished attempt
        that continued an interrupted answer."""
        return [(r[0], r[1]) for r in self.db.execute(
            "SELECT request_id, continues FROM attempts WHERE status='done' AND mode='continue'")]

    def usage_totals(self) -> sqlite3.Row:
        """Attempts (``n``), their prompt (``p``) and completion (``c``) tokens,
        and how many were estimated (``e``)."""
        return next(self._rows(
            "SELECT COUNT(*) AS n, COALESCE(SUM(u.prompt_tokens), 0) AS p, "
            "COALESCE(SUM(u.completion_tokens), 0) AS c, COALESCE(SUM(u.estimated), 0) AS e "
            "FROM attempts a LEFT JOIN usage u ON u.attempt_id = a.id"))
