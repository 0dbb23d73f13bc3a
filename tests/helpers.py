"""What tests share besides fixtures: paths, the canary key, job-file writers,
the CLI in a subprocess, a fake clock, kill loops, a real redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchgen.testing.fakeserver import FakeServer
from batchgen.wire.transport import Response

ROOT = Path(__file__).resolve().parent.parent  # the repository

CANARY = "sk-canary-7f3a9c1e5b2d4f6a8c0e"

KEY_ENV = "BATCHGEN_TEST_API_KEY"


def write_job(path: Path, fake: FakeServer | None, prompts: list[dict[str, Any]],
              **extra: Any) -> Path:
    """A YAML job file aimed at the fake server (JSON is valid YAML)."""
    job: dict[str, Any] = {
        "name": extra.pop("name", "t"),
        "output_dir": str(path.parent / "out"),
        "endpoint": {"base_url": fake.base_url if fake else "https://example.invalid/v1",
                     "api_key_env": KEY_ENV},
        "defaults": {"model": "qwen-plus"},
        "prompts": prompts,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(job.get(key), dict):
            job[key] = {**job[key], **value}
        else:
            job[key] = value
    path.write_text(json.dumps(job, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def read_results(run_dir: Path) -> list[dict[str, Any]]:
    text = (run_dir / "results.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n") if line]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``batchgen ...`` in a real subprocess (exit codes, signals, stdout)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, check=False, timeout=timeout,
    )


class FakeTime:
    """A clock that moves only when something sleeps: back-offs are recorded, not slept."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        import asyncio

        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


def runs_begun(run_db: Path) -> int:
    """How many invocations of a run store started an attempt (0 before it exists)."""
    import sqlite3

    try:
        with sqlite3.connect(run_db) as db:
            return int(db.execute("SELECT COUNT(DISTINCT run_id) FROM attempts").fetchone()[0])
    except sqlite3.Error:
        return 0


def kill_until_done(start: Any, rng: Any, lo: float, hi: float, run_db: Path,
                    rounds: int = 30) -> int:
    """Start a run, SIGKILL it a random lo..hi s after its first attempt began
    (start-up, a second or more for `import openai`, is not counted), again until
    it exits 0. Returns how many times it was killed."""
    import signal
    import time

    for kills in range(rounds):
        before = runs_begun(run_db)
        proc = start()
        deadline = time.monotonic() + 60
        while runs_begun(run_db) <= before and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(lo, hi))
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
            return kills
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    pytest.fail("the run never finished")


class RedisServer:
    """A real redis-server (Debian's package) on a free loopback port."""

    def __init__(self) -> None:
        import shutil
        import socket
        import time

        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("BATCHGEN_REQUIRE_LOCAL") == "1":
                raise RuntimeError("redis-server is missing (CI installs Debian's redis-server)")
            pytest.skip("redis-server not installed")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Body(Response):
    """An answer whose body is the given byte pieces, read one a call as sent
    (no connection under it to pause)."""

    def __init__(self, pieces: list[bytes], headers: dict[str, str] | None = None) -> None:
        left = list(pieces)

        async def read() -> bytes:
            return left.pop(0) if left else b""

        super().__init__(headers=headers or {}, read=read, transport=None, close=lambda: None)


async def no_sleep(_seconds: float) -> None:
    """A sleep that returns at once (back-offs are not waited out in tests)."""
