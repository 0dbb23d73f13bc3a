"""P13: the repetition guard — what a loop costs with it, and what it costs.

- A looping answer (a 12-token sentence repeating from token 300 on,
  ``max_tokens`` 8,192) against the fake API streaming a token every 2 ms:
  completion tokens bought with the guard (``on_repetition: fail``) against
  without it. Target: ≤ 300 + 10 copies × 12 + 256 = 676, against 8,192.
- The guard's CPU: ``batchgen run`` of answers without a loop (P1's shape:
  200 × 200 tokens, and P8's: paced streams), with the
  guard on (the default) against off, as whole processes, interleaved,
  medians. Target: ≤ 1.10×. (P8's shape here: 32 answers × 500 tokens 10 ms
  apart, all at once, to keep the suite short.)
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from bench.common import KEY_ENV, Measured, fake_server, measure, row


def _job(path: Path, base_url: str, prompts: list[str], guard: bool, out: str,
         max_tokens: int | None = None) -> Path:
    defaults: dict[str, object] = {"model": "qwen-plus"}
    if max_tokens:
        defaults["max_tokens"] = max_tokens
    path.write_text(json.dumps({
        "name": "p13", "output_dir": out, "defaults": defaults,
        "endpoint": {"base_url": base_url, "api_key_env": KEY_ENV},
        "run": {"concurrency": 32, "max_attempts": 1, "guard": {"repetition": guard}},
        "prompts": [{"id": f"r{i}", "prompt": p} for i, p in enumerate(prompts)]}))
    return path


def _run(job: Path) -> Measured:
    return measure("batchgen", "run", str(job), "-q")


def run(quick: bool) -> list[str]:
    rows = []
    with fake_server() as server, tempfile.TemporaryDirectory() as tmp:
        bought = {}
        for guard in (True, False):
            server.control("reset", {})
            job = _job(Path(tmp) / f"loop{guard}.yaml", server.base_url,
                       ["[[len=8192]][[loop=300]][[delay=0.002]] a report"], guard,
                       f"{tmp}/loop{guard}", max_tokens=8192)
            _run(job)
            bought[guard] = max(e["completion_tokens"] for e in server.control("ledger")[
                "entries"])
        rows.append(row("P13 a looping answer (loop from token 300, max_tokens 8,192): "
                        "completion tokens bought",
                        f"with the guard **{bought[True]:,}** vs without {bought[False]:,}",
                        "≤ 676 vs 8,192", bought[True] <= 676))
        rounds = 2 if quick else 3
        for name, prompts in (
                ("P1 shape, 200 × 200 tokens", [f"[[len=200]] req {i}" for i in range(200)]),
                ("P8 shape, 32 × 500 tokens 10 ms apart",
                 [f"[[len=500]][[delay=0.01]] req {i}" for i in range(32)])):
            cpu: dict[bool, list[float]] = {True: [], False: []}
            for r in range(rounds):
                for guard in (True, False):
                    job = _job(Path(tmp) / f"cpu{r}{guard}.yaml", server.base_url, prompts,
                               guard, f"{tmp}/cpu{r}{guard}")
                    done = _run(job)
                    assert done.code == 0, f"batchgen exited {done.code}"
                    cpu[guard].append(done.cpu)
            on, off = statistics.median(cpu[True]), statistics.median(cpu[False])
            rows.append(row(f"P13 the guard's CPU, {name} (whole runs, medians of {rounds})",
                            f"guard on {on:.2f} s vs off {off:.2f} s = **{on / off:.3f}×**",
                            "≤ 1.10×", on / off <= 1.10 if not quick else None))
    return rows
