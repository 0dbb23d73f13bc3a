"""A batch the provider fails (its input file did not pass validation) is not
sent again and again.

Before, its requests went back into the next batch with nothing recorded, so
a file the provider refuses was submitted round after round, forever, and
the provider's reason was nowhere. Now a line it names fails with its reason,
the other lines go into the next batch, and a reason of the whole file stops
the run (exit 4) with the provider's words, every request pending."""

from __future__ import annotations

import json
from pathlib import Path

from batchgen.testing.fakeserver import FakeServer
from tests.engine.test_via_batch import batch_run, prompts
from tests.helpers import read_results, run_cli, write_job


def test_a_file_the_provider_refuses_stops_the_run_with_its_reason(
        tmp_path: Path, fake: FakeServer) -> None:
    fake.batches.state.settings.update(
        end="failed", errors=[{"code": "model_not_supported",
                               "message": "The model qwen-plus is not supported in batch."}])
    job = write_job(tmp_path / "job.yaml", fake, prompts(3))
    summary = batch_run(job)
    assert (summary.exit_code, summary.done, summary.failed, summary.pending) == (4, 0, 0, 3)
    assert summary.fatal is not None
    assert "The model qwen-plus is not supported in batch" in str(summary.fatal)
    assert len(fake.batches.state.order) == 1  # not submitted again and again
    status = run_cli("status", str(tmp_path / "out" / "t")).stdout
    assert "failed (collected): The model qwen-plus is not supported in batch" in status
    # once the provider takes it, the same command collects everything
    fake.batches.state.settings.update(end="completed", errors=None)
    summary = batch_run(job)
    assert (summary.exit_code, summary.done) == (0, 3)
    assert len(read_results(tmp_path / "out" / "t")) == 3


def test_a_line_the_provider_names_fails_and_the_rest_go_into_the_next_batch(
        tmp_path: Path, fake: FakeServer) -> None:
    items = prompts(3)
    items[1]["prompt"] += " [[refuse_line]]"
    job = write_job(tmp_path / "job.yaml", fake, items)
    summary = batch_run(job)
    assert (summary.exit_code, summary.done, summary.failed) == (1, 2, 1)
    assert len(fake.batches.state.order) == 2  # the refused file, then the two good lines
    run_dir = tmp_path / "out" / "t"
    assert [r["id"] for r in read_results(run_dir)] == ["b00", "b02"]
    failed = [json.loads(x) for x in (run_dir / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["b01"]
    status = run_cli("status", str(run_dir)).stdout
    assert "the provider failed batch" in status and "Line 2: the request body is not valid" \
        in status, status


def test_with_fallback_stream_what_a_refused_file_held_is_streamed(
        tmp_path: Path, fake: FakeServer) -> None:
    fake.batches.state.settings.update(end="failed")
    job = write_job(tmp_path / "job.yaml", fake, prompts(3))
    summary = batch_run(job, fallback="stream")
    assert (summary.exit_code, summary.done, summary.failed) == (0, 3, 0)
    assert len(fake.batches.state.order) == 1
    assert sum(1 for e in fake.ledger.entries if e["complete"] and e.get("via") != "batch") == 3
