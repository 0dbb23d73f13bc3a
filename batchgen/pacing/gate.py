"""How fast to go: streams in flight, RPM/TPM pacing, back-off on 429.

- :class:`AdaptiveLimit` caps streams in flight. A 429 halves the cap; every
  ``cap`` successes grow it by one, back up to the configured concurrency
  (AIMD, as TCP does).
- :class:`Gate` is what every attempt passes before it starts: a global pause
  (after a 429 or when most recent attempts fail), and RPM / TPM pacing that
  spaces starts evenly (DashScope enforces per-second rates, so a minute's
  quota is never spent in one burst). Without configured limits, a 429 makes
  the gate learn a start rate: 90% of the rate the server just accepted
  (streams opened over the last seconds), grown 1% with every accepted one —
  short requests are limited by rate, not by how many stream at once.

Clock and sleep come in as parameters, so tests run without sleeping.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Awaitable, Callable
from typing import Protocol

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Start a little slower than the limit, so that jitter between our clock and
# the server's window never puts one request too many into a second.
PACING_MARGIN = 1.02
# Learned rate after a 429: this share of the rate the server just accepted...
RATE_CUT = 0.9
# ...grown back by this fraction with every success.
RATE_GROWTH = 0.01


class AdaptiveLimit:
    """At most ``limit`` holders at once; the limit adapts to throttling."""

    def __init__(self, ceiling: int, clock: Clock) -> None:
        self.ceiling = ceiling
        self.limit = ceiling
        self.active = 0
        self._clock = clock
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._successes = 0
        self._last_cut = float("-inf")

    async def acquire(self) -> None:
        while self.active >= self.limit:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                raise
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def _wake(self) -> None:
        free = self.limit - self.active
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1

    def on_success(self) -> None:
        if self.limit >= self.ceiling:
            return
        self._successes += 1
        if self._successes >= self.limit:
            self._successes = 0
            self.limit += 1
            self._wake()

    def on_throttle(self, quiet_for: float = 1.0) -> None:
        """Halve the limit, at most once per ``quiet_for`` seconds of 429s."""
        now = self._clock()
        if now - self._last_cut < quiet_for:
            return
        self._last_cut = now
        self._successes = 0
        self.limit = max(1, self.limit // 2)


class StartGate(Protocol):
    """What every attempt passes before it starts: this process's :class:`Gate`,
    or the :class:`~batchgen.pacing.redis_gate.SharedGate` of all processes of an account."""

    @property
    def learned_rate(self) -> float | None: ...
    @property
    def paused_until(self) -> float: ...
    def now(self) -> float: ...
    async def wait(self, tokens: int = 0) -> None: ...
    def pause_for(self, seconds: float) -> None: ...
    def on_throttle(self) -> None: ...
    def on_accepted(self) -> None: ...
    def settle(self, reserved: int, actual: int) -> None: ...


class Gate:
    """Global pause + RPM/TPM pacing. ``wait(tokens)`` before every start."""

    def __init__(self, *, rpm: float | None, tpm: float | None, clock: Clock,
                 sleep: Sleep) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._sleep = sleep
        self._paused_until = 0.0
        self._next_request = 0.0
        self._next_token = 0.0
        self._next_learned = 0.0
        self.learned_rate: float | None = None  # requests/s, after 429s
        self._successes: collections.deque[float] = collections.deque(maxlen=4096)
        self._last_cut = float("-inf")
        self._lock = asyncio.Lock()

    def pause_for(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def now(self) -> float:
        return self._clock()

    async def wait(self, tokens: int = 0) -> None:
        async with self._lock:  # starts are granted in arrival order
            while True:
                now = self._clock()
                start = max(now, self._paused_until)
                if self.rpm:
                    start = max(start, self._next_request)
                if self.tpm:
                    start = max(start, self._next_token)
                if self.learned_rate:
                    start = max(start, self._next_learned)
                if start <= now:
                    break
                await self._sleep(start - now)
            if self.learned_rate:
                self._next_learned = max(self._next_learned, now) + 1.0 / self.learned_rate
            if self.rpm:
                self._next_request = max(self._next_request, now) + 60.0 * PACING_MARGIN / self.rpm
            if self.tpm and tokens:
                self._next_token = (
                    max(self._next_token, now) + tokens * 60.0 * PACING_MARGIN / self.tpm
                )

    def on_throttle(self) -> None:
        """A 429: start no faster than the rate the server just accepted."""
        now = self._clock()
        if now - self._last_cut < 1.0:
            return
        self._last_cut = now
        recent = [t for t in self._successes if t > now - 2.0]
        if recent:
            accepted = len(recent) / max(1.0, now - recent[0])
        else:
            accepted = (self.learned_rate or 2.0) / 2
        self.learned_rate = max(0.1, accepted * RATE_CUT)

    def on_accepted(self) -> None:
        """The server accepted a request (its stream opened)."""
        self._successes.append(self._clock())
        if self.learned_rate is not None:
            self.learned_rate *= 1 + RATE_GROWTH

    def settle(self, reserved: int, actual: int) -> None:
        """Give back the TPM reserved beyond what a request really used."""
        if self.tpm and actual < reserved:
            refund = (reserved - actual) * 60.0 / self.tpm
            self._next_token = max(self._clock(), self._next_token - refund)


def parse_duration(text: str) -> float | None:
    """'1s', '6m0s', '20ms', '0.5' -> seconds (OpenAI-style x-ratelimit-reset-*)."""
    text = text.strip()
    try:
        value = float(text)
        return value if 0 <= value < float("inf") else None
    except ValueError:
        pass
    if not re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+", text):
        return None  # "1.2.3s" and other junk: ignored, never fatal to a paid answer
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        total += float(number) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    return total if total > 0 else None


def ratelimit_pause(headers: dict[str, str]) -> float | None:
    """Seconds to hold starts when ``x-ratelimit-remaining-*`` says none are left."""
    pause = None
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        if remaining is not None and remaining.strip() in ("0", "0.0") and reset:
            seconds = parse_duration(reset)
            if seconds is not None:
                pause = max(pause or 0.0, min(seconds, 300.0))
    return pause


class Breaker:
    """Retry budget: when most recent attempts fail transiently, hold launches.

    After ``window`` outcomes of which at least ``threshold`` failed, launches
    pause for ``cooldown`` seconds, doubling while failures go on (to
    ``max_cooldown``), and back to the start after a success.
    """

    def __init__(self, gate: StartGate, *, window: int = 20, threshold: float = 0.8,
                 cooldown: float = 5.0, max_cooldown: float = 60.0) -> None:
        self.gate = gate
        self.window: collections.deque[bool] = collections.deque(maxlen=window)
        self.threshold = threshold
        self.base = cooldown
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.trips = 0

    def record(self, ok: bool) -> None:
        if ok:
            self.window.append(ok)
            self.cooldown = self.base
            return
        if self.gate.now() < self.gate.paused_until:
            return  # the burst that tripped the breaker is still landing
        self.window.append(ok)
        if len(self.window) < self.window.maxlen:  # type: ignore[operator]
            return
        failures = self.window.count(False)
        if failures >= self.threshold * len(self.window):
            self.trips += 1
            self.gate.pause_for(self.cooldown)
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            self.window.clear()
