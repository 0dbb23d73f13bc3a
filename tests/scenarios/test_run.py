"""End-to-end runs against the loopback fake API (in process)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batchgen import load_job, run_job
from batchgen.engine.runner import RunOptions
from batchgen.errors import UsageError
from batchgen.jobs.load import Overrides
from batchgen.store.lock import RunLock
from batchgen.testing.fakeserver import Config, FakeServer, plan_for
from tests.helpers import CANARY, KEY_ENV, no_sleep, read_results, run_cli, write_job


def opts() -> RunOptions:
    return RunOptions(sleep=no_sleep, flush_interval=0.05)


def ledger(fake: FakeServer) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "body"} for e in fake.ledger.entries]


def test_run_writes_texts_results_and_usage(tmp_path: Path, fake: FakeServer) -> None:
    job_file = write_job(tmp_path / "job.yaml", fake, [
        {"id": "intro", "prompt": "请介绍一下自己"},
        {"id": "think", "model": "qwq-plus", "prompt": "Why is the sky blue?"},
        {"id": "essay", "prompt": "[[len=60]] write an essay", "max_tokens": 2048},
    ])
    summary = run_job(load_job(job_file), opts())
    assert (summary.done, summary.failed, summary.exit_code) == (3, 0, 0)
    run_dir = tmp_path / "out" / "t"
    results = read_results(run_dir)
    assert [r["id"] for r in results] == ["intro", "think", "essay"]
    by_id = {r["id"]: r for r in results}
    for entry in fake.ledger.entries:
        body = entry["body"]
        plan = plan_for(body, 1, Config())
        rid = {"请介绍一下自己": "intro", "Why is the sky blue?": "think"}.get(
            body["messages"][-1]["content"], "essay")
        result = by_id[rid]
        # exactly the generated text, nothing added
        assert result["content"] == "".join(plan.tokens)
        assert (run_dir / "texts" / f"{rid}.md").read_text(encoding="utf-8") == result["content"]
        assert result["usage"]["prompt_tokens"] == entry["prompt_tokens"]
        assert result["usage"]["completion_tokens"] == entry["completion_tokens"]
        assert "estimated" not in result["usage"]
        assert entry["stream"] and entry["include_usage"]
    assert by_id["think"]["reasoning_content"]
    assert (run_dir / "texts" / "think.reasoning.md").read_text(encoding="utf-8") == by_id[
        "think"]["reasoning_content"]
    assert by_id["think"]["usage"]["reasoning_tokens"] > 0
    assert not (run_dir / "texts" / "intro.reasoning.md").exists()
    assert by_id["essay"]["finish_reason"] == "stop"
    assert all(r["attempts"] == 1 for r in results)
    assert all(len(r["fingerprint"]) == 64 for r in results)
    assert (run_dir / "failed.jsonl").read_text() == ""


def test_rerun_skips_finished_requests_without_calls(tmp_path: Path, fake: FakeServer) -> None:
    job_file = write_job(tmp_path / "job.yaml", fake,
                         [{"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(5)])
    run_job(load_job(job_file), opts())
    calls = fake.ledger.requests
    results = tmp_path / "out" / "t" / "results.jsonl"
    before, written = results.read_bytes(), results.stat()
    summary = run_job(load_job(job_file), opts())
    assert fake.ledger.requests == calls
    assert (summary.skipped, summary.done, summary.exit_code) == (5, 0, 0)
    assert results.read_bytes() == before
    # outputs that are current are not written again (a rerun of a big job stays cheap)
    assert (results.stat().st_ino, results.stat().st_mtime_ns) == (written.st_ino,
                                                                   written.st_mtime_ns)


def test_changed_prompt_runs_again_and_keeps_old_attempt(tmp_path: Path, fake: FakeServer) -> None:
    prompts = [{"id": "a", "prompt": "first version"}, {"id": "b", "prompt": "unchanged"}]
    job_file = write_job(tmp_path / "job.yaml", fake, prompts)
    run_job(load_job(job_file), opts())
    prompts[0]["prompt"] = "second version"
    write_job(job_file, fake, prompts)
    summary = run_job(load_job(job_file), opts())
    assert (summary.done, summary.skipped) == (1, 1)
    results = read_results(tmp_path / "out" / "t")
    new = plan_for({"model": "qwen-plus",
                    "messages": [{"role": "user", "content": "second version"}]}, 1, Config())
    assert results[0]["content"] == "".join(new.tokens)
    db = sqlite3.connect(tmp_path / "out" / "t" / "run.db")
    assert db.execute("SELECT COUNT(*) FROM attempts WHERE request_id='a'").fetchone()[0] == 2


def test_answers_bought_again_after_an_edit_are_said_before_and_at_the_run(
        tmp_path: Path, fake: FakeServer) -> None:
    # raising defaults.max_tokens changes every request: all are bought again, and a
    # dry run now says how many of those were answered before
    prompts = [{"id": f"p{i}", "prompt": f"prompt {i}"} for i in range(3)]
    job_file = write_job(tmp_path / "job.yaml", fake, prompts,
                         defaults={"max_tokens": 100})
    assert not run_job(load_job(job_file), opts()).notes
    write_job(job_file, fake, prompts, defaults={"max_tokens": 200})
    plan = run_cli("run", str(job_file), "--dry-run").stdout
    assert ("to run:        3 (3 of them answered before, with a prompt, model, parameters "
            "or endpoint since changed: bought again)") in plan
    summary = run_job(load_job(job_file), opts())
    assert summary.done == 3 and summary.notes == [
        "3 requests answered before are bought again: their prompt, model, parameters or "
        "endpoint changed since; `batchgen run --dry-run` says so before a run"]
    plan = run_cli("run", str(job_file), "--dry-run").stdout
    assert "to run:        0\n" in plan and "answered before" not in plan
    assert not run_job(load_job(job_file), opts()).notes
    # a new prompt is not 'answered before'
    write_job(job_file, fake, [*prompts, {"id": "new", "prompt": "n"}],
              defaults={"max_tokens": 200})
    assert "to run:        1\n" in run_cli("run", str(job_file), "--dry-run").stdout


def test_answers_the_job_no_longer_has_are_kept_and_said(tmp_path: Path,
                                                          fake: FakeServer) -> None:
    # a request removed from the job (or another job run under the same name, as two
    # unnamed job dicts in one notebook) leaves results.jsonl; its answer stays, said
    prompts = [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}]
    job_file = write_job(tmp_path / "job.yaml", fake, prompts)
    assert not run_job(load_job(job_file), opts()).notes
    write_job(job_file, fake, prompts[1:])
    summary = run_job(load_job(job_file), opts())
    run_dir = tmp_path / "out" / "t"
    assert [r["id"] for r in read_results(run_dir)] == ["b"]
    assert (run_dir / "texts" / "a.md").is_file()
    assert summary.notes == [f"1 answer in {run_dir} is for requests the job no longer has "
                             "(removed, data rows edited, or another job of this name): kept "
                             "in run.db and texts/, left out of results.jsonl"]
    assert not run_job(load_job(job_file), opts()).notes  # said when the job changes
    write_job(job_file, fake, prompts)  # back in the job: done, not bought again
    sent = fake.ledger.requests
    summary = run_job(load_job(job_file), opts())
    assert (summary.skipped, summary.notes, fake.ledger.requests) == (2, [], sent)


def test_identical_prompts_are_two_requests(tmp_path: Path, fake: FakeServer) -> None:
    job_file = write_job(tmp_path / "job.yaml", fake, [{"prompt": "same"}, {"prompt": "same"}])
    summary = run_job(load_job(job_file), opts())
    assert summary.done == 2
    ids = [r["id"] for r in read_results(tmp_path / "out" / "t")]
    assert len(set(ids)) == 2 and ids[1] == ids[0] + "-2"


def test_cut_stream_is_retried_and_the_partial_attempt_is_kept(
    tmp_path: Path, fake: FakeServer
) -> None:
    job_file = write_job(tmp_path / "job.yaml", fake,
                         [{"id": "cut", "prompt": "[[len=30]] [[faults=cut@10]]"}])
    summary = run_job(load_job(job_file), opts())
    assert summary.done == 1
    result = read_results(tmp_path / "out" / "t")[0]
    assert result["attempts"] == 2
    db = sqlite3.connect(tmp_path / "out" / "t" / "run.db")
    status, partial, est = db.execute(
        "SELECT a.status, group_concat(s.content, ''), u.estimated FROM attempts a "
        "JOIN segments s ON s.attempt_id = a.id JOIN usage u ON u.attempt_id = a.id "
        "WHERE a.n = 1").fetchone()
    assert status == "error" and est == 1
    assert result["content"].startswith(partial) and len(partial) < len(result["content"])


def test_failed_request_lands_in_failed_jsonl_in_job_file_form(
    tmp_path: Path, fake: FakeServer
) -> None:
    job_file = write_job(tmp_path / "job.yaml", fake, [
        {"id": "ok", "prompt": "fine"},
        {"id": "bad", "prompt": "[[faults=400]] refused", "temperature": 0.3, "tags": ["x"]},
    ])
    summary = run_job(load_job(job_file), opts())
    assert (summary.done, summary.failed, summary.exit_code) == (1, 1, 1)
    failed = tmp_path / "out" / "t" / "failed.jsonl"
    entry = json.loads(failed.read_text())
    assert entry["id"] == "bad" and entry["temperature"] == 0.3 and entry["tags"] == ["x"]
    # the file is a job file: it validates and runs as is
    job = load_job(failed, Overrides(base_url=fake.base_url, api_key_env=KEY_ENV,
                                     out=str(tmp_path / "again")))
    assert job.info.requests == 1
    assert next(job.requests()).body == json.loads(
        sqlite3.connect(tmp_path / "out" / "t" / "run.db")
        .execute("SELECT body FROM requests WHERE id='bad'").fetchone()[0])


def test_missing_key_is_exit_2_and_writes_nothing(tmp_path: Path, fake: FakeServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    job_file = write_job(tmp_path / "job.yaml", fake, [{"prompt": "x"}])
    with pytest.raises(UsageError, match=KEY_ENV):
        run_job(load_job(job_file), opts())
    proc = run_cli("run", str(job_file), env={KEY_ENV: ""})
    assert proc.returncode == 2
    assert KEY_ENV in proc.stderr
    # a plain-http endpoint may be a server of the user's own that takes no key
    assert f"for a server that takes no key, any value will do (export {KEY_ENV}=none)" \
        in proc.stderr
    assert not (tmp_path / "out").exists()
    https = run_cli("run", str(job_file), "--base-url", "https://api.example.com/v1",
                    env={KEY_ENV: ""})
    assert https.returncode == 2 and "any value" not in https.stderr


def test_locked_run_directory_exits_75_and_touches_nothing(tmp_path: Path,
                                                           fake: FakeServer) -> None:
    job_file = write_job(tmp_path / "job.yaml", fake, [{"prompt": "x"}])
    run_dir = tmp_path / "out" / "t"
    run_dir.mkdir(parents=True)
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        proc = run_cli("run", str(job_file))
    finally:
        lock.release()
    assert proc.returncode == 75, proc.stderr
    assert "another batchgen run" in proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    assert fake.ledger.requests == 0


@pytest.mark.parametrize("command", ["status", "report"])
def test_status_or_report_of_a_directory_without_a_run_is_exit_2(tmp_path: Path,
                                                                 command: str) -> None:
    proc = run_cli(command, str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert f"{tmp_path} holds no run (no run.db)" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("where", ["out", "out/t"])
def test_a_file_where_the_run_directory_goes_is_exit_2_and_sends_nothing(
        tmp_path: Path, fake: FakeServer, where: str) -> None:
    job_file = write_job(tmp_path / "job.yaml", fake, [{"prompt": "x"}])
    in_the_way = tmp_path / where
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_text("keep me\n")
    proc = run_cli("run", str(job_file))
    assert proc.returncode == 2, proc.stderr
    assert f"{in_the_way} is a file, not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert in_the_way.read_text() == "keep me\n"
    assert fake.ledger.requests == 0


def test_cli_run_and_status(tmp_path: Path, fake: FakeServer) -> None:
    job_file = write_job(tmp_path / "job.yaml", fake, [
        {"id": "a", "prompt": "one"}, {"id": "b", "prompt": "[[faults=404]] two"}])
    proc = run_cli("run", str(job_file), "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert "1 done" in proc.stdout and "1 failed" in proc.stdout
    status = run_cli("status", str(tmp_path / "out" / "t"))
    assert status.returncode == 0
    assert "done:      1" in status.stdout and "failed:    1" in status.stdout
    assert "b: http_404" in status.stdout
    assert CANARY not in proc.stdout + proc.stderr + status.stdout + status.stderr
    # the same for scripts and monitoring
    said = json.loads(run_cli("status", str(tmp_path / "out" / "t"), "--format", "json").stdout)
    assert {k: said[k] for k in ("running", "requests", "done", "failed", "pending",
                                 "streaming", "attempts")} == {
        "running": False, "requests": 2, "done": 1, "failed": 1, "pending": 0,
        "streaming": 0, "attempts": 2}
    assert said["run_dir"] == str(tmp_path / "out" / "t")
    (failure,) = said["failures"]
    assert failure.startswith("b: http_404")


def test_status_counts_failures_by_reason_once_more_fail_than_are_listed(
        tmp_path: Path, fake: FakeServer) -> None:
    # a parameter the endpoint refuses fails every request alike: ten lines of the
    # same error said nothing of the other 26, nor that they all failed for it
    items = [{"id": f"b{i:02d}", "prompt": f"[[faults=400]] {i}"} for i in range(30)]
    items += [{"id": f"n{i}", "prompt": f"[[faults=404]] {i}"} for i in range(6)]
    job_file = write_job(tmp_path / "job.yaml", fake, items)
    proc = run_cli("run", str(job_file), "--quiet")
    assert proc.returncode == 1
    run_dir = str(tmp_path / "out" / "t")
    # the log names ten a reason, then says where the rest are counted
    assert proc.stderr.count("failed for good: http_400") == 10, proc.stderr
    assert proc.stderr.count("failed for good: http_404") == 6
    assert proc.stderr.count(f"`batchgen status {run_dir}` counts them") == 1
    status = run_cli("status", run_dir).stdout
    assert "  failed for: 30 × http_400 HTTP 400 invalid_parameter_error: fake 400\n" \
           "  failed for: 6 × http_404 HTTP 404" in status, status
    assert status.count("\n  failed b") == 10  # the first ten by id, as before
    said = json.loads(run_cli("status", run_dir, "--format", "json").stdout)
    assert [r["requests"] for r in said["failure_reasons"]] == [30, 6]
    # as many listed as failed: no count to add
    assert "failed for:" not in run_cli("status", run_dir, "--failed", "36").stdout


@pytest.mark.parametrize("flag", ["--base-url", "--model", "--name", "--out", "--api-key-env"])
def test_an_empty_flag_is_refused_not_ignored(tmp_path: Path, flag: str) -> None:
    # `--base-url "$VLLM_URL"` with the variable unset sent the job to the default
    # endpoint (Model Studio) with the user's key; the others fell back silently
    job_file = write_job(tmp_path / "job.yaml", None, [{"prompt": "x"}])
    proc = run_cli("run", str(job_file), flag, "", "--dry-run")
    assert proc.returncode == 2, proc.stdout
    assert f"batchgen: {flag} is empty (an unset variable in a script?)" in proc.stderr
    assert run_cli("validate", str(job_file), flag, " ").returncode == 2
    import batchgen

    empty: dict[str, Any] = {flag[2:].replace("-", "_"): ""}
    with pytest.raises(UsageError, match="is empty"):
        batchgen.run(str(job_file), **empty)
    assert not (tmp_path / "out").exists()


def test_flags_override_the_job_file(tmp_path: Path, fake: FakeServer) -> None:
    job_file = write_job(tmp_path / "job.yaml", None, [{"prompt": "x"}])
    proc = run_cli("run", str(job_file), "--base-url", fake.base_url, "--name", "renamed",
                   "--out", str(tmp_path / "elsewhere"), "--model", "qwen-max",
                   "--concurrency", "2", "--progress", "lines")
    assert proc.returncode == 0, proc.stderr
    results = read_results(tmp_path / "elsewhere" / "renamed")
    assert results[0]["model"] == "qwen-max"
    assert "renamed: 1 request to run" in proc.stderr  # one request, said as one


def test_jsonl_job_with_flags(tmp_path: Path, fake: FakeServer) -> None:
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(
        json.dumps({"id": "j1", "prompt": "hello"}) + "\n\n"
        + json.dumps({"custom_id": "b1", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "qwen-turbo",
                               "messages": [{"role": "user", "content": "hi"}],
                               "enable_thinking": False}}) + "\n",
        encoding="utf-8")
    proc = run_cli("run", str(jsonl), "--base-url", fake.base_url, "--api-key-env", KEY_ENV,
                   "--model", "qwen-plus", "--out", str(tmp_path / "o"), "-q")
    assert proc.returncode == 0, proc.stderr
    results = read_results(tmp_path / "o" / "prompts")
    assert [(r["id"], r["model"]) for r in results] == [("j1", "qwen-plus"), ("b1", "qwen-turbo")]
    sent = {e["body"]["model"]: e["body"] for e in fake.ledger.entries}
    assert sent["qwen-turbo"]["enable_thinking"] is False
    assert sent["qwen-turbo"]["stream"] is True
