"""Shards on many machines: stable membership, merge, shared limits in a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from batchgen import load_job, run_job
from batchgen.engine.runner import RunOptions
from batchgen.jobs.load import Overrides
from batchgen.testing.fakeserver import FakeServer
from batchgen.testing.process import FakeProcess
from tests.helpers import ROOT, RedisServer, no_sleep, read_results, run_cli, write_job


def prompts(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": f"req-{i:03d}", "prompt": f"[[len={20 + i % 30}]] item {i}",
             "tags": ["even" if i % 2 == 0 else "odd"]} for i in range(start, start + n)]


def ids_of(job: Path, shard: str, *args: str) -> list[str]:
    proc = run_cli("validate", str(job), "--shard", shard, "--format", "json", *args)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["shard"] == shard and data["requests"] == len(data["ids"])
    return list(data["ids"])


def run_shard(job: Path, k: int, n: int) -> None:
    summary = run_job(load_job(job, Overrides(shard=(k, n))),
                      RunOptions(sleep=no_sleep, flush_interval=0.05))
    assert summary.exit_code == 0


def test_membership_is_stable_when_prompts_are_appended(tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, prompts(60))
    before = {k: ids_of(job, f"{k}/4") for k in range(1, 5)}
    everything = [i for k in range(1, 5) for i in before[k]]
    assert sorted(everything) == [f"req-{i:03d}" for i in range(60)]  # each id once
    assert all(before[k] for k in before)  # no empty shard at this size
    write_job(job, fake, prompts(60) + prompts(25, start=60))
    for k in range(1, 5):
        after = ids_of(job, f"{k}/4")
        assert after[:len(before[k])] == before[k]  # appending moved nothing
    monkey = {**os.environ, "JOB_COMPLETION_INDEX": "2"}
    indexed = run_cli("validate", str(job), "--shard", "index/4", "--format", "json", env=monkey)
    assert json.loads(indexed.stdout)["ids"] == ids_of(job, "3/4")
    bad = run_cli("validate", str(job), "--shard", "index/4",
                  env={"JOB_COMPLETION_INDEX": "", "BATCHGEN_SHARD_INDEX": ""})
    assert bad.returncode == 2 and "JOB_COMPLETION_INDEX" in bad.stderr


def test_merged_shards_equal_the_unsharded_run_byte_for_byte(tmp_path: Path,
                                                           fake: FakeServer) -> None:
    whole = write_job(tmp_path / "whole.yaml", fake, prompts(30), output_dir=str(tmp_path / "a"),
                      endpoint={"region": "cn"})
    run_job(load_job(whole), RunOptions(sleep=no_sleep))
    split = write_job(tmp_path / "split.yaml", fake, prompts(30), output_dir=str(tmp_path / "b"),
                      endpoint={"region": "cn"})
    for k in (1, 2, 3):
        run_shard(split, k, 3)
    assert (tmp_path / "b" / "t" / "shard-2-of-3" / "run.db").exists()
    merged = run_cli("merge", str(tmp_path / "b" / "t"))
    assert merged.returncode == 0, merged.stderr
    a, b = tmp_path / "a" / "t", tmp_path / "b" / "t"
    assert (b / "results.jsonl").read_bytes() == (a / "results.jsonl").read_bytes()
    assert sorted(p.name for p in (b / "texts").iterdir()) == sorted(
        p.name for p in (a / "texts").iterdir())
    for text in (a / "texts").iterdir():
        assert (b / "texts" / text.name).read_bytes() == text.read_bytes()
    assert (b / "failed.jsonl").read_bytes() == (a / "failed.jsonl").read_bytes()
    report = json.loads((b / "report.json").read_text())
    assert sum(r["requests_done"] for r in report["rows"]) == 30
    assert report["runs"] == [str(b / f"shard-{k}-of-3") for k in (1, 2, 3)]
    assert (b / "report.html").exists() and (b / "report.md").exists()
    status = run_cli("status", str(b))
    assert status.returncode == 0
    assert "3 of 3 shards" in status.stdout and "all shards: 30 requests, 30 done" in status.stdout
    said = json.loads(run_cli("status", str(b), "--format", "json").stdout)
    assert said["all"] == {"requests": 30, "done": 30, "streaming": 0, "pending": 0,
                           "failed": 0}
    assert sorted(said["shards"]) == [f"shard-{k}-of-3" for k in (1, 2, 3)]
    assert said["not_started"] == []
    assert sum(shard["done"] for shard in said["shards"].values()) == 30
    # `batchgen report` of the job's directory stands for all its shards
    asked = run_cli("report", str(b), "--format", "json")
    assert asked.returncode == 0, asked.stderr
    again = json.loads(asked.stdout)
    assert again["runs"] == report["runs"] and again["rows"] == report["rows"]


def test_a_data_jobs_shards_merge_into_the_table_of_the_unsharded_run(
        tmp_path: Path, fake: FakeServer) -> None:
    """Each shard writes its own rows' table; merge writes the table of every
    row in data order, at output.table, as the unsharded run writes it (before,
    a sharded data job had no table but the shards' own); export of the job's
    directory writes it too."""
    rows = [{"doc": f"d{i}", "text": f"[[len={5 + i}]] row {i}"} for i in range(12)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)),
                                         encoding="utf-8")

    def data_job(name: str) -> Path:
        path = write_job(tmp_path / f"{name}.yaml", fake, [], output_dir=str(tmp_path / name),
                         endpoint={"region": "cn"})
        spec = json.loads(path.read_text())
        del spec["prompts"]
        spec.update(data={"path": "rows.jsonl", "id": "doc"}, template={"prompt": "{{ text }}"},
                    output={"table": f"{name}-table.csv"})
        path.write_text(json.dumps(spec))
        return path

    run_job(load_job(data_job("whole")), RunOptions(sleep=no_sleep))
    split = data_job("split")
    for k in (1, 2, 3):
        run_shard(split, k, 3)
    job_dir = tmp_path / "split" / "t"
    assert (job_dir / "shard-1-of-3" / "table.csv").exists()
    merged = run_cli("merge", str(job_dir))
    assert merged.returncode == 0, merged.stderr
    table = (tmp_path / "split-table.csv").read_text(encoding="utf-8")
    assert table == (tmp_path / "whole-table.csv").read_text(encoding="utf-8")
    assert [line.split(",")[0] for line in table.splitlines()[1:]] == [
        r["doc"] for r in reversed(rows)]
    assert f"table: {tmp_path / 'split-table.csv'}" in merged.stdout
    exported = run_cli("export", str(job_dir), "--format", "jsonl")
    assert exported.returncode == 0, exported.stderr
    assert Path(exported.stdout.strip()) == job_dir / "table.jsonl"
    assert len((job_dir / "table.jsonl").read_text().splitlines()) == 12


def test_merged_answers_to_a_schema_and_speech_are_the_unsharded_runs(
        tmp_path: Path, fake: FakeServer) -> None:
    """texts/<id>.json of an answer to a schema, audio/<id>.wav of a speech
    answer and texts/<id>.partial.md of a loop the guard stopped come with the
    merge, and results.jsonl names the audio as the unsharded run's does
    (before, all three were left in the shards)."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    items: list[dict[str, Any]] = [
        *({"id": f"j{i}", "prompt": f"[[json=valid]] person {i}", "schema": schema}
          for i in range(6)),
        *({"id": f"s{i}", "model": "qwen3-omni-flash", "prompt": f"[[len=20]] say {i}",
           "modalities": ["text", "audio"], "audio": {"voice": "Cherry", "format": "wav"}}
          for i in range(6)),
        {"id": "loop", "prompt": "[[len=2000]][[loop=300]] a report", "max_tokens": 4000}]
    for name in ("a", "b"):
        write_job(tmp_path / f"{name}.yaml", fake, items, output_dir=str(tmp_path / name))
    run_job(load_job(tmp_path / "a.yaml"), RunOptions(sleep=no_sleep))
    for k in (1, 2, 3):  # the loop fails (run.guard), its text kept in texts/loop.partial.md
        run_job(load_job(tmp_path / "b.yaml", Overrides(shard=(k, 3))),
                RunOptions(sleep=no_sleep))
    merged = run_cli("merge", str(tmp_path / "b" / "t"))
    assert merged.returncode == 0, merged.stderr
    a, b = tmp_path / "a" / "t", tmp_path / "b" / "t"
    assert (b / "results.jsonl").read_bytes() == (a / "results.jsonl").read_bytes()
    for folder in ("texts", "audio"):
        files = sorted(p.name for p in (a / folder).iterdir())
        assert files == sorted(p.name for p in (b / folder).iterdir())
        assert all((b / folder / f).read_bytes() == (a / folder / f).read_bytes() for f in files)
    assert (b / "failed.jsonl").read_bytes() == (a / "failed.jsonl").read_bytes()
    assert {"j0.json", "loop.partial.md"} <= {p.name for p in (b / "texts").iterdir()}
    assert len(list((b / "audio").iterdir())) == 6


def test_merge_refuses_shards_of_different_versions(tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, prompts(12))
    run_shard(job, 1, 2)
    run_shard(job, 2, 2)
    changed = prompts(12)
    changed[3]["prompt"] += " (edited)"
    write_job(job, fake, changed)
    run_shard(job, 1, 2)
    proc = run_cli("merge", str(tmp_path / "out" / "t"))
    assert proc.returncode == 2
    assert "different versions of the job" in proc.stderr and "shard-2-of-2" in proc.stderr
    assert not (tmp_path / "out" / "t" / "results.jsonl").exists()
    run_shard(job, 2, 2)  # the same version everywhere: it merges
    assert run_cli("merge", str(tmp_path / "out" / "t")).returncode == 0
    run_job(load_job(job, Overrides(shard=(1, 3))),  # another split: forced, as it is
            RunOptions(sleep=no_sleep, force=True))  # refused over the answers of 2
    other = run_cli("merge", str(tmp_path / "out" / "t"))
    assert other.returncode == 2 and "different splits" in other.stderr
    mixed = run_cli("report", str(tmp_path / "out" / "t"))  # would count requests twice
    assert mixed.returncode == 2 and "different splits" in mixed.stderr


def test_a_half_finished_set_merges_what_is_done(tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, prompts(20))
    run_shard(job, 1, 3)
    run_shard(job, 3, 3)
    proc = run_cli("merge", str(tmp_path / "out" / "t"))
    assert proc.returncode == 1
    assert "shard-2-of-3: missing" in proc.stderr
    done = {r["id"] for r in read_results(tmp_path / "out" / "t")}
    assert done == set(ids_of(job, "1/3")) | set(ids_of(job, "3/3"))
    status = run_cli("status", str(tmp_path / "out" / "t"))
    assert "not started: shard-2-of-3" in status.stdout



def test_a_run_in_another_layout_refuses_to_buy_the_answers_again(tmp_path: Path,
                                                                   fake: FakeServer) -> None:
    """Each layout keeps its own store: a run without --shard after the job ran
    in shards (to finish what a failed pod left), or shards of another N, saw
    none of their answers and bought every request again. Now it is refused
    before anything is sent or written (the dry run too), saying how to go on;
    --force runs it anyway."""
    job = write_job(tmp_path / "job.yaml", fake, prompts(12))
    job_dir = tmp_path / "out" / "t"
    for k in (1, 2):
        run_shard(job, k, 2)
    sent = fake.ledger.requests
    for args in ([], ["--dry-run"], ["--shard", "1/4"]):
        proc = run_cli("run", str(job), *args)
        assert proc.returncode == 2, proc.stderr
        assert "shard-1-of-2, shard-2-of-2" in proc.stderr
        assert "--shard K/2 for each K from 1 to 2" in proc.stderr and "--force" in proc.stderr
    assert fake.ledger.requests == sent
    assert not (job_dir / "run.db").exists() and not (job_dir / "shard-1-of-4").exists()
    assert run_cli("merge", str(job_dir)).returncode == 0
    merged = run_cli("run", str(job))  # merged texts, no store: the shards are why
    assert merged.returncode == 2 and "shard-1-of-2" in merged.stderr
    assert run_cli("run", str(job), "--shard", "2/2").returncode == 0  # as they ran: skipped
    assert fake.ledger.requests == sent
    forced = run_cli("run", str(job), "--force")
    assert forced.returncode == 0, forced.stderr
    assert fake.ledger.requests == sent + 12

    other = write_job(tmp_path / "other.yaml", fake, prompts(12), name="u")
    run_job(load_job(other), RunOptions(sleep=no_sleep))  # without --shard first
    sent = fake.ledger.requests
    proc = run_cli("run", str(other), "--shard", "1/2")
    assert proc.returncode == 2 and "from a run without --shard" in proc.stderr
    assert "run without --shard;" in proc.stderr and fake.ledger.requests == sent
    assert run_cli("run", str(other), "--shard", "1/2", "--force").returncode == 0
    # shards of 2 are started now: the next one goes on without --force
    assert run_cli("run", str(other), "--shard", "2/2").returncode == 0
    assert fake.ledger.requests == sent + 12

def test_redis_unreachable_at_start_sends_and_writes_nothing(tmp_path: Path,
                                                           fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, prompts(3),
                    run={"limits_url": "redis://127.0.0.1:9/0"})
    proc = run_cli("run", str(job))
    assert proc.returncode == 2
    assert "cannot reach Redis at redis://127.0.0.1:9/0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert fake.ledger.requests == 0 and not (tmp_path / "out").exists()


def start(job: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", "run", str(job), "-q", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_three_shards_share_one_accounts_rpm_through_redis(tmp_path: Path,
                                                            redis_server: RedisServer) -> None:
    rpm, n = 600, 120  # 10 requests a second for the account, whatever the processes
    server = FakeProcess("--rpm", str(rpm))
    try:
        job = write_job(tmp_path / "job.yaml", None, prompts(n), run={"concurrency": 8,
                                                                     "rpm": rpm})
        job.write_text(job.read_text().replace("https://example.invalid/v1", server.base_url))
        env = {"BATCHGEN_LIMITS_URL": redis_server.url}
        began = time.monotonic()
        procs = [start(job, "--shard", f"{k}/3", env=env) for k in (1, 2, 3)]
        for proc in procs:
            _, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
        took = time.monotonic() - began
        throttled = {e["key"] for e in server.get("ledger")["entries"] if e["status"] == 429}
    finally:
        server.stop()
    assert len(throttled) <= 0.02 * n, f"{len(throttled)} of {n} requests saw a 429"
    ideal = n / rpm * 60
    assert took <= 1.2 * ideal + 6, (took, ideal)  # + start-up of three processes
    assert took >= 0.9 * ideal  # they did share the limit: no process ran at the full rate


def test_redis_lost_mid_run_waits_and_goes_on(tmp_path: Path, redis_server: RedisServer,
                                              fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake,
                    [{"id": f"r{i}", "prompt": f"[[len=20]] [[delay=0.02]] {i}"}
                     for i in range(30)],
                    run={"concurrency": 2, "rpm": 600, "limits_url": redis_server.url})
    proc = start(job)
    deadline = time.monotonic() + 60
    while fake.ledger.requests < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    redis_server.stop()
    time.sleep(2.5)
    redis_server.start()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "waiting for Redis at redis://127.0.0.1" in err
    assert "answers again" in err
    assert len(read_results(tmp_path / "out" / "t")) == 30
