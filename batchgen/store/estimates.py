"""The store's side of the ledger: the rows that calibrate estimates and the
estimated usage to refine (see :mod:`batchgen.tokens.ledger`).

``calibration`` holds, per model and direction, the running sums of a
least-squares fit (samples, Σx, Σy, Σx², Σxy) of reported against estimated
tokens.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from batchgen.store.reads import Reader

CalibrationRow = tuple[str, str, int, float, float, float, float]


class EstimateReads(Reader):
    def has_estimated_usage(self) -> bool:
        return self.db.execute(
            "SELECT 1 FROM usage WHERE estimated = 1 LIMIT 1").fetchone() is not None

    def finished_models(self) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT model FROM attempts WHERE status = 'done'")]

    def reported_samples(self, model: str, limit: int) -> Iterator[sqlite3.Row]:
        """The newest fresh, finished attempts of ``model`` with reported usage:
        body, content, reasoning and their tokens."""
        yield from self._rows(
            "SELECT r.body, s.content, s.reasoning, u.prompt_tokens, u.completion_tokens, "
            "u.reasoning_tokens, u.cached_tokens FROM attempts a "
            "JOIN requests r ON r.id = a.request_id "
            "JOIN usage u ON u.attempt_id = a.id "
            "LEFT JOIN segments s ON s.attempt_id = a.id AND s.seq = 0 "
            "WHERE a.status = 'done' AND a.mode = 'fresh' AND a.model = ? "
            "AND u.estimated = 0 AND COALESCE(u.prompt_method, 'exact') = 'exact' "
            "ORDER BY a.id DESC LIMIT ?", (model, limit))

    def usage_to_refine(self) -> list[sqlite3.Row]:
        """Attempts whose usage is estimated or derived, with their request's body."""
        return list(self._rows(
            "SELECT a.id, a.request_id, a.fingerprint, a.model, a.mode, a.continues, a.status, "
            "a.prefix_chars, r.body, u.prompt_tokens, u.completion_tokens, u.total_tokens, "
            "u.reasoning_tokens, u.cached_tokens, u.raw, u.prompt_method, u.completion_method "
            "FROM attempts a JOIN usage u ON u.attempt_id = a.id "
            "JOIN requests r ON r.id = a.request_id "
            "WHERE u.estimated = 1 OR u.prompt_method = 'derived'"))

    def reported_prompt(self, request_id: str, fingerprint: str, mode: str, other_than: int,
                        continues: int | None) -> int | None:
        """Prompt tokens the server reported for another attempt of the same
        request that sent the same messages."""
        row = self.db.execute(
            "SELECT u.prompt_tokens FROM attempts a JOIN usage u ON u.attempt_id = a.id "
            "WHERE a.request_id = ? AND a.fingerprint = ? AND a.mode = ? AND a.id != ? "
            "AND a.continues IS ? AND COALESCE(u.prompt_method, "
            "CASE u.estimated WHEN 0 THEN 'exact' ELSE 'static' END) = 'exact' "
            "ORDER BY a.id DESC LIMIT 1",
            (request_id, fingerprint, mode, other_than, continues)).fetchone()
        return None if row is None else int(row[0])

    def reported_fresh_prompt(self, request_id: str, fingerprint: str) -> int | None:
        """Prompt tokens reported for a fresh attempt of this version of a request."""
        row = self.db.execute(
            "SELECT u.prompt_tokens FROM attempts a JOIN usage u ON u.attempt_id = a.id "
            "WHERE a.request_id = ? AND a.fingerprint = ? AND a.mode = 'fresh' "
            "AND u.estimated = 0 ORDER BY a.id DESC LIMIT 1",
            (request_id, fingerprint)).fetchone()
        return None if row is None else int(row[0])

    def calibration_rows(self) -> list[CalibrationRow]:
        return [(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in self.db.execute(
            "SELECT model, direction, samples, sx, sy, sxx, sxy FROM calibration")]
