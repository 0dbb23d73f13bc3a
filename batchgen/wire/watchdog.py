"""Idle and overlong attempts, judged by the time this process really ran.

A transport's read timeout counts wall time: after a SIGSTOP or a laptop
suspend longer than the timeout, every stream in flight times out at once,
although its bytes are waiting in the socket — and each is bought again.
Instead, one ticker per run (:meth:`Watchdog.run`) ages every watched
attempt by the time that passed between two of its ticks, but by no more
than a tick's worth when the ticks came late: a late tick means the process
did not run, and a stream that could not be read was not idle. A read that
arrives after such a pause resets the attempt's idle time as usual.

- ``idle_timeout``: no byte at all for that long (keep-alive comments count
  as bytes) ends the attempt as ``idle_timeout``;
- ``max_duration`` (optional): an attempt older than that ends as
  ``max_duration`` — for servers that keep a stream alive forever without
  producing anything.

Ending means cancelling the attempt's task with :attr:`Watch.fired` set;
:func:`batchgen.wire.stream.stream_attempt` turns that into a TransientError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Watch:
    """One watched attempt. ``seen`` is set by every read (cheap: no clock)."""

    __slots__ = ("age", "fired", "idle", "seen", "task")

    def __init__(self, task: asyncio.Task[object] | None) -> None:
        self.task = task
        self.seen = False
        self.idle = 0.0
        self.age = 0.0
        self.fired: str | None = None


class Watchdog:
    def __init__(self, *, idle_timeout: float, max_duration: float | None = None,
                 tick: float = 0.5, clock: Callable[[], float] | None = None) -> None:
        self.idle_timeout = idle_timeout
        self.max_duration = max_duration
        self.tick = min(tick, idle_timeout / 4)
        self.clock = clock
        self.watches: set[Watch] = set()
        self.stalls = 0  # ticks that came late: the process did not run

    def watch(self) -> Watch:
        """Watch the attempt the current task is about to make."""
        watch = Watch(asyncio.current_task())
        self.watches.add(watch)
        return watch

    def release(self, watch: Watch) -> None:
        self.watches.discard(watch)

    def advance(self, elapsed: float) -> None:
        """Age every watch by ``elapsed`` seconds of running time; fire the due ones."""
        ran = elapsed
        if elapsed > 3 * self.tick:  # late: the process was stopped (or the loop blocked)
            self.stalls += 1
            ran = self.tick
        for watch in list(self.watches):
            if watch.fired:
                continue
            watch.age += ran
            if watch.seen:
                watch.seen = False
                watch.idle = 0.0
            else:
                watch.idle += ran
            if watch.idle >= self.idle_timeout:
                self._fire(watch, "idle_timeout")
            elif self.max_duration is not None and watch.age >= self.max_duration:
                self._fire(watch, "max_duration")

    def _fire(self, watch: Watch, reason: str) -> None:
        watch.fired = reason
        if watch.task is not None and not watch.task.done():
            watch.task.cancel()

    async def run(self) -> None:
        """Tick until cancelled."""
        loop = asyncio.get_running_loop()
        clock = self.clock or loop.time
        last = clock()
        while True:
            await asyncio.sleep(self.tick)
            now = clock()
            self.advance(now - last)
            last = now
