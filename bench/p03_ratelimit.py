"""P3: wall time under a server that enforces RPM/TPM with 429s.

The fake server allows ``rpm`` requests per sliding minute and ``rpm/60`` per
sliding second (Model Studio enforces per-second rates), and ``tpm`` tokens
likewise. batchgen runs with ``run.rpm``/``run.tpm`` set to the account's
limits. Ideal = N / RPM. Also measured: the same job with no limits
configured, where only 429s and AIMD back-off keep it in check.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import KEY_ENV, fake_server, row, write_jsonl


def _run(server_base: str, tmp: str, n: int, name: str, rpm: float | None,
         tpm: float | None) -> tuple[float, int]:
    import time

    from batchgen import load_job, run_job
    from batchgen.engine.runner import RunOptions
    from batchgen.jobs.load import Overrides

    path = Path(tmp) / f"{name}.yaml"
    jsonl = write_jsonl(Path(tmp) / f"{name}.jsonl", n, 20)
    run = {"concurrency": 64, **({"rpm": rpm} if rpm else {}), **({"tpm": tpm} if tpm else {})}
    import json

    path.write_text(json.dumps({"name": name, "output_dir": tmp, "prompts_file": jsonl.name,
                                "endpoint": {"base_url": server_base, "api_key_env": KEY_ENV},
                                "defaults": {"model": "qwen-plus", "max_tokens": 40},
                                "run": run}))
    job = load_job(path, Overrides())
    t0 = time.perf_counter()
    summary = run_job(job, RunOptions())
    wall = time.perf_counter() - t0
    assert summary.done == n, summary
    return wall, summary.done


def run(quick: bool) -> list[str]:
    import openai  # noqa: F401 - imported before timing: P6 measures start-up

    n, rpm = (120, 1200) if quick else (1500, 3000)
    tpm = rpm * 200  # ~70 tokens a request: the request limit binds
    ideal = n / rpm * 60
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with fake_server("--rpm", str(rpm), "--tpm", str(tpm)) as server:
            wall, _ = _run(server.base_url, tmp, n, "paced", rpm, tpm)
            ledger = server.control("ledger")
            throttled = {e["key"] for e in ledger["entries"] if e["status"] == 429}
        ratio = wall / ideal
        share = len(throttled) / n
        rows.append(row(f"P3 wall time, {n} requests at RPM {rpm} (run.rpm/tpm set)",
                        f"{wall:.1f} s vs ideal {ideal:.1f} s = **{ratio:.3f}×**; "
                        f"{share:.1%} of requests saw a 429",
                        "≤ 1.05×, ≤ 1%",
                        # judged in full mode only: a quick run's 6 s are ~5% start-up
                        ratio <= 1.05 and share <= 0.01 if not quick else None))
        with fake_server("--rpm", str(rpm), "--tpm", str(tpm)) as server:
            wall, _ = _run(server.base_url, tmp, n, "unpaced", None, None)
            ledger = server.control("ledger")
            throttled = {e["key"] for e in ledger["entries"] if e["status"] == 429}
        rows.append(row("P3 same, no limits configured (429 + AIMD only)",
                        f"{wall / ideal:.2f}× ideal; {len(throttled) / n:.0%} of requests "
                        "saw a 429", "report", None))
    return rows
