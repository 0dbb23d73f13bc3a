"""batchgen.pacing.outage: what is an outage, what ends it, how probes are paced."""

from __future__ import annotations

import asyncio

import pytest

from batchgen.errors import RequestFatalError, RunFatalError, TransientError
from batchgen.pacing.outage import Outage, OutageTimeout
from tests.helpers import FakeTime


def refused() -> TransientError:
    return TransientError("ClientConnectorError: Connect call failed: Connection refused",
                          error_class="connection")


def http(status: int) -> TransientError:
    return TransientError(f"HTTP {status}", error_class="server_error", http_status=status)


def test_what_starts_an_outage_and_what_does_not() -> None:
    outage = Outage(clock=FakeTime().clock)
    assert not outage.failed(RequestFatalError("bad", http_status=400),
                             answered=False, probe=False, request="a")
    assert not outage.failed(RunFatalError("key", http_status=401), answered=False,
                             probe=False, request="a")
    # a connection cut after the answer began is the stream's, not the endpoint's
    assert not outage.failed(refused(), answered=True, probe=False, request="a")
    # one request's own run of 503s is that request's
    assert not any(outage.failed(http(503), answered=False, probe=False, request="a")
                   for _ in range(5))
    assert outage.state() is None
    assert outage.failed(refused(), answered=False, probe=False, request="b")
    state = outage.state()
    assert state is not None and state.reason == "connection refused"


def test_server_errors_for_several_requests_are_a_storm_and_an_answer_ends_it() -> None:
    outage = Outage(clock=FakeTime().clock)
    assert not outage.failed(http(503), answered=False, probe=False, request="a")
    assert not outage.failed(http(502), answered=False, probe=False, request="b")
    assert outage.failed(http(503), answered=False, probe=False, request="a")
    assert "HTTP 503 from every answer" in outage.describe()
    # a 400 is an answer: the endpoint is up, and the 400 is the request's own
    assert not outage.failed(RequestFatalError("bad", http_status=400), answered=False,
                             probe=True, request="c")
    assert not outage.active


def test_no_response_for_several_requests_is_an_outage_and_one_requests_is_its_own() -> None:
    """An endpoint that takes connections and answers none: every attempt ends
    at run.idle_timeout without a response. That is the endpoint's state, as a
    503 storm is; one request's own silence, or a stream that stalls after its
    headers, stays the request's."""
    def silent() -> TransientError:
        return TransientError("no data arrived for the idle timeout",
                              error_class="idle_timeout")

    outage = Outage(clock=FakeTime().clock)
    assert not any(outage.failed(silent(), answered=False, probe=False, request="a")
                   for _ in range(4))
    assert not any(outage.failed(silent(), answered=True, probe=False, request=r)
                   for r in "bcd")
    assert outage.state() is None
    assert not outage.failed(silent(), answered=False, probe=False, request="b")
    assert not outage.failed(silent(), answered=False, probe=False, request="c")
    assert outage.failed(silent(), answered=False, probe=False, request="b")
    assert "no response within run.idle_timeout" in outage.describe()


def test_the_wait_says_when_the_next_probe_goes_or_that_one_is_going() -> None:
    time = FakeTime()
    outage = Outage(clock=time.clock, sleep=time.sleep, timeout=100)
    outage.failed(refused(), answered=False, probe=False, request="a")
    assert outage.describe().endswith("; 0 probes, next try in 1 s")

    async def probe() -> None:
        assert await outage.admit()

    asyncio.run(probe())
    # while the probe is out there is no next try to count down to (it read "in 0 s")
    assert outage.describe().endswith("; 1 probe, trying now")
    outage.failed(refused(), answered=False, probe=True, request="a")
    outage.release()
    assert outage.describe().endswith("; 1 probe, next try in 2 s")


def test_status_says_a_probe_is_going_once_its_time_has_come() -> None:
    from batchgen.outputs.status import outage_text

    kept = '{"since": 100.0, "reason": "connection refused", "probes": 2, "next": 130.0}'
    assert str(outage_text(kept, running=True, now=110.0)).endswith("2 probes, next try in 20 s")
    assert str(outage_text(kept, running=True, now=131.0)).endswith("2 probes, trying now")


def test_one_probe_at_a_time_1s_doubling_then_the_timeout() -> None:
    time = FakeTime()
    outage = Outage(clock=time.clock, sleep=time.sleep, timeout=100)
    outage.failed(refused(), answered=False, probe=False, request="a")

    async def main() -> list[float]:
        probes_at = []
        with pytest.raises(OutageTimeout,
                           match=r"connection refused; 6 probes in 100 s$"):  # no next try
            while True:
                assert await outage.admit()
                probes_at.append(time.now)
                outage.failed(refused(), answered=False, probe=True, request="a")
                outage.release()
        return probes_at

    start = time.now
    at = [round(t - start) for t in asyncio.run(main())]
    assert at == [1, 3, 7, 15, 31, 63], at  # 1 s, then 2, 4, 8, 16, 32 apart
    assert time.now - start == 100  # stopped at the timeout, not a probe later


def test_a_probe_that_succeeds_lets_everyone_go() -> None:
    time = FakeTime()
    outage = Outage(clock=time.clock, sleep=time.sleep)
    outage.failed(refused(), answered=False, probe=False, request="a")

    async def main() -> list[bool]:
        first = await outage.admit()
        waiting = asyncio.ensure_future(outage.admit())
        await asyncio.sleep(0)
        assert not waiting.done()  # held while the probe is out
        outage.answered()
        outage.release()
        return [first, await waiting]

    assert asyncio.run(main()) == [True, False]
    assert not outage.active
