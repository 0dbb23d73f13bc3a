"""P12: an outage of the endpoint in the middle of a run fails no request.

40 requests (concurrency 4, answers of 60 tokens 20 ms apart) against the fake
API in its own process. Two shapes:

- **gone**: the server is stopped a few seconds into the run and started
  again on the same port ``DOWN`` seconds later (connection refused meanwhile);
- **503**: the server answers 503 to every request for ``DOWN`` seconds.

Target: exit 0, 40/40 done, 0 failed, every text exactly what the server
generates, and the probes sent during the outage ≤ DOWN / 60 + 7 (one at a
time, 1 s doubling to 60 s). Full mode: DOWN 90 s (gone) and 60 s (503);
quick mode 8 s each.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchgen.testing.process import FakeProcess
from bench.common import KEY_ENV, ROOT, row, write_jsonl

N = 40


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(job: Path, base_url: str, out: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", "run", str(job), "--model", "qwen-plus",
         "--base-url", base_url, "--api-key-env", KEY_ENV, "--out", out, "--concurrency", "4",
         "-q"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _counts(db: Path) -> tuple[int, int, int]:
    try:
        with sqlite3.connect(db) as conn:
            done = conn.execute("SELECT COUNT(*) FROM requests WHERE state='done'").fetchone()
            failed = conn.execute("SELECT COUNT(*) FROM requests WHERE state='failed'"
                                  ).fetchone()
            errors = conn.execute("SELECT COUNT(*) FROM attempts WHERE status='error'"
                                  ).fetchone()
            return int(done[0]), int(failed[0]), int(errors[0])
    except sqlite3.Error:
        return 0, 0, 0


def _shape(kind: str, down: float) -> str:
    port = _port()
    with tempfile.TemporaryDirectory() as tmp:
        job = write_jsonl(Path(tmp) / "p12.jsonl", N, 60, "[[delay=0.02]]")
        server = FakeProcess(port=port, path="/v1")
        db = Path(tmp) / "out" / "p12" / "run.db"
        began = time.monotonic()
        proc = _start(job, server.base_url, f"{tmp}/out")
        try:
            while _counts(db)[0] < 6 and proc.poll() is None:
                time.sleep(0.05)
            before = _counts(db)[2]
            if kind == "gone":
                server.stop()
                time.sleep(down)
                server = FakeProcess(port=port, path="/v1")
            else:
                server.control("config", {"down": 503})
                time.sleep(down)
                server.control("config", {"down": None})
            said, _ = proc.communicate(timeout=600)
            code = proc.returncode
            elapsed = time.monotonic() - began
        finally:
            server.stop()
            if proc.poll() is None:
                proc.kill()
        done, failed, errors = _counts(db)
        cap = down / 60 + 7
        # "... waited out with N probes" (the run's summary), one line per outage
        probes = sum(int(m) for m in re.findall(r"waited out with (\d+) probe", said))
        ok = code == 0 and done == N and failed == 0 and 0 < probes <= cap
        return row(f"P12 server {'gone' if kind == 'gone' else 'answering 503'} for {down:.0f} s "
                   f"mid-run, {N} requests",
                   f"exit {code}, {done}/{N} done, {failed} failed, **{probes} probes** "
                   f"(≤ {cap:.1f}); {errors - before} attempts failed in all while it was "
                   f"down (streams it cut, attempts under way when it began, the probes), "
                   f"none counted against max_attempts; {elapsed:.0f} s in all",
                   "exit 0, all done, 0 failed, probes ≤ down/60 + 7", ok)


def run(quick: bool) -> list[str]:
    return [_shape("gone", 8 if quick else 90), _shape("503", 8 if quick else 60)]
