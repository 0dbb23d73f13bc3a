"""What the engine is given (its side effects, passed in) and what it gives back."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchgen.engine.budget import BudgetGuard
from batchgen.engine.progress import Progress
from batchgen.errors import RunFatalError, StorageError
from batchgen.store.runstore import RunStore
from batchgen.tokens.estimator import Estimator
from batchgen.wire.retry import Redact


@dataclass
class Outcome:
    """What the engine did, for the summary and the exit code."""

    done: int = 0
    failed: int = 0
    fatal: RunFatalError | None = None
    storage: StorageError | None = None
    # budget | interrupt | fatal | storage | submitted | unavailable
    stopped_by: str | None = None
    notes: list[str] = field(default_factory=list)  # to tell the user (batches)


@dataclass
class BatchOutcome:
    """What a ``--via batch`` phase did (:mod:`batchgen.engine.via_batch`)."""

    done: int = 0
    failed: int = 0
    submitted: bool = False  # batches still run at the provider (exit 5)
    released: list[str] = field(default_factory=list)  # to stream (--fallback stream)
    fatal: RunFatalError | None = None
    lines: list[str] = field(default_factory=list)  # what to tell the user
    over_budget: int = 0  # pending requests the budget left out of the last new batches
    over_budget_why: str | None = None  # the first of them, in figures
    unavailable: str | None = None  # the outage that outlasted run.outage_timeout


@dataclass
class EngineDeps:
    """Side effects, passed in: tests give a fake clock, sleep and client."""

    store: RunStore
    client: Any
    run_dir: Path
    run_id: int
    progress: Progress
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    redact: Redact
    rng: random.Random
    flush_interval: float = 0.1  # seconds between commits of streamed text
    budget: BudgetGuard | None = None
    estimator: Estimator = field(default_factory=Estimator)
