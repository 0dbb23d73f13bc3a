"""P5: re-run of a finished run (everything skipped) against a cold validate.

Uses the largest finished run of P4 (100k prompts in full mode). Baseline in
the same run: `batchgen validate` of the same file, as a fresh process.
"""

from __future__ import annotations

import statistics

from bench import p4_memory
from bench.common import KEY_ENV, row


def run(quick: bool) -> list[str]:
    if not p4_memory.FINISHED:
        p4_memory.run(quick)
    n = max(p4_memory.FINISHED)
    jobfile, out, base_url = p4_memory.FINISHED[n]
    flags = ["--model", "qwen-plus", "--base-url", base_url, "--api-key-env", KEY_ENV,
             "--out", str(out)]
    validate, rerun = [], []
    for _ in range(3):
        code, _, wall = p4_memory.run_process(["validate", str(jobfile), *flags])
        assert code == 0
        validate.append(wall)
        code, _, wall = p4_memory.run_process(["run", str(jobfile), *flags, "-q"])
        assert code == 0
        rerun.append(wall)
    v, r = statistics.median(validate), statistics.median(rerun)
    return [row(f"P5 re-run of a finished {n:,}-prompt run (all skipped) vs cold validate",
                f"{r:.2f} s vs {v:.2f} s = **{r / v:.2f}×**",
                "≤ 3 s and ≤ 2×", r <= 3.0 and r / v <= 2.0)]
