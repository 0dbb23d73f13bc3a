"""P2: wall time for N requests × M chunks at 64, 256 and 512 streams at once.

The fake server (its own process) sends one chunk per stream every ``delay``
seconds from a single shared timer, so it keeps up at 512 streams. Ideal
wall time = N × M × delay / concurrency; efficiency = ideal / measured. A flat
per-request overhead shows as efficiency that holds from 64 to 512.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import CPU, KEY_ENV, fake_server, row, write_jsonl

DELAY = 0.02


def run(quick: bool) -> list[str]:
    import openai  # noqa: F401 - imported before timing: P6 measures start-up

    from batchgen import load_job, run_job
    from batchgen.jobfile import Overrides
    from batchgen.runner import RunOptions

    # long generations: 500 chunks (~1-2k tokens) at 50 chunks/s a stream, a
    # typical API's pace; the quick mode only checks that the suite runs
    chunks = 50 if quick else 500
    waves = 1 if quick else 4  # a batch is many waves; the first pays the start-up burst
    levels = (64, 256) if quick else (64, 256, 512)
    rows = []
    with fake_server("--tick", str(DELAY)) as server, tempfile.TemporaryDirectory() as tmp:
        for concurrency in levels:
            n = concurrency * waves
            jobfile = write_jsonl(Path(tmp) / f"p2_{concurrency}.jsonl", n, chunks)
            job = load_job(jobfile, Overrides(model="qwen-plus", base_url=server.base_url,
                                              api_key_env=KEY_ENV, out=tmp,
                                              concurrency=concurrency))
            s0 = server.cpu()
            with CPU() as took:
                summary = run_job(job, RunOptions())
            server_cpu = server.cpu() - s0
            assert summary.done == n, summary
            ideal = n * chunks * DELAY / concurrency
            efficiency = ideal / took.wall
            target = concurrency == 512
            rows.append(row(
                f"P2 {n} requests × {chunks} chunks at {concurrency} streams",
                f"{took.wall:.2f} s vs ideal {ideal:.2f} s = **{efficiency:.1%}** of ideal; "
                f"client CPU {took.cpu / took.wall:.0%}, server CPU {server_cpu / took.wall:.0%}"
                " of a core",
                "≥ 95% at 512" if target else "report", efficiency >= 0.95 if target else None))
    return rows
