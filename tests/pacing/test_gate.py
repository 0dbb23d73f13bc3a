"""Rate limits and adaptive concurrency, on a fake clock."""

from __future__ import annotations

import asyncio
import itertools

from batchgen.pacing.gate import PACING_MARGIN, AdaptiveLimit, Gate, parse_duration, ratelimit_pause
from tests.helpers import FakeTime


def test_rpm_spaces_starts_evenly_instead_of_bursting() -> None:
    time = FakeTime(0.0)
    gate = Gate(rpm=120, tpm=None, clock=time.clock, sleep=time.sleep)
    starts = []

    async def go() -> None:
        for _ in range(10):
            await gate.wait()
            starts.append(time.now)

    asyncio.run(go())
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(abs(g - 0.5 * PACING_MARGIN) < 1e-9 for g in gaps)
    assert starts[0] == 0.0


def test_tpm_paces_by_tokens_and_refunds_unused_reservation() -> None:
    time = FakeTime(0.0)
    gate = Gate(rpm=None, tpm=6000, clock=time.clock, sleep=time.sleep)  # 100 tokens / s

    async def go() -> list[float]:
        out = []
        for _ in range(3):
            await gate.wait(200)
            out.append(time.now)
        return out

    starts = asyncio.run(go())
    assert [round(s, 3) for s in starts] == [0.0, round(2 * PACING_MARGIN, 3),
                                            round(4 * PACING_MARGIN, 3)]
    gate.settle(reserved=200, actual=50)  # the last request used far less
    asyncio.run(gate.wait(0))
    assert time.now < starts[-1] + 2 * PACING_MARGIN


def test_pause_holds_every_start() -> None:
    time = FakeTime(100.0)
    gate = Gate(rpm=None, tpm=None, clock=time.clock, sleep=time.sleep)
    gate.pause_for(7)
    asyncio.run(gate.wait())
    assert time.now >= 107


def test_aimd_halves_on_throttle_and_grows_back_by_one() -> None:
    time = FakeTime(0.0)
    limit = AdaptiveLimit(16, time.clock)
    limit.on_throttle()
    assert limit.limit == 8
    limit.on_throttle()  # a burst of 429s from one episode cuts once
    assert limit.limit == 8
    time.now += 2
    limit.on_throttle()
    assert limit.limit == 4
    for _ in range(4):
        limit.on_success()
    assert limit.limit == 5
    for _ in range(1000):
        limit.on_success()
    assert limit.limit == 16


def test_adaptive_limit_blocks_beyond_the_limit() -> None:
    async def go() -> int:
        limit = AdaptiveLimit(2, lambda: 0.0)
        active = peak = 0

        async def worker() -> None:
            nonlocal active, peak
            await limit.acquire()
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
            limit.release()

        await asyncio.gather(*(worker() for _ in range(10)))
        return peak

    assert asyncio.run(go()) == 2


def test_ratelimit_headers() -> None:
    assert parse_duration("6m0s") == 360
    assert parse_duration("20ms") == 0.02
    assert parse_duration("1.5") == 1.5
    assert ratelimit_pause({"x-ratelimit-remaining-requests": "0",
                            "x-ratelimit-reset-requests": "2s"}) == 2
    assert ratelimit_pause({"x-ratelimit-remaining-requests": "5",
                            "x-ratelimit-reset-requests": "2s"}) is None
