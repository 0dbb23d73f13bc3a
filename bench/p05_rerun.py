"""P5: re-run of a finished run (everything skipped) against a cold validate.

Uses the largest finished run of P4 (100k prompts in full mode). Baseline in
the same run: `batchgen validate` of the same file, as a fresh process. The
re-run finds the job unchanged (batchgen.jobs.validated) and does not walk its
prompts; `validate` always does.

Beside it, the wait before a *first* run of the same file sends anything:
from the process's launch to its first attempt in run.db (then SIGINT). A
run must validate the whole job before it writes a byte, then plan it into
the store; the plan is kept from the validating pass (batchgen.jobs.spool), so
that wait is validation plus the store's inserts, not a second resolve.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import p04_memory
from bench.common import KEY_ENV, ROOT, fake_server, row


def run(quick: bool) -> list[str]:
    if not p04_memory.FINISHED:
        p04_memory.run(quick)
    n = max(p04_memory.FINISHED)
    jobfile, out, base_url = p04_memory.FINISHED[n]
    flags = ["--model", "qwen-plus", "--base-url", base_url, "--api-key-env", KEY_ENV,
             "--out", str(out)]
    validate, rerun = [], []
    for _ in range(3):
        code, _, wall = p04_memory.run_process(["validate", str(jobfile), *flags])
        assert code == 0
        validate.append(wall)
        code, _, wall = p04_memory.run_process(["run", str(jobfile), *flags, "-q"])
        assert code == 0
        rerun.append(wall)
    v, r = statistics.median(validate), statistics.median(rerun)
    with fake_server() as server, tempfile.TemporaryDirectory() as tmp:
        fresh = ["--model", "qwen-plus", "--base-url", server.base_url, "--api-key-env", KEY_ENV]
        firsts = [first_request(jobfile, fresh, Path(tmp) / f"first{i}") for i in range(3)]
    f = statistics.median(firsts)
    return [row(f"P5 re-run of a finished {n:,}-prompt run (all skipped) vs cold validate",
                f"{r:.2f} s vs {v:.2f} s = **{r / v:.2f}×**",
                "≤ 3 s and ≤ 2×", r <= 3.0 and r / v <= 2.0),
            row(f"P5 first run of the {n:,}-prompt job: launch to first request vs cold validate",
                f"{f:.2f} s vs {v:.2f} s = **{f / v:.2f}×**", "report", None)]


def first_request(jobfile: Path, flags: list[str], out: Path) -> float:
    """Seconds from launching a first run of ``jobfile`` to its first attempt."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    db = out / jobfile.stem / "run.db"
    launched = time.time()  # the store's clock
    proc = subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(jobfile), *flags,
                             "--out", str(out), "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    try:
        while first is None and proc.poll() is None:
            time.sleep(0.02)
            if not db.exists():
                continue
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                    first = conn.execute("SELECT MIN(started) FROM attempts").fetchone()[0]
            except sqlite3.Error:
                continue  # not created yet
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait()
    assert first is not None, f"the first run of {jobfile} ended before any request"
    return float(first) - launched
