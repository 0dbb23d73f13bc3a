"""Helpers shared by the benchmarks: a fake API in its own process, timers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from batchgen.testing.process import FakeProcess

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "BATCHGEN_BENCH_API_KEY"
os.environ.setdefault(KEY_ENV, "bench-key")


@contextmanager
def fake_server(*args: str) -> Iterator[FakeProcess]:
    """The fake API, alone in a process, so its CPU is not ours."""
    with FakeProcess(*args, path="/v1") as server:
        yield server


def write_jsonl(path: Path, n: int, tokens: int, extra: str = "") -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"r{i}", "prompt": f"[[len={tokens}]]{extra} request {i}"})
                     + "\n")
    return path


class CPU:
    """Process CPU seconds (user + system) and wall seconds of a block."""

    def __enter__(self) -> CPU:
        self.t0 = time.process_time()
        self.w0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self.t0
        self.wall = time.perf_counter() - self.w0


@dataclass
class Measured:
    """A child process's exit code, wall and CPU seconds, peak RSS (MB), output."""

    code: int
    wall: float
    cpu: float
    rss: float
    stdout: str


def measure(module: str, *args: str) -> Measured:
    """Run ``python -m module args`` and measure it from outside (wait4):
    start-up included, its CPU and memory apart from ours and the server's."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env,
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            print(err.read().decode(errors="replace")[-2000:], file=sys.stderr)
        return Measured(code, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                        out.read().decode(errors="replace"))


def row(name: str, value: str, target: str, ok: bool | None) -> str:
    mark = "" if ok is None else ("PASS" if ok else "MISS")
    return f"| {name} | {value} | {target} | {mark} |"


def batchgen(jobfile: Path, base_url: str, out: str, concurrency: int, *extra: str) -> Measured:
    """``batchgen run`` of a job, as a user starts it."""
    return measure("batchgen", "run", str(jobfile), "--model", "qwen-plus", "--base-url",
                   base_url, "--api-key-env", KEY_ENV, "--out", out, "--concurrency",
                   str(concurrency), "-q", *extra)


def client(mode: str, jobfile: Path, base_url: str, concurrency: int) -> Measured:
    """One of bench/clients.py's baselines over the same job."""
    done = measure("bench.clients", mode, str(jobfile), base_url, str(concurrency))
    assert done.code == 0, f"the {mode} client exited {done.code}"
    return done


def tmpfs() -> bool:
    """Whether /dev/shm is a tmpfs this process may write."""
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            found = any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in mounts)
    except OSError:
        return False
    return found and os.access("/dev/shm", os.W_OK)
