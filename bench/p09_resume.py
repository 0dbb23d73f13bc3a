"""P9: what an interruption costs — resume from the text on disk vs starting over.

Waste = completion tokens the server sent over all attempts / completion
tokens of the final answers (1.00 is nothing generated twice). Two jobs on
the fake Model Studio server (partial mode), each run with ``run.resume:
auto`` and, as the baseline in the same run, ``run.resume: fresh``:

- killed: long answers, the run SIGKILLed at random moments until it finishes;
- dropped: every stream cut once after 150 chunks (60 in quick mode), retried
  inside the run.

Then (full mode only) against the real llama-server at temperature 0
(prefill continuation): a run killed mid-generation and resumed, compared
with an uninterrupted run — the share of answers identical, and that no answer repeats its prefix.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import KEY_ENV, ROOT, fake_server, row


def _job(path: Path, base_url: str, prompts: list[dict[str, Any]], resume: str,
         concurrency: int, endpoint: dict[str, Any] | None = None) -> Path:
    ep = endpoint or {"base_url": base_url, "api_key_env": KEY_ENV, "continuation": "partial"}
    path.write_text(json.dumps({
        "name": "p9", "output_dir": str(path.parent / "out"), "endpoint": ep,
        "defaults": {"model": "qwen-plus", "max_tokens": 4000, "temperature": 0},
        "run": {"concurrency": concurrency, "resume": resume}, "prompts": prompts}))
    return path


def _start(job: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _attempted(db: Path) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT COUNT(DISTINCT run_id) FROM attempts").fetchone()[0])
    except sqlite3.Error:
        return 0


def _kill_until_done(job: Path, kills: int, rng: random.Random, lo: float, hi: float) -> int:
    """SIGKILL the run ``kills`` times, each lo..hi s after its first attempt; then let
    it finish. Returns the kills made (fewer if it finished first)."""
    db = job.parent / "out" / "p9" / "run.db"
    made = 0
    while True:
        before = _attempted(db)
        proc = _start(job)
        while _attempted(db) <= before and proc.poll() is None:
            time.sleep(0.02)
        if made >= kills:
            proc.wait()
            return made
        time.sleep(rng.uniform(lo, hi))
        if proc.poll() is not None:
            return made
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        made += 1


def _waste(server: Any, needed: int) -> tuple[float, int]:
    sent = sum(e["completion_tokens"] for e in server.control("ledger")["entries"])
    return sent / needed, sent


def _fake_runs(quick: bool, tmp: Path) -> list[str]:
    # 50 tokens a second, as a real model streams; the run killed every second or so
    n, length = (3, 120) if quick else (10, 1200)
    cut = min(150, length // 2)
    kills = 2 if quick else 12
    rows = []
    for scenario in ("killed", "dropped"):
        figures = {}
        for resume in ("auto", "fresh"):
            with fake_server() as server:
                where = tmp / f"{scenario}-{resume}"
                where.mkdir()
                fault = f" [[faults=cut@{cut}]]" if scenario == "dropped" else ""
                prompts = [{"id": f"a{i}", "prompt": f"[[len={length}]] [[delay=0.02]]{fault} "
                            f"report {i}"} for i in range(n)]
                job = _job(where / "job.yaml", server.base_url, prompts, resume, n)
                if scenario == "killed":
                    made = _kill_until_done(job, kills, random.Random(5), 0.5, 2.0)
                else:
                    made = 0
                    assert _start(job).wait() == 0
                # every answer whole (the fresh twin is identical by construction)
                results = [json.loads(x) for x in
                           (where / "out" / "p9" / "results.jsonl").read_text().splitlines()]
                assert len(results) == n, scenario
                figures[resume] = (*_waste(server, n * length), made)
        auto, fresh = figures["auto"], figures["fresh"]
        what = (f"{n} answers of {length} tokens, killed {auto[2]}× (fresh: {fresh[2]}×)"
                if scenario == "killed" else f"{n} answers of {length} tokens, each stream "
                f"cut once after {cut} chunks")
        rows.append(row(f"P9 waste, {what}",
                        f"resume **{auto[0]:.3f}×** ({auto[1]:,} tokens sent) vs starting "
                        f"over {fresh[0]:.3f}× ({fresh[1]:,})", "≤ 1.10×", auto[0] <= 1.10))
    return rows


def _local_runs(quick: bool, tmp: Path) -> list[str]:
    from batchgen.llama.server import check

    if quick:  # tests/llama/test_real_server.py resumes a killed run against the real server in CI
        return [row("P9 llama-server resume", "full mode only", "report", None)]
    found = check()
    if found.server is None or found.model is None:
        return [row("P9 llama-server resume", "skipped: llama-server / model not installed",
                    "report", None)]
    n = 3 if quick else 8
    prompts = [{"id": f"q{i}", "prompt": f"Write a detailed paragraph about the history of "
                f"the number {i + 2}."} for i in range(n)]
    endpoint = {"local": True}
    outputs = {}
    for name in ("clean", "killed"):
        where = tmp / f"local-{name}"
        where.mkdir()
        job = _job(where / "job.yaml", "", prompts, "auto", 2, endpoint)
        text = json.loads(job.read_text())
        text["defaults"] = {"max_tokens": 200, "temperature": 0, "seed": 1}
        job.write_text(json.dumps(text))
        if name == "killed":
            _kill_until_done(job, 2, random.Random(3), 0.8, 1.6)
        else:
            assert _start(job).wait() == 0
        outputs[name] = {json.loads(x)["id"]: json.loads(x) for x in
                         (where / "out" / "p9" / "results.jsonl").read_text().splitlines()}
    from batchgen.store.runstore import RunStore

    store = RunStore(tmp / "local-killed" / "out" / "p9" / "run.db", readonly=True)
    continued = store.continued()
    doubled = 0
    for request_id, parent in continued:
        prefix = store.chain_text(parent)
        content = outputs["killed"][request_id]["content"]
        doubled += not content.startswith(prefix) or content[len(prefix):].startswith(prefix)
    store.close()
    same = sum(outputs["killed"][k]["content"] == outputs["clean"][k]["content"]
               for k in outputs["clean"])
    return [row("P9 llama-server, temperature 0: killed run resumed (prefill) vs uninterrupted",
                f"{same}/{n} answers identical; {len(continued)} went on from their text; "
                f"{doubled} repeat their prefix", "no repeated prefix", doubled == 0)]


def run(quick: bool) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        return _fake_runs(quick, Path(tmp)) + _local_runs(quick, Path(tmp))
