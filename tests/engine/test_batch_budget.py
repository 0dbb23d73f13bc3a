"""--via batch with a budget: what goes into batches fits it, batches a
previous run left open count against it, and what an expired batch left is
streamed within what the batch spent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batchgen import load_job
from batchgen.testing.fakeserver import FakeServer
from tests.engine.test_via_batch import batch_run, prompts
from tests.helpers import run_cli, write_job


def worst_at_batch_price(job: Path, body: dict[str, Any]) -> float:
    from batchgen.cost.pricing import PriceBook
    from batchgen.engine.budget import endpoint_list, worst_case

    loaded = load_job(job)
    book = PriceBook(loaded.pricing)
    price = book.price(endpoint_list(loaded, book), "qwen-plus")
    assert price is not None and price.batch_discount == 0.5
    return worst_case(price, body) * price.batch_discount


def test_a_budget_bounds_what_is_in_open_batches(tmp_path: Path, fake: FakeServer) -> None:
    items = [{"id": f"b{i:02d}", "prompt": f"[[len=12]] batch item {i}"} for i in range(10)]
    job = write_job(tmp_path / "job.yaml", fake, items, endpoint={"region": "cn"},
                    defaults={"model": "qwen-plus", "max_tokens": 1000})
    last = {"role": "user", "content": items[9]["prompt"]}
    worst = worst_at_batch_price(job, {"model": "qwen-plus", "max_tokens": 1000,
                                       "messages": [last]})
    # room for four worst cases at a time; answers cost far less than their worst
    # case, so each collected batch makes room for the next
    summary = batch_run(job, max_cost=4.5 * worst, currency="CNY")
    assert (summary.done, summary.exit_code) == (10, 0), summary
    sizes = [len(fake.batches.state.files[fake.batches.state.batches[b]["input_file_id"]]["data"]
                 .splitlines()) for b in fake.batches.state.order]
    assert sum(sizes) == 10 and max(sizes) <= 4, sizes
    report = json.loads((tmp_path / "out" / "t" / "report.json").read_text())
    assert sum(t["cost"] for t in report["totals"]) <= 4.5 * worst


def test_a_budget_counts_batches_a_previous_run_left_open(tmp_path: Path,
                                                          fake: FakeServer) -> None:
    items = [{"id": f"b{i:02d}", "prompt": f"[[len=12]] batch item {i}"} for i in range(6)]
    job = write_job(tmp_path / "job.yaml", fake, items, endpoint={"region": "cn"},
                    defaults={"model": "qwen-plus", "max_tokens": 1000})
    worst = worst_at_batch_price(job, {"model": "qwen-plus", "max_tokens": 1000, "messages": [
        {"role": "user", "content": items[5]["prompt"]}]})
    cap = ["--max-cost", f"{3.5 * worst:.9f}", "--currency", "CNY"]
    first = run_cli("run", str(job), "--via", "batch", "--no-wait", *cap)
    assert first.returncode == 5, first.stderr
    # the next process finds 3 requests in the open batch: no room for a fourth
    again = run_cli("run", str(job), "--via", "batch", "--no-wait", *cap)
    assert again.returncode == 5, again.stderr
    assert len(fake.batches.state.order) == 1
    for _ in range(8):
        last = run_cli("run", str(job), "--via", "batch", "--no-wait", *cap)
        if last.returncode != 5:
            break
    assert last.returncode == 0, last.stderr
    sizes = [len(fake.batches.state.files[fake.batches.state.batches[b]["input_file_id"]]["data"]
                 .splitlines()) for b in fake.batches.state.order]
    assert sizes == [3, 3], sizes


def test_a_budget_too_small_for_one_request_submits_nothing_and_exits_3(
        tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, prompts(5), endpoint={"region": "cn"},
                    defaults={"model": "qwen-plus", "max_tokens": 1000})
    worst = worst_at_batch_price(job, {"model": "qwen-plus", "max_tokens": 1000,
                                       "messages": [{"role": "user", "content": "x"}]})
    proc = run_cli("run", str(job), "--via", "batch", "--max-cost", f"{worst / 2:.9f}",
                   "--currency", "CNY")
    assert proc.returncode == 3, proc.stderr
    assert "stopped by the budget" in proc.stderr and "5 not run" in proc.stdout
    assert fake.batches.state.files == {} and fake.batches.state.order == []
    # in figures: what the first request left out needed, and what was there
    assert "budget: 0.0000 CNY spent or held in open batches of 0.0" in proc.stdout
    assert f"may cost up to {worst:.4f} CNY at the batch price, with its prompt and 1,000 " \
           "output tokens; not one request fits" in proc.stdout, proc.stdout


def test_what_an_expired_batch_left_streams_within_what_the_batch_spent(
        tmp_path: Path, fake: FakeServer) -> None:
    # qwen-max has no thinking price: an answer of max_tokens costs its worst case.
    # Streamed, a request costs twice its batch price, so the streamed guard must
    # count what the batch already spent, not what the run had before it.
    fake.batches.state.settings.update(end="expired", answer=3)
    items = [{"id": f"b{i:02d}", "prompt": f"[[len=1000]] batch item {i}"} for i in range(6)]
    job = write_job(tmp_path / "job.yaml", fake, items, endpoint={"region": "cn"},
                    defaults={"model": "qwen-max", "max_tokens": 1000})
    loaded = load_job(job)
    from batchgen.cost.pricing import PriceBook
    from batchgen.engine.budget import endpoint_list, worst_case

    book = PriceBook(loaded.pricing)
    price = book.price(endpoint_list(loaded, book), "qwen-max")
    assert price is not None and price.batch_discount == 0.5
    body = {"model": "qwen-max", "max_tokens": 1000,
            "messages": [{"role": "user", "content": items[0]["prompt"]}]}
    cap = 6.5 * worst_case(price, body) * price.batch_discount  # all six fit, batched
    summary = batch_run(job, fallback="stream", max_cost=cap, currency="CNY")
    report = json.loads((tmp_path / "out" / "t" / "report.json").read_text())
    spent = sum(t["cost"] for t in report["totals"])
    assert spent <= cap, (spent, cap)
    assert summary.exit_code == 3 and summary.stopped_by == "budget", summary
    assert 3 < summary.done < 6
