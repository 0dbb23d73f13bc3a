"""--via batch: the provider's Batch API, with nothing submitted twice and nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from batchgen import load_job, run_job
from batchgen.engine.runner import RunOptions
from batchgen.errors import BatchApiError
from batchgen.jobs.load import Overrides
from batchgen.testing.fakeserver import FakeServer
from batchgen.testing.process import FakeProcess
from tests.helpers import ROOT, FakeTime, no_sleep, read_results, run_cli, write_job


def prompts(n: int, faults: dict[int, str] | None = None) -> list[dict[str, Any]]:
    faults = faults or {}
    return [{"id": f"b{i:02d}", "prompt": f"[[len={12 + i}]] batch item {i}"
             + (f" [[faults={faults[i]}]]" if i in faults else "")} for i in range(n)]


def batch_run(job: Path, **overrides: Any) -> Any:
    return run_job(load_job(job, Overrides(via="batch", **overrides)),
                   RunOptions(sleep=no_sleep, flush_interval=0.05))


def complete_per_request(entries: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in entries:
        if e["complete"]:
            out[e["key"]] = out.get(e["key"], 0) + 1
    return out


def control(port: int, what: str, payload: dict[str, Any] | None = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    url = f"http://127.0.0.1:{port}/_control/{what}"
    with urllib.request.urlopen(urllib.request.Request(url, data=data)) as response:
        return json.loads(response.read())


def test_a_batch_run_collects_into_the_usual_outputs(tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, prompts(10, {3: "400", 5: "500"}),
                    endpoint={"region": "cn"})
    summary = batch_run(job)
    assert (summary.done, summary.failed, summary.exit_code) == (9, 1, 1)
    run_dir = tmp_path / "out" / "t"
    results = read_results(run_dir)
    assert [r["id"] for r in results] == [f"b{i:02d}" for i in range(10) if i != 3]
    for r in results:
        assert (run_dir / "texts" / f"{r['id']}.md").read_text() == r["content"]
        assert "estimated" not in r["usage"]
    failed = [json.loads(x) for x in (run_dir / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["b03"]
    # the 500 went into a second batch; every request answered exactly once
    assert len(fake.batches.state.order) == 2
    assert set(complete_per_request(fake.ledger.entries).values()) == {1}
    assert all(e.get("via") == "batch" for e in fake.ledger.entries)  # nothing streamed
    report = json.loads((run_dir / "report.json").read_text())
    assert report["batch"]["requests"] == 9
    (row,) = report["rows"]
    assert report["batch"]["cost"]["CNY"] == pytest.approx(row["cost"])
    assert report["batch"]["saved"]["CNY"] == pytest.approx(row["cost"])  # half price
    status = run_cli("status", str(run_dir))
    assert "completed (collected), 8/10 done, 2 failed" in status.stdout


def test_no_wait_submits_once_then_collects(tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, prompts(6))
    first = run_cli("run", str(job), "--via", "batch", "--no-wait")
    assert first.returncode == 5, first.stderr
    batch_id = fake.batches.state.order[0]
    assert batch_id in first.stdout and "run the same command again" in first.stderr
    assert "t: 6 requests to run" in first.stderr  # not 0: none was in a batch yet
    codes = [run_cli("run", str(job), "--via", "batch", "--no-wait").returncode
             for _ in range(4)]
    assert codes[0] == 5 and codes[-1] == 0  # progress, then collected
    assert fake.batches.state.order == [batch_id]  # never a second batch
    assert len(read_results(tmp_path / "out" / "t")) == 6


def test_an_expired_batch_sends_its_unanswered_lines_again(tmp_path: Path,
                                                         fake: FakeServer) -> None:
    fake.batches.state.settings.update(end="expired", answer=4)
    job = write_job(tmp_path / "job.yaml", fake, prompts(10))
    first = batch_run(job, no_wait=False)
    # the first batch expired with 4 answered; the next ones expire too, answering 4 each
    assert first.exit_code == 0
    assert set(complete_per_request(fake.ledger.entries).values()) == {1}
    assert len(read_results(tmp_path / "out" / "t")) == 10
    assert len(fake.batches.state.order) == 3


def test_fallback_stream_streams_what_an_expired_batch_left(tmp_path: Path,
                                                          fake: FakeServer) -> None:
    fake.batches.state.settings.update(end="expired", answer=3)
    job = write_job(tmp_path / "job.yaml", fake, prompts(8))
    summary = batch_run(job, fallback="stream")
    assert (summary.done, summary.exit_code) == (8, 0)
    via = [e.get("via", "stream") for e in fake.ledger.entries if e["complete"]]
    assert sorted(via) == ["batch"] * 3 + ["stream"] * 5
    assert set(complete_per_request(fake.ledger.entries).values()) == {1}


def test_answers_that_must_fit_a_schema_are_checked_and_asked_again(
        tmp_path: Path, fake: FakeServer) -> None:
    """A batch answer to a schema is checked as a streamed one is: one that does
    not fit is an invalid attempt (priced, shown apart) and goes into the next
    batch, up to run.max_invalid times. It was recorded done, prose and all,
    with ``"json": null``."""
    schema = {"type": "object", "required": ["name"]}
    job = write_job(tmp_path / "job.yaml", fake, [
        {"id": "fixed", "prompt": "[[json=prose,valid]] a"},
        {"id": "never", "prompt": "[[json=prose]] b"},
        {"id": "fine", "prompt": "[[json=valid]] c"}],
        defaults={"model": "qwen-plus", "schema": schema, "schema_mode": "json_object"},
        run={"max_invalid": 1})
    summary = batch_run(job)
    assert (summary.done, summary.failed, summary.exit_code) == (2, 1, 1)
    run_dir = tmp_path / "out" / "t"
    results = {r["id"]: r for r in read_results(run_dir)}
    assert sorted(results) == ["fine", "fixed"]
    assert results["fixed"]["attempts"] == 2 and results["fixed"]["json"]["name"]
    assert json.loads((run_dir / "texts" / "fixed.json").read_text()) == results["fixed"]["json"]
    failed = [json.loads(x) for x in (run_dir / "failed.jsonl").read_text().splitlines()]
    assert [(f["id"], f["schema"]) for f in failed] == [("never", schema)]
    assert len(fake.batches.state.order) == 2  # the invalid ones went again, once
    assert all(e.get("via") == "batch" for e in fake.ledger.entries)
    assert "failed never: schema: the answer is not JSON" in run_cli("status", str(run_dir)).stdout
    assert "- invalid answers: qwen-plus: 3 attempts" in (run_dir / "report.md").read_text()


class Recorded:
    """A Progress that keeps what it was told."""

    def __init__(self) -> None:
        self.total = self.done = self.failed = 0
        self.notes: list[str] = []

    def start(self, total: int, skipped: int) -> None:
        self.total = total

    def update(self, *, done: int = 0, failed: int = 0, tokens: int = 0,
               in_flight: int = 0) -> None:
        self.done += done
        self.failed += failed

    def note(self, text: str) -> None:
        self.notes.append(text)

    def close(self) -> None:
        pass


def test_progress_counts_what_was_recorded_not_what_the_batch_answered(
        tmp_path: Path, fake: FakeServer) -> None:
    """An answer that does not fit its schema, or a 5xx line, goes into the next
    batch: the progress counted it done from the batch's own count each time it
    was answered ("7/3 done, 0 failed" for a run that ended 2 done, 1 failed).
    It counts outcomes as they are recorded; the batch's count is a note."""
    job = write_job(tmp_path / "job.yaml", fake, [
        {"id": "fixed", "prompt": "[[json=prose,valid]] a"},
        {"id": "never", "prompt": "[[json=prose]] b"},
        {"id": "fine", "prompt": "[[json=valid]] c"}],
        defaults={"model": "qwen-plus", "schema": {"type": "object", "required": ["name"]},
                  "schema_mode": "json_object"}, run={"max_invalid": 1})
    progress = Recorded()
    summary = run_job(load_job(job, Overrides(via="batch")),
                      RunOptions(sleep=no_sleep, flush_interval=0.05, progress=progress))
    assert (summary.done, summary.failed) == (2, 1)
    assert (progress.total, progress.done, progress.failed) == (3, 2, 1)
    assert any("answered" in n for n in progress.notes), progress.notes


def test_files_split_per_model_and_line_cap(tmp_path: Path, fake: FakeServer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from batchgen.batch_api import client as batchapi

    monkeypatch.setattr(batchapi, "MAX_LINES", 4)
    monkeypatch.setattr(batchapi.chunks, "__defaults__", (4, batchapi.MAX_BYTES))
    items = prompts(9)
    for item in items[5:]:
        item["model"] = "qwen-max"
    job = write_job(tmp_path / "job.yaml", fake, items)
    assert batch_run(job).exit_code == 0
    sizes = []
    for batch_id in fake.batches.state.order:
        batch = fake.batches.state.batches[batch_id]
        lines = fake.batches.state.files[batch["input_file_id"]]["data"].splitlines()
        models = {json.loads(x)["body"]["model"] for x in lines}
        assert len(models) == 1  # one model a file
        sizes.append(len(lines))
    assert sorted(sizes) == [1, 4, 4]  # 5 qwen-plus in 4 + 1, 4 qwen-max


def test_stream_only_models_are_refused_before_anything_is_sent(tmp_path: Path,
                                                               fake: FakeServer) -> None:
    items = prompts(3)
    items[1]["model"] = "qwq-plus"
    items[2]["model"] = "qwen3-32b"
    job = write_job(tmp_path / "job.yaml", fake, items)
    proc = run_cli("run", str(job), "--via", "batch")
    assert proc.returncode == 2
    assert "qwen3-32b, qwq-plus accept only streamed calls" in proc.stderr
    assert fake.batches.state.files == {} and fake.ledger.requests == 0
    assert not (tmp_path / "out").exists()


def start(job: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "--via", "batch",
                             "--no-wait", "-q"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(("delay", "event"), [
    ("delay_upload_after", "upload"),  # the file is there; its answer lost
    ("delay_create_before", None),  # uploaded; the create not made yet
    ("delay_create_after", "create"),  # the batch exists; its answer lost
])
def test_a_kill_between_remote_steps_never_makes_two_batches(
    tmp_path: Path, fake_process: FakeProcess, delay: str, event: str | None
) -> None:
    port = fake_process.port
    job = write_job(tmp_path / "job.yaml", None, prompts(5))
    job.write_text(job.read_text().replace("https://example.invalid/v1", fake_process.base_url))
    control(port, "batch", {delay: 30})
    proc = start(job)
    deadline = time.monotonic() + 60
    wanted = event or "upload"
    while time.monotonic() < deadline:
        if any(e[0] == wanted for e in control(port, "batches")["events"]):
            break
        time.sleep(0.05)
    time.sleep(0.5)  # inside the held-back answer (or the held-back create)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    control(port, "batch", {delay: 0})
    for _ in range(8):
        again = start(job)
        _, err = again.communicate(timeout=60)
        if again.returncode == 0:
            break
        assert again.returncode == 5, err
    assert again.returncode == 0, err
    seen = control(port, "batches")
    # one upload and one batch for these requests, whatever the moment of the kill
    # (a kill in a held-back create may leave that create to finish after the kill)
    assert sum(e[0] == "upload" for e in seen["events"]) == 1
    assert len(seen["batches"]) == 1
    entries = fake_process.get("ledger")["entries"]
    assert set(complete_per_request(entries).values()) == {1} and len(entries) == 5
    assert len(read_results(tmp_path / "out" / "t")) == 5


def test_a_kill_while_the_batch_runs_collects_it_later(tmp_path: Path,
                                                      fake_process: FakeProcess) -> None:
    job = write_job(tmp_path / "job.yaml", None, prompts(4))
    job.write_text(job.read_text().replace("https://example.invalid/v1", fake_process.base_url))
    proc = subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "--via",
                             "batch", "-q"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not control(fake_process.port, "batches")["batches"]:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the batch keeps running at the provider
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    code = 5
    for _ in range(6):
        code = run_cli("run", str(job), "--via", "batch", "--no-wait").returncode
        if code != 5:
            break
    assert code == 0
    assert len(control(fake_process.port, "batches")["batches"]) == 1
    assert len(read_results(tmp_path / "out" / "t")) == 4


def test_a_failing_batch_api_is_retried_then_reported(tmp_path: Path, fake: FakeServer) -> None:
    fake.batches.state.settings["fail"] = 3  # three calls answer 503, then it recovers
    job = write_job(tmp_path / "job.yaml", fake, prompts(3))
    summary = batch_run(job)
    assert (summary.done, summary.exit_code) == (3, 0)
    fake.batches.state.settings["fail"] = 1000  # down for good
    job2 = write_job(tmp_path / "job2.yaml", fake, prompts(2), name="down")
    with pytest.raises(BatchApiError, match="run the same command again") as info:
        batch_run(job2)
    assert info.value.exit_code == 1 and "HTTP 503" in str(info.value)


def worst_printed(proc: subprocess.CompletedProcess[str]) -> float:
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "worst case:" in x)
    return float(line.split()[2].replace(",", ""))


def test_a_dry_run_via_batch_prices_at_the_batch_price_and_refuses_what_a_run_would(
        tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, prompts(4), endpoint={"region": "cn"},
                    defaults={"model": "qwen-plus", "max_tokens": 2000})
    streamed = run_cli("run", str(job), "--dry-run")
    batched = run_cli("run", str(job), "--dry-run", "--via", "batch")
    assert "at the Batch API price" in batched.stdout
    assert worst_printed(batched) == pytest.approx(worst_printed(streamed) / 2, rel=1e-3)
    refused = run_cli("run", str(job), "--dry-run", "--via", "batch", "--model", "qwq-plus")
    assert refused.returncode == 2
    assert "qwq-plus accepts only streamed calls" in refused.stderr
    assert fake.batches.state.files == {} and fake.ledger.requests == 0
    assert not (tmp_path / "out").exists()


def test_an_unreachable_batch_api_is_an_outage_then_exit_69_and_nothing_sent_twice(
        tmp_path: Path, fake: FakeServer) -> None:
    """A Batch API call that reaches no server is the endpoint's outage, waited
    out (one try at a time, 1 s doubling) up to run.outage_timeout; then the run
    stops, exit 69, every request pending, none failed. It gave up after eight
    failed calls (~60 s) with exit 1. The next run, at an endpoint named
    otherwise (so every request changed), drops the batch the first one planned
    and never created, instead of sending both: each request answered once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens there once it is closed
    job = write_job(tmp_path / "job.yaml", fake, prompts(3), run={"outage_timeout": 30})
    time_ = FakeTime()
    start = time_.now
    summary = run_job(load_job(job, Overrides(via="batch",
                                              base_url=f"http://127.0.0.1:{closed}/v1")),
                      RunOptions(sleep=time_.sleep, clock=time_.clock, flush_interval=0.05))
    assert (summary.exit_code, summary.pending, summary.failed) == (69, 3, 0)
    assert 30 <= time_.now - start <= 30 + 60
    assert any("run.outage_timeout 30 s" in n for n in summary.notes), summary.notes
    summary = batch_run(job)
    assert (summary.done, summary.exit_code) == (3, 0)
    assert len(fake.batches.state.order) == 1
    assert set(complete_per_request(fake.ledger.entries).values()) == {1}
    status = run_cli("status", str(tmp_path / "out" / "t")).stdout
    assert (f"(not created yet): dropped: planned for http://127.0.0.1:{closed}/v1, not "
            "sent there") in status, status


def test_a_prompt_edited_while_its_batch_runs_gets_the_answer_to_its_new_text(
        tmp_path: Path, fake: FakeServer) -> None:
    """The batch of the old text ends: that answer is paid for, kept as an
    attempt (superseded), and is not the request's; the new text goes into a
    batch of its own. Before, the old answer was recorded as the request's."""
    job = write_job(tmp_path / "job.yaml", fake, prompts(3))
    assert run_cli("run", str(job), "--via", "batch", "--no-wait").returncode == 5
    spec = json.loads(job.read_text())
    spec["prompts"][1]["prompt"] = "[[len=5]] batch item one, edited"
    job.write_text(json.dumps(spec))
    codes = [run_cli("run", str(job), "--via", "batch", "--no-wait").returncode
             for _ in range(8)]
    assert codes[-1] == 0, codes
    run_dir = tmp_path / "out" / "t"
    results = {r["id"]: r for r in read_results(run_dir)}
    assert results["b01"]["usage"]["completion_tokens"] == 5  # the edited text's answer
    assert [results[k]["usage"]["completion_tokens"] for k in ("b00", "b02")] == [12, 14]
    assert len(fake.batches.state.order) == 2
    import sqlite3

    with sqlite3.connect(run_dir / "run.db") as db:
        kinds = db.execute("SELECT error_class FROM attempts WHERE request_id='b01' "
                           "ORDER BY id").fetchall()
    assert kinds == [("superseded",), (None,)], kinds


def test_an_edit_undone_while_batches_run_is_not_sent_a_third_time(
        tmp_path: Path, fake: FakeServer) -> None:
    """Edited, then edited back while both batches run: the first batch holds
    the request as it is again, so it is not planned into a third batch; the
    second's answer is the superseded one."""
    job = write_job(tmp_path / "job.yaml", fake, prompts(2))
    original = job.read_text()
    assert run_cli("run", str(job), "--via", "batch", "--no-wait").returncode == 5
    spec = json.loads(original)
    spec["prompts"][1]["prompt"] = "[[len=5]] batch item one, edited"
    job.write_text(json.dumps(spec))
    assert run_cli("run", str(job), "--via", "batch", "--no-wait").returncode == 5
    job.write_text(original)
    codes = [run_cli("run", str(job), "--via", "batch", "--no-wait").returncode
             for _ in range(8)]
    assert codes[-1] == 0, codes
    assert len(fake.batches.state.order) == 2
    results = {r["id"]: r for r in read_results(tmp_path / "out" / "t")}
    assert results["b01"]["usage"]["completion_tokens"] == 13  # the text as it is


@pytest.mark.parametrize("verdict", ["fail", "keep", "retry"])
def test_a_loop_in_a_batch_answer_is_found_when_it_arrives(tmp_path: Path, fake: FakeServer,
                                                           verdict: str) -> None:
    """A batch cannot be left early, so a looping answer is paid for whole; but
    it was recorded done as it came, loop and all. It is now found when it
    arrives and run.guard.on_repetition applies as for a stream: fail (the
    text to the loop's first copy in texts/<id>.partial.md), keep (done with
    that text, finish_reason repetition) or retry (into the next batch)."""
    job = write_job(tmp_path / "job.yaml", fake, [
        {"id": "loop", "prompt": "[[len=2000]][[loop=300]] a report"},
        {"id": "fine", "prompt": "[[len=40]] a note"}],
        run={"guard": {"on_repetition": verdict}, "max_attempts": 2})
    summary = batch_run(job)
    run_dir = tmp_path / "out" / "t"
    results = {r["id"]: r for r in read_results(run_dir)}
    assert results["fine"]["finish_reason"] == "stop"
    texts = run_dir / "texts"
    if verdict == "fail":
        assert (summary.done, summary.failed, summary.exit_code) == (1, 1, 1)
        kept = (texts / "loop.partial.md").read_text()
        assert 300 < len(kept) < 2000 and not (texts / "loop.md").exists()
        assert "loop: repetition: a degenerate loop" in run_cli("status", str(run_dir)).stdout
    elif verdict == "keep":
        assert (summary.done, summary.exit_code) == (2, 0)
        assert results["loop"]["finish_reason"] == "repetition"
        assert 300 < len(results["loop"]["content"]) < 2000
        assert results["loop"]["usage"]["completion_tokens"] == 2000  # paid for whole
    else:  # the fake loops again: asked up to max_attempts, then it fails
        assert (summary.done, summary.failed) == (1, 1)
        assert len(fake.batches.state.order) == 2
    report = json.loads((run_dir / "report.json").read_text())
    assert report["rows"][0]["completion_tokens"] >= 2040  # every looping token is priced
