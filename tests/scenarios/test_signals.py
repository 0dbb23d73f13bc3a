"""Ctrl-C, SIGTERM and kill -9 (also during back-offs) leave a run that resumes."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchgen.testing.fakeserver import Config, plan_for
from batchgen.testing.process import FakeProcess
from tests.helpers import ROOT, kill_until_done, read_results, run_cli, write_job

pytestmark = pytest.mark.slow


def start(job: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "-q", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def slow_job(tmp_path: Path, server: FakeProcess, n: int = 12, faults: str = "") -> Path:
    prompts = [{"id": f"s{i}", "prompt": f"[[len=60]] [[delay=0.03]]{faults} slow {i}"}
               for i in range(n)]
    job = write_job(tmp_path / "job.yaml", None, prompts, run={"concurrency": 5})
    job.write_text(job.read_text().replace("https://example.invalid/v1", server.base_url))
    return job


def wait_for_text(db: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if db.exists():
            with sqlite3.connect(db) as conn:
                try:
                    if conn.execute("SELECT COUNT(*) FROM segments").fetchone()[0] >= 2:
                        return
                except sqlite3.OperationalError:
                    pass
        time.sleep(0.05)
    raise AssertionError("no text was journaled")


def expected_text(prompt: str) -> str:
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": prompt}]}
    return "".join(plan_for(body, 1, Config()).tokens)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly_with_130_and_resumes(tmp_path: Path, fake_process: FakeProcess,
                                                   sig: signal.Signals) -> None:
    job = slow_job(tmp_path, fake_process)
    db = tmp_path / "out" / "t" / "run.db"
    proc = start(job)
    wait_for_text(db)
    if sig == signal.SIGINT:  # status works while the run is active
        status = run_cli("status", str(tmp_path / "out" / "t"))
        assert status.returncode == 0, status.stderr
        assert "running" in status.stdout and "not running" not in status.stdout
        streaming = int(status.stdout.split("streaming:")[1].split()[0])
        assert streaming >= 1
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "resume" in err
    with sqlite3.connect(db) as conn:
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM attempts GROUP BY status"))
        assert statuses.get("streaming", 0) == 0
        assert statuses["aborted"] >= 1
        partial = conn.execute(
            "SELECT COUNT(*) FROM attempts a JOIN segments s ON s.attempt_id = a.id "
            "JOIN usage u ON u.attempt_id = a.id WHERE a.status = 'aborted' AND u.estimated = 1"
        ).fetchone()[0]
        assert partial >= 1  # the aborted attempt kept its text and an estimated usage
    again = start(job)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    results = read_results(tmp_path / "out" / "t")
    assert [r["id"] for r in results] == [f"s{i}" for i in range(12)]
    for i, r in enumerate(results):
        assert r["content"] == expected_text(f"[[len=60]] [[delay=0.03]] slow {i}")


def test_second_ctrl_c_exits_at_once(tmp_path: Path, fake_process: FakeProcess) -> None:
    job = slow_job(tmp_path, fake_process)
    proc = start(job)
    wait_for_text(tmp_path / "out" / "t" / "run.db")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert time.monotonic() - t0 < 5
    again = start(job)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert len(read_results(tmp_path / "out" / "t")) == 12


def test_ctrl_c_while_a_big_job_is_read_exits_130_and_writes_nothing(tmp_path: Path) -> None:
    """Reading and checking a million prompts takes seconds: a Ctrl-C then got
    click's "Aborted!" and exit 1, which a cron wrapper reads as failed requests."""
    job = tmp_path / "big.jsonl"
    with job.open("w", encoding="utf-8") as fh:
        for i in range(1_000_000):
            fh.write(f'{{"id": "p{i}", "prompt": "prompt number {i}"}}\n')
    proc = start(job, "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--out",
                 str(tmp_path / "out"))
    time.sleep(1.0)  # started, and reading (~10 s here)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip() == ("batchgen: interrupted while reading the job; nothing was run or "
                           "written")
    assert not (tmp_path / "out").exists()


def test_kill_9_during_retry_backoff_resumes(tmp_path: Path) -> None:
    """Faults make requests sleep in back-off; kill -9 lands at random moments.
    Two servers (one per run) replay the same faults, so the texts must match."""
    prompts = [{"id": f"f{i}", "prompt": f"[[len=30]] [[delay=0.01]] "
                f"[[faults={['500,503', '429:ra=1', 'cut@5,500', 'errevent@3', 'ok'][i % 5]}]]"
                f" faulty {i}"} for i in range(10)]
    clean_server, killed_server = FakeProcess(), FakeProcess()
    try:
        jobs = []
        for name, server in (("clean", clean_server), ("killed", killed_server)):
            (tmp_path / name).mkdir()
            job = write_job(tmp_path / name / "job.yaml", None, prompts, run={"concurrency": 4})
            job.write_text(job.read_text().replace("https://example.invalid/v1", server.base_url))
            jobs.append(job)
        clean = start(jobs[0])
        _, err = clean.communicate(timeout=180)
        assert clean.returncode == 0, err
        kills = kill_until_done(lambda: start(jobs[1]), random.Random(11), 0.4, 2.0,
                                run_db=tmp_path / "killed" / "out" / "t" / "run.db")
        assert kills >= 1
        clean_results = read_results(tmp_path / "clean" / "out" / "t")
        killed_results = read_results(tmp_path / "killed" / "out" / "t")
        assert [r["content"] for r in killed_results] == [r["content"] for r in clean_results]
        for r in killed_results:
            text = (tmp_path / "killed" / "out" / "t" / "texts" / f"{r['id']}.md").read_text()
            assert text == r["content"]
        db = sqlite3.connect(tmp_path / "killed" / "out" / "t" / "run.db")
        assert db.execute("SELECT COUNT(*) FROM attempts WHERE status='streaming'"
                          ).fetchone()[0] == 0
        done = db.execute("SELECT request_id, COUNT(*) FROM attempts WHERE status='done' "
                          "GROUP BY request_id").fetchall()
        assert sorted(done) == sorted((f"f{i}", 1) for i in range(10))
        assert json.loads((tmp_path / "killed" / "out" / "t" / "failed.jsonl").read_text()
                          or "null") is None
    finally:
        clean_server.stop()
        killed_server.stop()
