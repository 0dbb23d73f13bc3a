"""Ctrl-C and SIGTERM during a run: stop cleanly once, at once the second time.

The first SIGINT/SIGTERM stops launching and records the attempts in flight as
aborted (their text is journaled, so the next run continues them), or abandons
start-up when no engine runs yet. A second one exits at once with the
interrupted exit code: the store is consistent at every commit.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchgen.errors import ExitCode

if TYPE_CHECKING:
    from batchgen.engine.engine import Engine


@dataclass
class Interrupt:
    """Whether a signal came, and the engine it stops (set once one runs)."""

    came: bool = False
    engine: Engine | None = None
    main: asyncio.Task[Any] | None = None  # what a stop before the engine runs cancels

    def trigger(self) -> None:
        """Stop the run cleanly (in its loop's thread): the engine records what
        was in flight; before it runs, start-up is abandoned."""
        self.came = True
        if self.engine is not None:
            self.engine.stop("interrupt")
            self.engine.cancel_all()
        elif self.main is not None:
            self.main.cancel()

    def install(self) -> Callable[[], None]:
        """Handle SIGINT/SIGTERM in the running loop; returns what undoes it."""
        loop = asyncio.get_running_loop()
        if self.main is None:
            self.main = asyncio.current_task()
        hits = 0

        def handler() -> None:
            nonlocal hits
            hits += 1
            if hits > 1:
                os._exit(ExitCode.INTERRUPTED)
            self.trigger()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, handler)

        def restore() -> None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

        return restore
