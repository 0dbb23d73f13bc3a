"""A provider batch is looked up only at the endpoint it was submitted to.

With the endpoint moved (``--base-url``, the job file's ``endpoint``) while a
batch ran, the next ``--via batch`` run bought every request again at the new
endpoint, then asked the new endpoint for the old batch, got a 404, and ended
with exit 1 and "run the same command again", which failed the same way each
time: the answers of neither batch were ever collected. Now a run at another
endpoint is refused before anything is sent, and ``--force`` leaves the batch.
And a streamed run says that what waits in a batch is collected with ``--via
batch``."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchgen.testing.fakeserver import Config, FakeServer
from tests.engine.test_via_batch import prompts
from tests.helpers import CANARY, read_results, run_cli, write_job


@pytest.fixture
def other() -> Iterator[FakeServer]:
    """A second endpoint: another region, another gateway."""
    server = FakeServer(Config(api_key=CANARY))
    server.start_in_thread()
    yield server
    server.stop()


def test_a_run_at_another_endpoint_is_refused_and_the_batch_collected_where_it_went(
        tmp_path: Path, fake: FakeServer, other: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, prompts(3))
    first = run_cli("run", str(job), "--via", "batch", "--no-wait")
    assert first.returncode == 5, first.stderr
    (batch_id,) = fake.batches.state.order
    for via in (("--via", "batch", "--no-wait"), ("--via", "batch"), (), ("--dry-run",)):
        moved = run_cli("run", str(job), "--base-url", other.base_url, *via)
        assert moved.returncode == 2, moved.stderr
        said = " ".join(moved.stderr.split())
        assert f"{batch_id} (3 requests of qwen-plus) was submitted to {fake.base_url}" in said
        assert f"This run's endpoint is {other.base_url}" in said and "--force" in said
    assert other.ledger.entries == [] and other.batches.state.order == []  # nothing sent
    # at the endpoint it went to, it is collected: nothing bought twice
    codes = [run_cli("run", str(job), "--via", "batch", "--no-wait").returncode
             for _ in range(4)]
    assert codes[-1] == 0, codes
    assert fake.batches.state.order == [batch_id]
    assert [r["id"] for r in read_results(tmp_path / "out" / "t")] == ["b00", "b01", "b02"]


def test_force_leaves_the_batch_and_the_requests_are_bought_at_the_new_endpoint(
        tmp_path: Path, fake: FakeServer, other: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, prompts(3))
    assert run_cli("run", str(job), "--via", "batch", "--no-wait").returncode == 5
    (batch_id,) = fake.batches.state.order
    moved = run_cli("run", str(job), "--base-url", other.base_url, "--force")
    assert moved.returncode == 0, moved.stderr
    assert f"left batch {batch_id}" in " ".join(moved.stderr.split())
    assert len(read_results(tmp_path / "out" / "t")) == 3
    assert len([e for e in other.ledger.entries if e["complete"]]) == 3
    status = run_cli("status", str(tmp_path / "out" / "t"))
    line = next(x for x in status.stdout.splitlines() if batch_id in x)
    assert "(left)" in line and f"submitted to {fake.base_url}" in line, line
    # a later batch run at the new endpoint does not look the left batch up there
    again = run_cli("run", str(job), "--base-url", other.base_url, "--via", "batch")
    assert again.returncode == 0, again.stderr
    assert other.batches.state.order == []


def test_batches_of_a_store_from_before_are_looked_up_at_the_runs_endpoint(
        tmp_path: Path, fake: FakeServer) -> None:
    """A store written before batches recorded their endpoint: read, run and
    collected as before (its batches count as the endpoint's of the run)."""
    job = write_job(tmp_path / "job.yaml", fake, prompts(2))
    assert run_cli("run", str(job), "--via", "batch", "--no-wait").returncode == 5
    (batch_id,) = fake.batches.state.order
    run_dir = tmp_path / "out" / "t"
    with contextlib.closing(sqlite3.connect(run_dir / "run.db")) as db:
        db.execute("ALTER TABLE batches DROP COLUMN base_url")
        db.commit()
    status = run_cli("status", str(run_dir))
    assert status.returncode == 0 and batch_id in status.stdout, status.stderr
    codes = [run_cli("run", str(job), "--via", "batch", "--no-wait").returncode
             for _ in range(4)]
    assert codes[-1] == 0, codes
    assert fake.batches.state.order == [batch_id]
    assert len(read_results(run_dir)) == 2


def test_a_streamed_run_says_how_to_collect_what_waits_in_a_batch(
        tmp_path: Path, fake: FakeServer) -> None:
    """After ``--via batch --no-wait``, a run without ``--via batch`` ended with
    exit 1 and "2 requests were not finished; run the same command again",
    which never finished them: a streamed run does not collect batches."""
    job = write_job(tmp_path / "job.yaml", fake, prompts(2))
    assert run_cli("run", str(job), "--via", "batch", "--no-wait").returncode == 5
    streamed = run_cli("run", str(job))
    assert streamed.returncode == 5, streamed.stderr
    said = " ".join(streamed.stderr.split())
    assert "2 requests wait in the provider's Batch API" in said
    assert "run with --via batch to collect them" in said
    assert not any(e.get("via") != "batch" for e in fake.ledger.entries)  # none streamed
    report = (tmp_path / "out" / "t" / "report.md").read_text(encoding="utf-8")
    assert "not finished: 2 requests pending; the latest run left requests in batches" \
        in report
    collected = [run_cli("run", str(job), "--via", "batch", "--no-wait").returncode
                 for _ in range(4)]
    assert collected[-1] == 0, collected
    assert len(read_results(tmp_path / "out" / "t")) == 2
