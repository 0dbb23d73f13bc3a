"""A server that misbehaves on purpose, full and read-only disks, stopped processes.

Every case ends the way a user expects: paid answers are kept, a failure
stays with its request (recorded, retried or failed with a reason), the exit
code is never 0 while a request is unfinished, and errors are messages, not
tracebacks.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchgen import load_job, run_job
from batchgen.engine.engine import Engine
from batchgen.engine.journal import Journal
from batchgen.engine.runner import RunOptions
from batchgen.errors import TransientError
from batchgen.testing.fakeserver import FakeServer
from batchgen.testing.process import FakeProcess
from tests.helpers import CANARY, ROOT, Body, no_sleep, read_results, run_cli, write_job


def opts() -> RunOptions:
    return RunOptions(sleep=no_sleep, flush_interval=0.05)


def attempts(run_dir: Path, rid: str) -> list[tuple[str, str | None]]:
    db = sqlite3.connect(run_dir / "run.db")
    return db.execute("SELECT status, error_class FROM attempts WHERE request_id=? ORDER BY n",
                      (rid,)).fetchall()


def segments(db: Path) -> int:
    try:
        return int(sqlite3.connect(db).execute("SELECT COUNT(*) FROM segments").fetchone()[0])
    except sqlite3.Error:
        return 0  # not created yet


# ------------------------------------------------------------ odd answers


@pytest.mark.parametrize("kind", ["num", "list", "obj"])
def test_one_bad_chunk_fails_its_request_and_loses_no_other(tmp_path: Path, fake: FakeServer,
                                                             kind: str) -> None:
    prompts = [{"id": f"ok{i:02d}", "prompt": f"[[len=20]] fine {i}"} for i in range(30)]
    prompts.insert(7, {"id": "bad", "prompt": f"[[faults=badcontent@2:{kind},"
                                              f"badcontent@2:{kind},badcontent@2:{kind}]] x"})
    job = write_job(tmp_path / "job.yaml", fake, prompts, run={"max_attempts": 3})
    summary = run_job(load_job(job), opts())
    assert (summary.done, summary.failed, summary.exit_code) == (30, 1, 1)
    run_dir = tmp_path / "out" / "t"
    assert len(read_results(run_dir)) == 30
    assert attempts(run_dir, "bad") == [("error", "malformed_chunk")] * 3
    failed = [json.loads(line) for line in (run_dir / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["bad"]
    status = run_cli("status", str(run_dir))
    assert "bad: malformed_chunk" in status.stdout


def test_headers_and_usage_that_do_not_parse_never_cost_a_paid_answer(
    tmp_path: Path, fake: FakeServer
) -> None:
    job = write_job(tmp_path / "job.yaml", fake, [
        {"id": "retry-after", "prompt": "[[faults=429]] [[header=Retry-After:1.5s]] a"},
        {"id": "reset", "prompt": "[[header=x-ratelimit-remaining-requests:0|"
                                  "x-ratelimit-reset-requests:1.2.3s]] b"},
        {"id": "usage", "prompt": "[[faults=badusage@3]] c"},
    ])
    summary = run_job(load_job(job), opts())
    assert (summary.done, summary.failed, summary.pending, summary.exit_code) == (3, 0, 0, 0)
    results = {r["id"]: r for r in read_results(tmp_path / "out" / "t")}
    assert results["reset"]["attempts"] == 1  # streamed and paid once, kept
    assert results["usage"]["usage"]["estimated"] is True and results["usage"]["content"]
    assert attempts(tmp_path / "out" / "t", "retry-after")[0] == ("error", "rate_limited")


def test_an_unexpected_error_fails_its_request_with_a_reason(
    tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = Journal.open

    def open_(self: Journal, p: object, **kw: object) -> object:
        if getattr(p, "id", "") == "boom":
            raise KeyError("a bug nobody foresaw")
        return real_open(self, p, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Journal, "open", open_)
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "a"},
                                                  {"id": "boom", "prompt": "b"}])
    summary = run_job(load_job(job), opts())
    assert (summary.done, summary.failed, summary.exit_code) == (1, 1, 1)
    status = run_cli("status", str(tmp_path / "out" / "t"))
    assert "boom: internal_error: KeyError: 'a bug nobody foresaw'" in status.stdout


def test_the_exit_code_is_never_0_while_a_request_is_unfinished(
    tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Engine._request

    async def forgetful(self: Engine, p: object) -> None:
        if getattr(p, "id", "") != "lost":
            await real(self, p)  # type: ignore[arg-type]

    monkeypatch.setattr(Engine, "_request", forgetful)
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "a"},
                                                  {"id": "lost", "prompt": "b"}])
    summary = run_job(load_job(job), opts())
    assert summary.done == 1 and summary.pending == 1
    assert summary.exit_code == 1


def test_a_server_that_does_not_stream_is_read_once_not_bought_again(
    tmp_path: Path, fake: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A 200 whose body is one JSON object instead of an event stream (a server
    or gateway that ignores ``stream``): a whole answer is kept from its one
    attempt, with its reasoning and the usage it billed; an error object is
    that error (moderation: failed, not asked again); a page that is neither
    says what came, instead of "0 chunks"."""
    job = write_job(tmp_path / "job.yaml", fake, [
        {"id": "whole", "prompt": "[[len=6]] [[faults=whole:json]] a"},
        {"id": "bare", "prompt": "[[len=4]] [[faults=whole:bare]] bare"},
        {"id": "refused", "prompt": "[[faults=whole:error]] b"},
        {"id": "page", "prompt": "[[faults=whole:html,whole:html]] c"},
    ], run={"max_attempts": 2})
    with caplog.at_level("WARNING", logger="batchgen.wire.stream"):
        summary = run_job(load_job(job), opts())
    assert (summary.done, summary.failed, summary.exit_code) == (2, 2, 1)
    run_dir = tmp_path / "out" / "t"
    result, bare = read_results(run_dir)
    # no finish reason, no usage: the body ended whole all the same; usage estimated
    assert bare["id"] == "bare" and bare["attempts"] == 1 and bare["content"]
    assert bare["finish_reason"] is None and bare["usage"]["estimated"] is True
    assert result["id"] == "whole" and result["attempts"] == 1
    assert result["content"] and result["content"] == (run_dir / "texts" / "whole.md").read_text()
    assert result["reasoning_content"] == "thought" and result["finish_reason"] == "stop"
    assert result["usage"]["completion_tokens"] == 7 and not result["usage"].get("estimated")
    assert attempts(run_dir, "refused") == [("error", "moderation")]
    assert attempts(run_dir, "page") == [("error", "incomplete_stream")] * 2
    status = run_cli("status", str(run_dir)).stdout
    assert "not an event stream (text/html)" in status and "Sign in" in status
    assert "instead of an event stream" in caplog.text
    assert fake.ledger.requests == 5  # one call each, and the page's two attempts


def test_an_event_stream_without_events_is_a_stream_cut_short() -> None:
    """Only keep-alive comments, then the end: not "no event stream" (it was
    one) but the usual stream that ended before its answer."""
    from batchgen.wire import stream
    from batchgen.wire.chunks import StreamResult

    def http(kind: str) -> Body:
        return Body([], {"content-type": kind})

    result = StreamResult()
    stream._not_a_stream(http("text/event-stream; charset=utf-8"), b": ping\n\n: ping\n\n",
                         lambda c, r: None, result, str)
    assert not result.complete
    with pytest.raises(TransientError, match=r"not an event stream \(text/plain\): ': ping"):
        stream._not_a_stream(http("text/plain"), b": ping\n\n", lambda c, r: None, result, str)


@pytest.mark.parametrize("fault", ["bigline:20", "gzipbomb:64"])
def test_an_event_past_the_size_cap_fails_the_attempt(tmp_path: Path, fake: FakeServer,
                                                      fault: str) -> None:
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "x", "prompt": f"[[faults={fault}]]"}])
    summary = run_job(load_job(job), opts())
    assert summary.done == 1
    tried = attempts(tmp_path / "out" / "t", "x")
    assert tried[0] == ("error", "oversized_event") and tried[-1] == ("done", None)


def peak_rss(job: Path) -> tuple[str, int]:
    """(exit code, peak RSS in MB) of `batchgen run job -q` in its own process."""
    code = ("import resource, sys\nfrom batchgen.cli import main\n"
            "try:\n    main(['run', sys.argv[1], '-q'])\nexcept SystemExit as e:\n"
            "    print(e.code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(job)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300, check=False)
    exit_code, rss_kb = proc.stdout.split()[-2:]
    return exit_code, int(rss_kb) // 1024


def test_a_gzip_bomb_does_not_take_the_memory(tmp_path: Path, fake: FakeServer) -> None:
    """Two events of 256 MiB, compressed to ~260 KB each on the wire, cost no more
    memory than the event cap (8 MiB) allows: a plain run is the baseline."""
    base = write_job(tmp_path / "base.yaml", fake, [{"id": f"x{i}", "model": "fake-model",
                                                     "prompt": f"[[len=20]] {i}"}
                                                    for i in range(2)], name="base")
    bomb = write_job(tmp_path / "bomb.yaml", fake,
                     [{"id": f"x{i}", "model": "fake-model",
                       "prompt": f"[[faults=gzipbomb:256]] {i}"} for i in range(2)],
                     run={"max_attempts": 1}, name="bomb")
    base_code, base_rss = peak_rss(base)
    bomb_code, bomb_rss = peak_rss(bomb)
    assert (base_code, bomb_code) == ("0", "1")  # the bombs failed: oversized_event
    assert bomb_rss - base_rss < 64, f"{bomb_rss} MB against {base_rss} MB for a plain run"


def test_redirects_are_not_followed(tmp_path: Path, fake: FakeServer) -> None:
    codes = (301, 302, 307, 308)
    job = write_job(tmp_path / "job.yaml", fake,
                    [{"id": f"r{c}", "prompt": f"[[faults=redirect:{c}]]"} for c in codes])
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 1
    for c in codes:
        assert attempts(tmp_path / "out" / "t", f"r{c}") == [("error", "redirect")]
    status = run_cli("status", str(tmp_path / "out" / "t"))
    assert "127.0.0.2:9/steal" in status.stdout  # the message names the target


def test_control_characters_from_a_server_are_shown_escaped(tmp_path: Path,
                                                            fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "[[faults=ansi]]"}])
    proc = run_cli("run", str(job), "-q", "-v")
    status = run_cli("status", str(tmp_path / "out" / "t"))
    for out in (proc.stdout + proc.stderr, status.stdout + status.stderr):
        assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[31m" in status.stdout


def test_keep_alives_forever_end_at_max_duration(tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "[[faults=keepalive@2]]"}],
                    run={"max_duration": 1.0, "idle_timeout": 0.5})
    summary = run_job(load_job(job), opts())
    assert summary.done == 1
    assert attempts(tmp_path / "out" / "t", "a") == [("error", "max_duration"), ("done", None)]


def test_a_stopped_process_keeps_its_streams(tmp_path: Path,
                                             fake_process: FakeProcess) -> None:
    """SIGSTOP for longer than idle_timeout: the bytes wait in the socket; on
    SIGCONT they are read, not declared idle and bought again."""
    prompts = [{"id": f"s{i}", "prompt": f"[[len=50]] [[delay=0.06]] stream {i}"}
               for i in range(4)]
    job = write_job(tmp_path / "job.yaml", None, prompts,
                    run={"idle_timeout": 1.0, "concurrency": 4})
    job.write_text(job.read_text().replace("https://example.invalid/v1", fake_process.base_url))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "out" / "t" / "run.db"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and segments(db) < 4:  # stop it mid-stream
        time.sleep(0.05)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(3.0)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    results = read_results(tmp_path / "out" / "t")
    assert [r["attempts"] for r in results] == [1, 1, 1, 1]
    assert len(fake_process.get("ledger")["entries"]) == 4  # nothing bought twice


# ------------------------------------------------------------- job files


def test_ids_equal_but_for_case_are_refused_naming_both_lines(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("defaults: {model: m}\nprompts:\n  - {id: Foo, prompt: a}\n"
                   "  - {id: bar, prompt: b}\n  - {id: foo, prompt: c}\n")
    proc = run_cli("validate", str(job))
    assert proc.returncode == 2
    assert f"{job}:5: id: id 'foo' differs from 'Foo' (line 3) only in case" in proc.stderr
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "prompt": "x"}) + "\n"
                             for i in ("A1", "b", "a1", "B")))
    proc = run_cli("validate", str(jsonl), "--model", "m")
    assert proc.returncode == 2
    assert "p.jsonl:3: id: id 'a1' differs from 'A1' (line 1)" in proc.stderr
    assert "p.jsonl:4: id: id 'B' differs from 'b' (line 2)" in proc.stderr


def test_an_id_whose_answer_file_is_another_answer_s_reasoning_is_refused(tmp_path: Path,
                                                                          fake: FakeServer) -> None:
    # texts/x.reasoning.md is the answer of 'x.reasoning' and the reasoning of 'x': the
    # one written last replaced the other
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "prompt": "x"}) + "\n"
                             for i in ("x.reasoning", "y", "X", "z.reasoning")))
    proc = run_cli("validate", str(jsonl), "--model", "m")
    assert proc.returncode == 2
    assert ("p.jsonl:3: id: id 'X' clashes with 'x.reasoning' (line 1): texts/x.reasoning.md "
            "would be both the answer of 'x.reasoning' and the reasoning of 'X'") in proc.stderr
    assert "z.reasoning" not in proc.stderr  # alone, it clashes with nothing
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "y.reasoning", "prompt": "a"},
                                                  {"id": "y", "prompt": "b"}])
    proc = run_cli("run", str(job))
    assert proc.returncode == 2 and "id 'y' clashes with 'y.reasoning'" in proc.stderr
    assert fake.ledger.entries == []


def test_a_job_file_may_not_pick_any_variable_as_its_key(tmp_path: Path, fake: FakeServer,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", CANARY)
    job = write_job(tmp_path / "job.yaml", fake, [{"prompt": "x"}],
                    endpoint={"api_key_env": "GITHUB_TOKEN"})
    proc = run_cli("run", str(job))
    assert proc.returncode == 2
    assert "GITHUB_TOKEN does not look like an API-key variable" in proc.stderr
    assert "--api-key-env GITHUB_TOKEN" in proc.stderr
    assert fake.ledger.requests == 0 and not (tmp_path / "out").exists()
    assert run_cli("run", str(job), "--api-key-env", "GITHUB_TOKEN", "-q").returncode == 0
    allowed = run_cli("validate", str(job), env={"BATCHGEN_ALLOWED_KEY_ENVS": "X,GITHUB_TOKEN"})
    assert allowed.returncode == 0
    assert run_cli("validate", str(job), "--allow-key-env", "GITHUB_TOKEN").returncode == 0


def test_a_fifo_is_refused_not_read_forever(tmp_path: Path) -> None:
    fifo = tmp_path / "more.jsonl"
    os.mkfifo(fifo)
    job = tmp_path / "job.yaml"
    job.write_text("defaults: {model: m}\nprompts_file: more.jsonl\n")
    proc = run_cli("validate", str(job), timeout=30)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr
    assert run_cli("validate", str(fifo), timeout=30).returncode == 2


def test_an_empty_run_db_beside_finished_texts_stops_unless_forced(tmp_path: Path,
                                                                   fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "x"}])
    assert run_cli("run", str(job), "-q").returncode == 0
    run_dir = tmp_path / "out" / "t"
    for name in ("run.db", "run.db-wal", "run.db-shm"):
        if (run_dir / name).exists():
            (run_dir / name).unlink()
    (run_dir / "run.db").write_bytes(b"")
    bought = fake.ledger.requests
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 2 and "run.db is empty" in proc.stderr and "--force" in proc.stderr
    assert fake.ledger.requests == bought
    assert run_cli("run", str(job), "-q", "--force").returncode == 0
    assert fake.ledger.requests == bought + 1


def test_status_on_a_damaged_run_db_is_a_message(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.db").write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    for args in (["status", str(run_dir)], ["report", str(run_dir)]):
        proc = run_cli(*args)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "run.db" in proc.stderr


# ------------------------------------------------------------- disks

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      check=False, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@needs_root
def test_a_full_disk_stops_buying_and_keeps_what_is_saved(
    tmp_path: Path, fake_process: FakeProcess, small_disk: Path
) -> None:
    prompts = [{"id": f"r{i:02d}", "prompt": f"[[len=8000]] long answer {i}"} for i in range(30)]
    job = write_job(tmp_path / "job.yaml", None, prompts, run={"concurrency": 4})
    text = job.read_text().replace("https://example.invalid/v1", fake_process.base_url)
    job.write_text(text.replace(str(tmp_path / "out"), str(small_disk)))
    proc = run_cli("run", str(job), "-q", timeout=300)
    assert proc.returncode == 74, proc.stderr
    assert f"no space left on {small_disk / 't'}" in proc.stderr
    assert "requests done" in proc.stderr and "free space and run again" in proc.stderr
    assert "Traceback" not in proc.stderr
    sent = len(fake_process.get("ledger")["entries"])
    assert sent < 30, "it went on buying after the disk was full"
    db = sqlite3.connect(small_disk / "t" / "run.db")
    done = [r[0] for r in db.execute("SELECT id FROM requests WHERE state='done'")]
    db.close()
    # the summary counts what the store holds (an answer whose commit the disk refused
    # is not done), and names no report: none was written
    assert proc.stdout.startswith(f"t: {len(done)} done, 0 failed, {30 - len(done)} not run")
    word = "request" if len(done) == 1 else "requests"
    assert f"{len(done)} {word} done, {30 - len(done)} not finished" in proc.stderr
    assert "cost report" not in proc.stdout and not (small_disk / "t" / "report.md").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run_cli("run", str(job), "-q", timeout=300)
    assert again.returncode == 0, again.stderr
    results = {r["id"]: r for r in read_results(small_disk / "t")}
    assert len(results) == 30
    complete: dict[str, int] = {}
    for entry in fake_process.get("ledger")["entries"]:
        if entry["complete"]:
            complete[entry["key"]] = complete.get(entry["key"], 0) + 1
    # bought twice: at most what streamed, or had just finished in the commit the disk
    # refused, when the disk filled (concurrency 4 each)
    assert sum(complete.values()) <= 30 + 2 * 4
    for rid in done:  # what was saved stays saved
        assert (small_disk / "t" / "texts" / f"{rid}.md").read_text() == results[rid]["content"]


@needs_root
def test_read_only_disks_give_messages(tmp_path: Path, fake: FakeServer,
                                       small_disk: Path) -> None:
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "x"}])
    job.write_text(job.read_text().replace(str(tmp_path / "out"), str(small_disk)))
    assert run_cli("run", str(job), "-q").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    run_dir = small_disk / "t"
    status = run_cli("status", str(run_dir))
    assert status.returncode == 0 and "done:      1" in status.stdout, status.stderr
    report = run_cli("report", str(run_dir))
    assert report.returncode == 0 and "qwen-plus" in report.stdout, report.stderr
    other = write_job(tmp_path / "other.yaml", fake, [{"id": "b", "prompt": "y"}], name="o")
    other.write_text(other.read_text().replace(str(tmp_path / "out"), str(small_disk)))
    proc = run_cli("run", str(other), "-q")
    assert proc.returncode == 74 and "Traceback" not in proc.stderr
    assert "cannot write to" in proc.stderr and "Read-only file system" in proc.stderr
