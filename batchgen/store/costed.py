"""The store's rows that reports and the budget price: attempts, runs, spending.

Cost is computed in SQL by two functions the caller's pricer provides
(:meth:`CostedReads.price_with`): ``bg_cost`` and ``bg_currency``. Prices are
the cost package's to know; the store only calls them, so a query can sum a
request's cost over all its attempts in one pass.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Protocol

from batchgen.store.reads import Reader


class Pricer(Protocol):
    """What the store needs of prices: an attempt's cost and its currency."""

    def cost(self, run_id: int, model: str, prompt: int | None, completion: int | None,
             reasoning: int | None, cached: int | None, mode: str | None = None, *,
             audio_in: int | None = None, audio_out: int | None = None) -> float | None: ...

    def currency(self, run_id: int, model: str) -> str | None: ...


class CostedReads(Reader):
    def price_with(self, pricer: Pricer) -> None:
        """Register ``pricer`` as the SQL functions ``bg_cost`` and ``bg_currency``."""
        def cost(  # noqa: PLR0917 - SQLite passes a row's columns, in order
                run_id: int, model: str, prompt: int | None, completion: int | None,
                reasoning: int | None, cached: int | None, mode: str | None,
                audio_in: int | None, audio_out: int | None) -> float | None:
            return pricer.cost(run_id, model, prompt, completion, reasoning, cached, mode,
                               audio_in=audio_in, audio_out=audio_out)

        self.db.create_function("bg_cost", 9, cost, deterministic=True)
        self.db.create_function("bg_currency", 2, pricer.currency, deterministic=True)

    def latest_status(self) -> str | None:
        """How the latest invocation ended (``runs.status``: done, failed,
        stopped:<why>, running); None before the first."""
        rows = list(self._rows("SELECT status FROM runs ORDER BY id DESC LIMIT 1"))
        return str(rows[0]["status"]) if rows else None

    def runs(self) -> list[sqlite3.Row]:
        """Every invocation: id, started, ended, endpoint, base_url, region."""
        return list(self._rows(
            "SELECT id, started, ended, endpoint, base_url, region FROM runs ORDER BY id"))

    def attempts_with_usage(self) -> Iterator[sqlite3.Row]:
        """Every attempt, with its usage (NULL where none) and its request's tags."""
        yield from self._rows(
            "SELECT a.run_id, a.model, a.mode, a.status, a.error_class, a.started, a.ended, "
            "a.first_token, r.tags, u.prompt_tokens, u.completion_tokens, u.reasoning_tokens, "
            "u.cached_tokens, u.estimated, u.prompt_method, u.completion_method, "
            "u.audio_prompt_tokens, u.audio_completion_tokens "
            "FROM attempts a LEFT JOIN usage u ON u.attempt_id = a.id "
            "LEFT JOIN requests r ON r.id = a.request_id")

    def finished_requests(self) -> Iterator[sqlite3.Row]:
        """Model, tags and state of each request of the job that is done or failed."""
        yield from self._rows(
            "SELECT model, tags, state FROM requests WHERE position IS NOT NULL "
            "AND state IN ('done', 'failed')")

    def spent(self, currency: str) -> float:
        """What every attempt cost, in ``currency`` (needs :meth:`price_with`)."""
        total = 0.0
        for cost, cur in self.db.execute(
            "SELECT bg_cost(a.run_id, a.model, u.prompt_tokens, u.completion_tokens, "
            "u.reasoning_tokens, u.cached_tokens, a.mode, u.audio_prompt_tokens, "
            "u.audio_completion_tokens), bg_currency(a.run_id, a.model) "
            "FROM attempts a JOIN usage u ON u.attempt_id = a.id"):
            if cost is not None and cur == currency:
                total += cost
        return total
