"""Fixtures: a loopback fake API (in this process or its own), the canary key,
a real redis-server. Everything else tests share is in ``tests.helpers``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchgen.testing.fakeserver import Config, FakeServer
from batchgen.testing.process import FakeProcess
from tests.helpers import CANARY, KEY_ENV, RedisServer


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer(Config(api_key=CANARY))
    server.start_in_thread()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _canary_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, CANARY)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)  # tests run inside CI jobs too


@pytest.fixture
def fake_process() -> Iterator[FakeProcess]:
    server = FakeProcess("--api-key", CANARY)
    yield server
    server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()
