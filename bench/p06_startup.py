"""P6: start-up. `batchgen --help` against `python -c pass`, and a one-request
`batchgen run` against the bare aiohttp client doing the same request (CPU,
start-up included, as fresh processes; medians). Target of the second: ≤ 1.5×."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from bench.common import ROOT, batchgen, client, fake_server, row, write_jsonl


def _time(args: list[str], repeat: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(args, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(quick: bool) -> list[str]:
    repeat = 5 if quick else 15
    base = _time([sys.executable, "-c", "pass"], repeat)
    help_ = _time([sys.executable, "-m", "batchgen", "--help"], repeat)
    cli = _time([sys.executable, "-m", "batchgen", "run", "--help"], repeat)
    one = _one_request(3 if quick else 7)
    return [
        one,
        row("P6 `batchgen --help` start-up",
            f"{help_:.3f} s vs `python -c pass` {base:.3f} s = **{help_ / base:.1f}×** "
            f"(+{help_ - base:.3f} s)", "≤ 0.3 s", help_ <= 0.3),
        row("P6 `batchgen run --help`", f"{cli:.3f} s", "report", None),
    ]


def _one_request(repeat: int) -> str:
    import tempfile
    from pathlib import Path

    with fake_server() as server, tempfile.TemporaryDirectory() as tmp:
        job = write_jsonl(Path(tmp) / "one.jsonl", 1, 20)
        ours, bare = [], []
        for i in range(repeat):  # interleaved, so a noisy moment hits both
            done = batchgen(job, server.base_url, f"{tmp}/out{i}", 1)
            assert done.code == 0, f"batchgen exited {done.code}"
            ours.append(done.cpu)
            bare.append(client("bare", job, server.base_url, 1).cpu)
    mine, base = statistics.median(ours), statistics.median(bare)
    return row("P6 a one-request run, CPU (start-up included)",
               f"batchgen {mine:.3f} s vs bare aiohttp client {base:.3f} s = "
               f"**{mine / base:.2f}×** (medians of {repeat})",
               "≤ 1.5× the bare client", mine / base <= 1.5)
