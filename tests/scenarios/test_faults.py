"""The fault matrix: every way a real API fails, and what batchgen does about it.

Each case scripts the fake server per attempt and asserts the outcome: done
after the right number of attempts, failed with the right class, or the run
stopped with exit 4 — and no retry for what must not be retried. Sleep is
injected, so back-offs are recorded instead of slept.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from time import monotonic

import pytest

from batchgen import load_job, run_job
from batchgen.engine.runner import RunOptions
from batchgen.testing.fakeserver import FakeServer
from batchgen.wire.retry import BACKOFF_CAP, backoff, retry_after_seconds
from tests.helpers import FakeTime, read_results, write_job


@dataclass
class Ran:
    exit_code: int
    state: str
    attempts: list[tuple[str, str | None, int | None, str | None]]
    sleeps: list[float]
    fake_calls: int
    run_dir: Path


def run_one(tmp_path: Path, fake: FakeServer, faults: str, *, idle: float = 120.0,
            max_attempts: int = 6, extra_prompts: int = 0) -> Ran:
    time = FakeTime()
    prompts = [{"id": "x", "prompt": f"[[len=12]] [[faults={faults}]] case"}]
    prompts += [{"id": f"other{i}", "prompt": f"[[len=5]] other {i}"} for i in range(extra_prompts)]
    job = write_job(tmp_path / "job.yaml", fake, prompts,
                    run={"idle_timeout": idle, "max_attempts": max_attempts, "concurrency": 1})
    summary = run_job(load_job(job), RunOptions(sleep=time.sleep, clock=time.clock,
                                                rng=random.Random(1), flush_interval=0.05))
    run_dir = tmp_path / "out" / "t"
    db = sqlite3.connect(run_dir / "run.db")
    state = db.execute("SELECT state FROM requests WHERE id='x'").fetchone()[0]
    attempts = db.execute(
        "SELECT status, error_class, http_status, error_code FROM attempts "
        "WHERE request_id='x' ORDER BY n").fetchall()
    return Ran(summary.exit_code, state, attempts, time.sleeps, fake.ledger.requests, run_dir)


# (faults, final state, attempts made, first attempt's error class)
RETRIED = [
    ("429", "done", 2, "rate_limited"),
    ("429:ra=3", "done", 2, "rate_limited"),
    ("429:date=5", "done", 2, "rate_limited"),
    ("429:ms=1500", "done", 2, "rate_limited"),
    ("408", "done", 2, "timeout"),
    ("409", "done", 2, "conflict"),
    ("500", "done", 2, "server_error"),
    ("502", "done", 2, "server_error"),
    ("503", "done", 2, "server_error"),
    ("504", "done", 2, "server_error"),
    ("529", "done", 2, "server_error"),
    ("reset", "done", 2, "connection"),
    ("cut@4", "done", 2, "connection"),
    ("badjson@3", "done", 2, "malformed_chunk"),
    ("errevent@3", "done", 2, "error_event"),
    ("500,502,503,ok", "done", 4, "server_error"),
]


@pytest.mark.parametrize(("faults", "state", "n", "first"), RETRIED, ids=[r[0] for r in RETRIED])
def test_transient_faults_are_retried(tmp_path: Path, fake: FakeServer, faults: str, state: str,
                                      n: int, first: str) -> None:
    ran = run_one(tmp_path, fake, faults)
    assert ran.state == state and ran.exit_code == 0
    assert len(ran.attempts) == n
    assert ran.attempts[0][1] == first
    assert ran.attempts[-1][0] == "done"
    assert ran.fake_calls == n
    result = read_results(ran.run_dir)[0]
    assert result["attempts"] == n and "estimated" not in result["usage"]


def test_retry_after_is_honoured(tmp_path: Path, fake: FakeServer) -> None:
    ran = run_one(tmp_path, fake, "429:ra=7")
    assert any(7.0 <= s <= 8.0 for s in ran.sleeps), ran.sleeps
    (tmp_path / "ms").mkdir()
    ran_ms = run_one(tmp_path / "ms", fake, "429:ms=2500")
    assert any(2.5 <= s <= 3.0 for s in ran_ms.sleeps), ran_ms.sleeps


# (faults, error class, http status) — failed after exactly one attempt
FATAL_FOR_REQUEST = [
    ("400", "http_400", 400),
    ("404", "http_404", 404),
    ("413", "http_413", 413),
    ("501", "http_501", 501),  # a server that does not do this (was retried as a 5xx)
    ("505", "http_505", 505),
    ("inspect", "moderation", 400),
    ("inspect@3", "moderation", None),
]


@pytest.mark.parametrize(("faults", "error_class", "status"), FATAL_FOR_REQUEST,
                         ids=[r[0] for r in FATAL_FOR_REQUEST])
def test_request_fatal_faults_are_not_retried(tmp_path: Path, fake: FakeServer, faults: str,
                                               error_class: str, status: int | None) -> None:
    ran = run_one(tmp_path, fake, faults, extra_prompts=2)
    assert ran.state == "failed" and ran.exit_code == 1
    assert len(ran.attempts) == 1 and ran.fake_calls == 3  # the others still ran
    assert ran.attempts[0][1] == error_class and ran.attempts[0][2] == status
    assert [r["id"] for r in read_results(ran.run_dir)] == ["other0", "other1"]
    assert "x" in (ran.run_dir / "failed.jsonl").read_text()


RUN_FATAL = [("401", "auth"), ("403", "access_denied"), ("arrearage", "arrearage"),
             ("quota", "quota_exhausted")]


@pytest.mark.parametrize(("faults", "error_class"), RUN_FATAL, ids=[r[0] for r in RUN_FATAL])
def test_run_fatal_faults_stop_the_run_with_exit_4(tmp_path: Path, fake: FakeServer,
                                                    faults: str, error_class: str) -> None:
    ran = run_one(tmp_path, fake, faults, extra_prompts=5)
    assert ran.exit_code == 4
    assert ran.attempts[0][1] == error_class and len(ran.attempts) == 1
    assert ran.fake_calls == 1  # nothing else burned a call
    assert ran.state == "pending"  # not the request's fault; a re-run tries it


def test_exhausted_attempts_fail_the_request(tmp_path: Path, fake: FakeServer) -> None:
    ran = run_one(tmp_path, fake, "500,500,500,500", max_attempts=3)
    assert ran.state == "failed" and ran.exit_code == 1
    assert len(ran.attempts) == 3 and ran.fake_calls == 3


def test_stall_longer_than_idle_timeout_is_retried(tmp_path: Path, fake: FakeServer) -> None:
    ran = run_one(tmp_path, fake, "stall@3:3", idle=0.4)
    assert ran.state == "done" and len(ran.attempts) == 2
    assert ran.attempts[0][1] == "idle_timeout"


def test_no_done_marker_and_no_usage_are_complete(tmp_path: Path, fake: FakeServer) -> None:
    ran = run_one(tmp_path, fake, "nodone")
    assert ran.state == "done" and len(ran.attempts) == 1
    assert "estimated" not in read_results(ran.run_dir)[0]["usage"]
    (tmp_path / "b").mkdir()
    ran = run_one(tmp_path / "b", fake, "nousage")
    assert ran.state == "done" and len(ran.attempts) == 1
    assert read_results(ran.run_dir)[0]["usage"]["estimated"] is True


def test_silence_after_finish_and_usage_is_complete(tmp_path: Path, fake: FakeServer) -> None:
    ran = run_one(tmp_path, fake, "hang", idle=30)
    assert ran.state == "done" and len(ran.attempts) == 1


def test_silence_after_a_finish_without_usage_keeps_the_answer(tmp_path: Path,
                                                               fake: FakeServer) -> None:
    """The answer is whole at its finish_reason: a server that then says nothing
    more (no usage, no [DONE], no close) costs a wait, never a second purchase."""
    ran = run_one(tmp_path, fake, "mute", idle=0.5)  # the idle timeout comes first
    assert ran.state == "done" and len(ran.attempts) == 1
    assert read_results(ran.run_dir)[0]["usage"]["estimated"] is True


def test_a_finish_without_usage_waits_a_grace_not_the_idle_timeout(
        tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchgen.wire import stream

    monkeypatch.setattr(stream, "USAGE_GRACE", 0.3)
    began = monotonic()
    ran = run_one(tmp_path, fake, "mute", idle=60)
    assert ran.state == "done" and len(ran.attempts) == 1
    assert monotonic() - began < 30


def test_connection_refused_is_an_outage_waited_out_then_left_pending(tmp_path: Path) -> None:
    """A refused connection is the endpoint's state, not the request's failure:
    probes one at a time, 1 s doubling, uncounted against max_attempts; past
    run.outage_timeout the run stops with exit 69 and the request pending."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    time = FakeTime()
    job = write_job(tmp_path / "job.yaml", None, [{"id": "x", "prompt": "hi"}],
                    run={"max_attempts": 3, "outage_timeout": 30})
    job.write_text(job.read_text().replace("https://example.invalid/v1",
                                           f"http://127.0.0.1:{port}/v1"))
    summary = run_job(load_job(job), RunOptions(sleep=time.sleep, clock=time.clock))
    assert summary.failed == 0 and summary.pending == 1 and summary.exit_code == 69
    db = sqlite3.connect(tmp_path / "out" / "t" / "run.db")
    rows = db.execute("SELECT error_class, error_message FROM attempts ORDER BY n").fetchall()
    assert len(rows) > 3  # not counted against max_attempts
    assert {r[0] for r in rows} == {"connection"}
    # in the transport's own words, not the SDK's "Request timed out."
    assert all("timed out" not in r[1] and "connect" in r[1].lower() for r in rows), rows
    waits = [round(s) for s in time.sleeps if s >= 0.5]
    assert waits[:4] == [1, 2, 4, 8], time.sleeps  # probes 1 s doubling ...
    assert 30 <= sum(time.sleeps) <= 30 + 16  # ... until run.outage_timeout, not beyond
    assert not (tmp_path / "out" / "t" / "failed.jsonl").read_text()


def test_backoff_is_full_jitter_capped() -> None:
    rng = random.Random(5)
    for attempt in range(1, 12):
        ceiling = min(BACKOFF_CAP, 2 ** (attempt - 1))
        samples = [backoff(attempt, None, rng) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # the whole range is used
    assert 10 <= backoff(1, 10.0, rng) <= 11.1


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after": "12"}) == 12
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert retry_after_seconds({"retry-after": "99999"}) == 300
    assert retry_after_seconds({}) is None


def test_breaker_holds_launches_when_most_attempts_fail() -> None:
    from batchgen.pacing.gate import Breaker, Gate

    now = [0.0]
    gate = Gate(rpm=None, tpm=None, clock=lambda: now[0], sleep=asyncio.sleep)
    breaker = Breaker(gate, window=10, threshold=0.8, cooldown=5)
    for _ in range(9):
        breaker.record(False)
    assert gate.paused_until == 0
    breaker.record(False)
    assert gate.paused_until == 5 and breaker.trips == 1
    for _ in range(10):
        breaker.record(False)
    assert gate.paused_until == 5  # failures that land during the cooldown do not count
    now[0] = 5.0
    for _ in range(10):
        breaker.record(False)
    assert gate.paused_until == 15  # the cooldown doubles while failures go on
    breaker.record(True)
    assert breaker.cooldown == 5


def test_a_storm_of_server_errors_is_an_outage_that_fails_no_request(
        tmp_path: Path, fake: FakeServer) -> None:
    """Every answer a 503: the endpoint is down, not the requests. Launches
    hold, one probe goes at a time, and the attempts the storm spoils do not
    count against max_attempts (2 here, while each request meets three 503s)."""
    time = FakeTime()
    fake.config.down_for = 10  # the whole endpoint answers 503 to its next 10 requests
    prompts = [{"id": f"p{i}", "prompt": f"[[len=5]] {i}"} for i in range(24)]
    job = write_job(tmp_path / "job.yaml", fake, prompts,
                    run={"max_attempts": 2, "concurrency": 2})
    summary = run_job(load_job(job), RunOptions(sleep=time.sleep, clock=time.clock,
                                                rng=random.Random(3)))
    assert (summary.done, summary.failed, summary.exit_code) == (24, 0, 0)
    assert fake.ledger.requests == 10 + 24  # the storm's answers, then one each
    # the probes' waits (exact: the next probe's time less now): 1 s, then doubling
    assert {1.0, 2.0, 4.0} <= set(time.sleeps), time.sleeps


def test_throttling_has_a_larger_allowance_than_other_failures(tmp_path: Path,
                                                               fake: FakeServer) -> None:
    ran = run_one(tmp_path, fake, ",".join(["429"] * 7), max_attempts=3)
    assert ran.state == "done" and len(ran.attempts) == 8
    (tmp_path / "b").mkdir()
    ran = run_one(tmp_path / "b", fake, ",".join(["503"] * 7), max_attempts=3)
    assert ran.state == "failed" and len(ran.attempts) == 3


def test_a_finished_retry_policy_is_freed_at_once_not_by_the_cycle_collector() -> None:
    """Each request runs its own policy: one that only the cycle collector can
    free costs a run its CPU (collections as it goes) and heap (garbage waiting)."""
    import gc

    from batchgen.errors import TransientError
    from batchgen.wire.policy import policy

    async def no_sleep(_seconds: float) -> None:
        return None

    async def attempts(fail_first: int) -> int:
        tries = 0
        async for attempt in policy(3, sleep=no_sleep):
            with attempt:
                tries += 1
                if tries <= fail_first:
                    raise TransientError("again", retry_after=0.0)
        return tries

    async def main() -> tuple[list[int], int]:
        gc.collect()
        gc.disable()
        try:
            tries = [await attempts(n % 3) for n in range(60)]
            return tries, gc.collect()
        finally:
            gc.enable()

    tries, unreachable = asyncio.run(main())
    assert tries == [1, 2, 3] * 20  # the policy still retries as before
    assert unreachable == 0
