"""An outage of the endpoint loses nothing: waited out, or the run stops with
every unfinished request pending (exit 69), and the next run goes on.

Real processes on loopback: `batchgen run` and the fake API, which is
stopped mid-run and started again on the same port.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from batchgen.testing.fakeserver import Config, FakeServer, plan_for
from batchgen.testing.process import FakeProcess
from tests.helpers import CANARY, ROOT, read_results, run_cli, write_job


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job_at(tmp_path: Path, port: int, n: int, **run: object) -> Path:
    prompts = [{"id": f"q{i}", "prompt": f"[[len=30]][[delay=0.02]] outage {i}"}
               for i in range(n)]
    job = write_job(tmp_path / "job.yaml", None, prompts, run={"concurrency": 4, **run})
    job.write_text(job.read_text().replace("https://example.invalid/v1",
                                           f"http://127.0.0.1:{port}/compatible-mode/v1"))
    return job


def start(job: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "--progress",
                             "lines"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def done_so_far(run_dir: Path) -> int:
    import sqlite3

    try:
        with sqlite3.connect(run_dir / "run.db") as db:
            return int(db.execute("SELECT COUNT(*) FROM requests WHERE state='done'"
                                  ).fetchone()[0])
    except sqlite3.Error:
        return 0


def wait_for(check: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def expected(i: int) -> str:
    body = {"model": "qwen-plus",
            "messages": [{"role": "user", "content": f"[[len=30]][[delay=0.02]] outage {i}"}]}
    return "".join(plan_for(body, 1, Config()).tokens)


def test_a_server_gone_mid_run_is_waited_out_and_nothing_fails(tmp_path: Path) -> None:
    port = free_port()
    server = FakeProcess("--api-key", CANARY, port=port)
    job = job_at(tmp_path, port, 24)
    run_dir = tmp_path / "out" / "t"
    proc = start(job)
    try:
        wait_for(lambda: done_so_far(run_dir) >= 4, 60)
        server.stop()  # the endpoint goes away mid-run, streams cut
        time.sleep(6)
        server = FakeProcess("--api-key", CANARY, port=port)  # back, same address
        out, err = proc.communicate(timeout=120)
    finally:
        server.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    results = read_results(run_dir)
    assert [r["id"] for r in results] == [f"q{i}" for i in range(24)]
    assert all(r["content"] == expected(int(r["id"][1:])) for r in results)
    assert (run_dir / "failed.jsonl").read_text() == ""
    assert "endpoint unreachable since" in out + err  # said while it waited
    import sqlite3

    with sqlite3.connect(run_dir / "run.db") as db:
        # the probes during ~6 s down: 1, 2, 4 s apart, so a handful, not a storm
        failures = db.execute("SELECT COUNT(*) FROM attempts WHERE status='error'"
                              ).fetchone()[0]
    assert failures <= 4 + 6 + 7, failures  # the streams cut, then the probes


def test_an_outage_past_its_timeout_stops_with_69_and_every_request_pending(
        tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    job = job_at(tmp_path, port, 5, outage_timeout=3)
    run_dir = tmp_path / "out" / "t"
    began = time.monotonic()
    proc = start(job)
    wait_for((run_dir / "run.db").exists, 30)
    wait_for(lambda: "unreachable" in run_cli("status", str(run_dir)).stdout, 30)
    status = run_cli("status", str(run_dir)).stdout
    out, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - began
    assert proc.returncode == 69, err[-3000:]
    assert elapsed < 3 + 4 + 10  # the timeout, one probe interval, start-up
    assert "connection refused" in status and "next try in" in status, status
    assert "pending, none failed" in err and "run.outage_timeout" in out
    assert (run_dir / "failed.jsonl").read_text() == ""  # nothing failed on its own
    after = run_cli("status", str(run_dir)).stdout
    assert "pending:   5" in after and "failed:    0" in after
    # the server comes back; the same command again finishes the job
    with FakeProcess("--api-key", CANARY, port=port):
        again = run_cli("run", str(job), "-q")
    assert again.returncode == 0, again.stderr
    assert len(read_results(run_dir)) == 5


def test_an_endpoint_that_takes_connections_and_never_answers_is_an_outage(
        tmp_path: Path) -> None:
    """A gateway that accepts every connection and sends nothing: each attempt
    ends at run.idle_timeout without a response. Before, each request spent its
    attempts on it and failed for good (exit 1); now it is an outage: exit 69,
    none failed, and the same command finishes the job once the endpoint answers."""
    import threading

    held: list[socket.socket] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = int(listener.getsockname()[1])

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])  # read nothing, answer nothing

    threading.Thread(target=accept, daemon=True).start()
    job = job_at(tmp_path, port, 4, idle_timeout=0.3, outage_timeout=4, max_attempts=2)
    run_dir = tmp_path / "out" / "t"
    try:
        proc = run_cli("run", str(job), "-q", timeout=60)
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept: the port is free again
        listener.close()
        for conn in held:
            conn.close()
    assert proc.returncode == 69, proc.stderr[-3000:]
    assert "no response within run.idle_timeout" in proc.stderr, proc.stderr[-3000:]
    assert (run_dir / "failed.jsonl").read_text() == ""
    with FakeProcess("--api-key", CANARY, port=port):
        again = run_cli("run", str(job), "-q")
    assert again.returncode == 0, again.stderr
    assert len(read_results(run_dir)) == 4


def test_a_host_name_that_does_not_resolve_is_an_outage(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job.yaml", None, [{"id": "a", "prompt": "hi"}],
                    run={"outage_timeout": 2})
    job.write_text(job.read_text().replace("https://example.invalid/v1",
                                           "https://no-such-host.invalid/v1"))
    proc = run_cli("run", str(job), "-q", timeout=60)
    assert proc.returncode == 69, proc.stderr
    assert "1 request is pending, none failed" in proc.stderr  # was "1 requests are"
    assert (tmp_path / "out" / "t" / "failed.jsonl").read_text() == ""
    kept = json.loads(_meta(tmp_path / "out" / "t", "outage"))
    assert kept["reason"] == "the host name does not resolve", kept


def _meta(run_dir: Path, key: str) -> str:
    import sqlite3

    with sqlite3.connect(run_dir / "run.db") as db:
        return str(db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])


def test_server_errors_that_answers_end_at_once_are_one_line_of_the_summary(
        tmp_path: Path, fake: FakeServer) -> None:
    """Three requests get a 500 at once while three others stream: an outage
    begins, and the first answer ends it before any probe. The summary said
    each such moment as "unreachable for 0 s ... 0 probes"; it is one line."""
    prompts = [{"id": f"f{i}", "prompt": f"[[faults=500,ok]] f{i}"} for i in range(3)] + [
        {"id": f"s{i}", "prompt": f"[[len=30]][[delay=0.01]] s{i}"} for i in range(3)]
    job = write_job(tmp_path / "job.yaml", fake, prompts, run={"concurrency": 6})
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 0, proc.stderr
    assert "unreachable for" not in proc.stdout
    assert "new starts were held 1 time, " in proc.stdout
    assert "as the endpoint looked down (HTTP 500 from every answer); an answer came back " \
        "each time before any probe, and no request failed for it" in proc.stdout
