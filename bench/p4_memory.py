"""P4: peak RSS of the whole `batchgen run` process for 1k, 10k, 100k prompts.

Each size runs as its own process against a fast fake server; peak RSS comes
from the kernel (wait4's ru_maxrss). Baseline: the 1k job. The finished runs
are kept for P5.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import KEY_ENV, ROOT, fake_server, row, write_jsonl

FINISHED: dict[int, tuple[Path, Path, str]] = {}  # size -> (job file, out root, base url)
_KEEP: list[tempfile.TemporaryDirectory[str]] = []


def run_process(args: list[str]) -> tuple[int, float, float]:
    """(exit code, peak RSS in MB, wall seconds) of `python -m batchgen ...`."""
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "batchgen", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and proc.stderr is not None:
        print(proc.stderr.read().decode()[-2000:], file=sys.stderr)
    return code, usage.ru_maxrss / 1024, wall


def sizes(quick: bool) -> tuple[int, ...]:
    return (1_000, 10_000) if quick else (1_000, 10_000, 100_000)


def run(quick: bool) -> list[str]:
    rows = []
    base_rss = None
    tmp = tempfile.TemporaryDirectory()
    _KEEP.append(tmp)
    with fake_server("--len", "8") as server:
        for n in sizes(quick):
            jobfile = write_jsonl(Path(tmp.name) / f"p4_{n}.jsonl", n, 8)
            out = Path(tmp.name) / "out"
            code, rss, wall = run_process(
                ["run", str(jobfile), "--model", "qwen-plus", "--base-url", server.base_url,
                 "--api-key-env", KEY_ENV, "--out", str(out), "--concurrency", "64", "-q"])
            assert code == 0, f"P4 run of {n} exited {code}"
            FINISHED[n] = (jobfile, out, server.base_url)
            base_rss = base_rss or rss
            last = n == max(sizes(quick))
            ok = rss <= 1.3 * base_rss and rss <= 150 if last else None
            rows.append(row(f"P4 peak RSS, {n:,}-prompt job",
                            f"{rss:.0f} MB = **{rss / base_rss:.2f}×** the 1k job "
                            f"({n / wall:,.0f} requests/s)",
                            "≤ 1.3× and ≤ 150 MB at the largest" if last else "baseline"
                            if n == 1_000 else "report", ok))
    return rows
