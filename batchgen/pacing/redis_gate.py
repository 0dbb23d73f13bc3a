"""Rate limits shared through Redis by every process that uses one account.

Shards on many machines (a Kubernetes Indexed Job, a Slurm array) draw on ONE
provider account: its RPM/TPM limits, the pause after a 429 and the start
rate it accepts hold for all of them together. ``run.limits_url:
redis://HOST:PORT/DB`` (or ``BATCHGEN_LIMITS_URL``) keeps them in Redis, with
the same semantics as one process's :class:`~batchgen.pacing.gate.Gate`:

- **RPM / TPM**: starts are spaced evenly across all processes, each taking
  the next free slot of a shared schedule ("theoretical arrival time",
  GCRA): one start per ``60/RPM`` seconds, ``tokens × 60/TPM`` seconds of the
  token schedule per request, unused tokens given back when the request ends.
  Model Studio counts per second; evenly spaced starts keep every second under
  its share even when requests reach the server a little early or late.
  (Window counters such as the ``limits`` library's grant a second's quota in
  a burst at the start of each window; arrival jitter then puts one request
  too many into the server's window: 4.4% of requests saw a 429 in our test
  of three shards at RPM 600, against none here.)
- **the pause after a 429** and **the learned start rate** (90% of the starts
  the account accepted in the last two seconds, growing 2% a second until the
  next 429): plain keys.

The schedule is changed with redis-py's optimistic transactions (``WATCH`` /
``MULTI`` / ``EXEC``, retried when another process got there first): no
server-side script of ours. The account's identity in Redis is a hash of the
base URL and the API key, never the key. If Redis is unreachable at start the
run stops before anything is sent (exit 2); if it goes away mid-run, starts
wait and reconnect with back-off, saying what they wait for, and nothing else
stops. Only this module imports ``redis``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from batchgen.errors import UsageError

log = logging.getLogger(__name__)

PREFIX = "batchgen"
REFRESH = 0.25  # seconds between reads of the shared pause and learned rate
BUCKETS = 4  # accepted starts are counted in quarter seconds
GROWTH = 0.02  # the learned rate grows this fraction a second after a 429
BACKOFF_CAP = 10.0
TTL_MS = 600_000  # keys of an account nobody uses expire after ten minutes
# Starts a little slower than the limit: requests of several processes reach
# the server with more spread (a new process's first connection) than one's.
SHARED_MARGIN = 1.08


def account_id(base_url: str, api_key: str) -> str:
    """Who shares limits: one account on one endpoint (a hash; never the key)."""
    return hashlib.sha256(f"{base_url.rstrip('/')}\n{api_key}".encode()).hexdigest()[:24]


def address(url: str) -> str:
    """The Redis address, for messages (never a password)."""
    parts = urlsplit(url)
    return f"redis://{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or ''}"


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise UsageError(f"run.limits_url {address(url)!r} is not a redis://HOST:PORT/DB URL")
    return url


class SharedGate:
    """The :class:`~batchgen.pacing.gate.Gate` interface, with its state in Redis."""

    def __init__(self, url: str, account: str, *, rpm: float | None, tpm: float | None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        import redis.asyncio

        self.url = check_url(url)
        self.account = account
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._sleep = sleep
        self._redis = redis.asyncio.Redis.from_url(url, socket_timeout=5,
                                                   socket_connect_timeout=5)
        self._paused_until = 0.0
        self._base: float | None = None  # the learned rate when set, and when
        self._base_at = 0.0
        self._fresh_until = 0.0
        self._down_since: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------ the Gate API

    @property
    def paused_until(self) -> float:
        return self._paused_until

    @property
    def learned_rate(self) -> float | None:
        if self._base is None:
            return None
        return self._base * (1 + GROWTH * max(0.0, time.time() - self._base_at))

    def now(self) -> float:
        return self._clock()

    async def check(self) -> None:
        """Redis answers, or the run stops before anything is sent."""
        try:
            await self._redis.ping()
        except Exception as exc:  # every client error: unreachable, refused, auth
            raise UsageError(
                f"cannot reach Redis at {address(self.url)} (run.limits_url / "
                f"BATCHGEN_LIMITS_URL) to share rate limits: {type(exc).__name__}: {exc}; "
                "start it, or run without shared limits; nothing was sent") from None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()

    async def wait(self, tokens: int = 0) -> None:
        from redis.exceptions import RedisError

        failures = 0
        while True:
            try:
                await self._refresh()
                now = time.time()
                if self._paused_until > now:
                    await self._sleep(self._paused_until - now)
                    continue
                delay = await self._take(tokens)
                if self._down_since is not None:
                    log.warning("Redis at %s answers again after %.0f s; starts go on",
                                address(self.url), time.monotonic() - self._down_since)
                    self._down_since = None
                if delay > 0:
                    await self._sleep(delay)
                return
            except (RedisError, OSError) as exc:  # Redis gone: wait for it, never give up
                failures += 1
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("waiting for Redis at %s (the shared rate limits are there) "
                                "before starting more requests: %s", address(self.url), exc)
                await self._sleep(min(BACKOFF_CAP, 0.25 * 2 ** min(failures, 6))
                                  * random.uniform(0.8, 1.2))  # jitter between processes

    def pause_for(self, seconds: float) -> None:
        until = time.time() + seconds
        if until > self._paused_until:
            self._paused_until = until
            self._spawn(self._share_pause(until))

    def on_accepted(self) -> None:
        self._spawn(self._count_accepted())

    def on_throttle(self) -> None:
        self._spawn(self._learn())

    def settle(self, reserved: int, actual: int) -> None:
        """Give back the token schedule a request reserved but did not use."""
        if self.tpm and actual < reserved:
            refund = (reserved - actual) * 60.0 / self.tpm
            self._spawn(self._schedule("tokens", -refund, floor=True))

    # ------------------------------------------------------------ internals

    def _key(self, name: str) -> str:
        return f"{PREFIX}:{self.account}:{name}"

    def _spawn(self, coro: Awaitable[Any]) -> None:
        async def quietly() -> None:
            try:
                await coro
            except Exception as exc:  # a background write lost: the next one catches up
                log.debug("writing the shared limits failed: %s", exc)

        task = asyncio.get_running_loop().create_task(quietly())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self) -> None:
        if time.monotonic() < self._fresh_until:
            return
        pause, learned = await self._redis.mget(self._key("pause"), self._key("learned"))
        if pause is not None:
            self._paused_until = max(self._paused_until, float(pause))
        if learned is not None:
            text = learned.decode() if isinstance(learned, bytes) else str(learned)
            base, _, at = text.partition("@")
            self._base, self._base_at = float(base), float(at)
        self._fresh_until = time.monotonic() + REFRESH

    async def _take(self, tokens: int) -> float:
        """Reserve this start's slot on every shared schedule; seconds to wait for it."""
        wait = 0.0
        if self.rpm:
            wait = max(wait, await self._schedule("requests", 60.0 * SHARED_MARGIN / self.rpm))
        learned = self.learned_rate
        if learned:
            wait = max(wait, await self._schedule("learned", 1.0 / learned))
        if self.tpm and tokens:
            wait = max(wait, await self._schedule(
                "tokens", tokens * 60.0 * SHARED_MARGIN / self.tpm))
        return wait

    async def _schedule(self, name: str, step: float, floor: bool = False) -> float:
        """Move a shared schedule on by ``step`` seconds (GCRA): returns how long
        until the slot taken starts. ``floor``: a refund never moves it before now."""
        from redis.exceptions import WatchError

        key = self._key(f"schedule:{name}")
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    now = time.time()
                    slot = max(float(raw) if raw is not None else 0.0, now)
                    nxt = max(now, slot + step) if floor else slot + step
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it bare
                    pipe.set(key, repr(nxt), px=TTL_MS)
                    await pipe.execute()
                    return slot - now
                except WatchError:
                    continue  # another process moved it first: read it again

    async def _share_pause(self, until: float) -> None:
        key = self._key("pause")
        current = await self._redis.get(key)
        if current is None or float(current) < until:
            await self._redis.set(key, repr(until), px=int((until - time.time()) * 1000) + 1000)

    async def _count_accepted(self) -> None:
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(self._key(f"accepted:{int(now * BUCKETS)}"))
            pipe.expire(self._key(f"accepted:{int(now * BUCKETS)}"), 10)
            pipe.set(self._key("accepted:first"), repr(now), nx=True, ex=600)
            await pipe.execute()

    async def _learn(self) -> None:
        """A 429: start no faster, all together, than the account just accepted
        (over the last two seconds, or since the first start if that is later)."""
        now = time.time()
        if now - self._base_at < 1.0:
            return  # one cut per second of 429s
        bucket = int(now * BUCKETS)
        keys = [self._key(f"accepted:{bucket - i}") for i in range(2 * BUCKETS)]
        first, *counts = await self._redis.mget(self._key("accepted:first"), *keys)
        span = min(2.0, now - float(first)) if first is not None else 2.0
        accepted = sum(int(c) for c in counts if c is not None) / max(span, 0.25)
        base = max(0.1, 0.9 * accepted if accepted else (self.learned_rate or 2.0) / 2)
        self._base, self._base_at = base, now
        await self._redis.set(self._key("learned"), f"{base!r}@{now!r}", ex=600)
