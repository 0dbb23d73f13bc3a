"""P11: shards — one account's limits shared through Redis, and throughput.

1. Three shard processes against the fake server enforcing RPM R (per minute
   and R/60 per sliding second, as Model Studio), every shard with
   ``run.rpm: R``: with one Redis (``BATCHGEN_LIMITS_URL``) and, as the
   baseline in the same run, without it (each shard paces itself to R).
   Share of requests that saw a 429, and wall time against the ideal N/R.
2. (full mode only) Requests per second of 1, 2 and 4 shard processes for
   short requests on this machine (where one process is CPU-bound), start-up included.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import KEY_ENV, ROOT, fake_server, row


def _redis() -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def _job(path: Path, base_url: str, n: int, tokens: int, run: dict[str, object]) -> Path:
    path.write_text(json.dumps({
        "name": "p11", "output_dir": str(path.parent / "out"),
        "endpoint": {"base_url": base_url, "api_key_env": KEY_ENV},
        "defaults": {"model": "qwen-plus", "max_tokens": tokens + 10}, "run": run,
        "prompts": [{"id": f"r{i:06d}", "prompt": f"[[len={tokens}]] request {i}"}
                    for i in range(n)]}))
    return path


def _shards(job: Path, count: int, env: dict[str, str]) -> float:
    began = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "-q",
                               "--shard", f"{k}/{count}"],
                              env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for k in range(1, count + 1)]
    for proc in procs:
        _, err = proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
    return time.perf_counter() - began


def _shared_limits(quick: bool, tmp: Path) -> list[str]:
    started = _redis()
    if started is None:
        return [row("P11 shared RPM", "skipped: redis-server not installed", "≤ 2%", None)]
    redis_proc, url = started
    rpm, n = (1200, 120) if quick else (1200, 600)
    ideal = n / rpm * 60
    figures = {}
    try:
        for name, env in (("shared", {"BATCHGEN_LIMITS_URL": url}), ("alone", {})):
            with fake_server("--rpm", str(rpm)) as server:
                (tmp / name).mkdir()
                job = _job(tmp / name / "job.yaml", server.base_url, n, 20,
                           {"concurrency": 16, "rpm": rpm})
                wall = _shards(job, 3, env)
                entries = server.control("ledger")["entries"]
            throttled = {e["key"] for e in entries if e["status"] == 429}
            figures[name] = (wall, len(throttled) / n)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
    (wall, share), (alone_wall, alone_share) = figures["shared"], figures["alone"]
    # judged in full mode only: 120 requests (6 s) in a quick run are mostly three
    # processes starting on a loaded CI machine
    ok = share <= 0.02 and wall <= 1.2 * ideal if not quick else None
    return [row(f"P11 3 shards, {n} requests, RPM {rpm} enforced, run.rpm {rpm} each",
                f"one Redis: **{share:.1%}** saw a 429, {wall:.1f} s = **{wall / ideal:.2f}×** "
                f"ideal {ideal:.1f} s; without it: {alone_share:.0%} saw a 429, "
                f"{alone_wall / ideal:.2f}× ideal", "≤ 2% and ≤ 1.2×", ok)]


def _throughput(quick: bool, tmp: Path) -> list[str]:
    n = 12000
    rows, base = [], None
    with fake_server("--len", "4") as server:
        for count in (1, 2, 4):
            where = tmp / f"tp{count}"
            where.mkdir()
            job = _job(where / "job.yaml", server.base_url, n, 4, {"concurrency": 64})
            wall = _shards(job, count, {})
            rate = n / wall
            base = base or rate
            rows.append(row(f"P11 {n:,} short requests, {count} shard process"
                            f"{'es' if count > 1 else ''} (2 cores; fake server on the same)",
                            f"{rate:,.0f} requests/s = **{rate / base:.2f}×** one process",
                            "report", None))
    return rows


def run(quick: bool) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        rows = _shared_limits(quick, Path(tmp))
        if quick:  # a report row that needs sizes CI has no time for
            return [*rows, row("P11 throughput of 1, 2, 4 shard processes",
                               "full mode only", "report", None)]
        return rows + _throughput(quick, Path(tmp))
