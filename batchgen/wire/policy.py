"""The per-request retry policy: tenacity around the *whole* consumption of a
stream (a ``@retry`` on an async generator would not see errors raised while
iterating), with :func:`~batchgen.wire.retry.backoff`'s waits.

The engine sends a request's first attempt without it and imports this module
(and tenacity, ~10 ms of CPU at start-up) when an attempt first fails
transiently: most runs never retry.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, AttemptManager, RetryCallState, retry_if_exception_type

from batchgen.errors import AttemptError, TransientError
from batchgen.wire.retry import THROTTLE_FACTOR, backoff

# stateless, and a cycle of its own (it holds a bound method of itself): one for all
_RETRY_TRANSIENT = retry_if_exception_type(TransientError)


class _Policy(AsyncRetrying):
    """tenacity's AsyncRetrying, letting go of itself once a request's attempts end.

    The retrying object and its call state refer to each other (and, through a
    thread-local, to the object's own bound methods), so each request left ~40
    objects that only Python's cycle collector frees: over 2,000 short requests
    it ran ~500 times and took ~9% of the run's CPU, and the garbage waiting
    for it grew the heap with the job. When ``__anext__`` ends the loop — the
    answer, the last error, a stop, a cancellation — nothing reads the object
    again, so dropping its attributes breaks the cycles and reference counting
    frees the rest at once.
    """

    async def __anext__(self) -> AttemptManager:
        try:
            return await super().__anext__()
        except BaseException:
            self.__dict__.clear()
            raise


def policy(
    max_attempts: int,
    *,
    sleep: Callable[[float], Awaitable[None]],
    rng: random.Random | None = None,
) -> AsyncRetrying:
    """The per-request policy: retry transient errors up to ``max_attempts`` tries.

    A 429 says "not now", not "this request is broken": throttled attempts
    count against a separate, larger allowance (``THROTTLE_FACTOR`` ×), so a
    request does not fail for good because its neighbours used up the quota.
    The global pause and learned start rate (pacing/gate.py) keep 429s rare.
    """
    generator = rng or random.Random()
    spent = {"throttled": 0, "other": 0}

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AttemptError) and exc.during_outage:
            return 0.0  # the outage's probes pace it (pacing.outage)
        retry_after = exc.retry_after if isinstance(exc, AttemptError) else None
        return backoff(state.attempt_number, retry_after, generator)

    def stop(state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AttemptError) and exc.during_outage:
            return False  # the endpoint's failure, not the request's: never counted
        if isinstance(exc, AttemptError) and exc.error_class == "rate_limited":
            spent["throttled"] += 1
            return spent["throttled"] >= max_attempts * THROTTLE_FACTOR
        spent["other"] += 1
        return spent["other"] >= max_attempts

    return _Policy(
        stop=stop,
        wait=wait,
        retry=_RETRY_TRANSIENT,
        sleep=sleep,
        reraise=True,
    )
