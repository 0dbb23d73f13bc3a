"""P6: `batchgen --help` start-up against `python -c pass`, as fresh processes."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

from bench.common import ROOT, row


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
    return [
        row("P6 `batchgen --help` start-up",
            f"{help_:.3f} s vs `python -c pass` {base:.3f} s = **{help_ / base:.1f}×** "
            f"(+{help_ - base:.3f} s)", "≤ 0.3 s", help_ <= 0.3),
        row("P6 `batchgen run --help`", f"{cli:.3f} s", "report", None),
    ]
