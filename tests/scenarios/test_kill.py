"""Kill test: SIGKILL a real `batchgen run` at random moments, re-run until it
exits 0, and compare the outputs with an uninterrupted run byte for byte."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen.testing.process import FakeProcess
from tests.helpers import ROOT, kill_until_done, read_results, write_job

pytestmark = pytest.mark.slow


def start(job: Path, out: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", "run", str(job), "--out", str(out), "-q"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


ANSWER = ("id", "model", "content", "reasoning_content", "finish_reason", "fingerprint")


def snapshot(run_dir: Path) -> dict[str, object]:
    """Every text byte for byte, and each result's answer (its usage, attempts and
    continuations tell how it was bought, which a kill changes)."""
    files: dict[str, object] = {p.relative_to(run_dir).as_posix(): p.read_bytes()
                                for p in (run_dir / "texts").iterdir()}
    files["results"] = [{k: r.get(k) for k in ANSWER} for r in read_results(run_dir)]
    return files


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    tmp_path: Path, fake_process: FakeProcess
) -> None:
    prompts = [{"id": f"r{i:02d}", "prompt": f"[[len={30 + i % 20}]] [[delay=0.02]] essay {i}"}
               for i in range(24)]
    prompts += [{"id": "think", "model": "qwq-plus", "prompt": "[[delay=0.02]] reason"}]
    job = write_job(tmp_path / "job.yaml", None, prompts, run={"concurrency": 6},
                    endpoint={"continuation": "partial"})
    text = job.read_text().replace("https://example.invalid/v1", fake_process.base_url)
    job.write_text(text)

    clean = start(job, tmp_path / "clean")
    assert clean.wait(120) == 0, clean.stderr.read() if clean.stderr else ""
    paid_by_clean = len(fake_process.get("ledger")["entries"])

    rng = random.Random(int(os.environ.get("KILL_SEED", "7")))
    kills = kill_until_done(lambda: start(job, tmp_path / "killed"), rng, 0.3, 2.0,
                            run_db=tmp_path / "killed" / "t" / "run.db")
    assert kills >= 2, "the run finished before it could be killed twice; slow it down"

    clean_dir, killed_dir = tmp_path / "clean" / "t", tmp_path / "killed" / "t"
    assert snapshot(killed_dir) == snapshot(clean_dir)
    db = sqlite3.connect(killed_dir / "run.db")
    # one finished attempt per request; the killed ones are recorded as aborted
    done = db.execute("SELECT COUNT(*) FROM attempts WHERE status='done'").fetchone()[0]
    assert done == len(prompts)
    assert db.execute("SELECT COUNT(*) FROM attempts WHERE status='streaming'").fetchone()[0] == 0
    aborted = db.execute("SELECT COUNT(*) FROM attempts WHERE status='aborted'").fetchone()[0]
    assert aborted > 0
    # every aborted attempt that streamed something carries an estimated usage row
    assert db.execute(
        "SELECT COUNT(*) FROM attempts a JOIN segments s ON s.attempt_id = a.id "
        "LEFT JOIN usage u ON u.attempt_id = a.id WHERE a.status='aborted' AND u.estimated IS NOT 1"
    ).fetchone()[0] == 0
    # Nothing is bought twice but the text in flight at a kill: what arrived
    # since the last flush (0.2 s, 10 tokens here) and what was still on the
    # wire. The thinking request is not continued: it starts over.
    ledger = fake_process.get("ledger")["entries"]
    clean, killed = ledger[:paid_by_clean], ledger[paid_by_clean:]
    assert {e["key"] for e in killed if e["complete"]} == {e["key"] for e in clean}
    needed = sum(e["completion_tokens"] for e in clean if e["model"] != "qwq-plus")
    sent = sum(e["completion_tokens"] for e in killed if e["model"] != "qwq-plus")
    in_flight = kills * 6 * 15
    assert needed <= sent <= needed + in_flight, (sent, needed, kills)
    continued = [r for r in read_results(killed_dir) if r.get("continuations")]
    assert continued, "no answer went on from its text"
    assert all(r["model"] != "qwq-plus" for r in continued)
