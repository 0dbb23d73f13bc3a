"""Usage ledger, prices, the cost report and the budget."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from batchgen import load_job, run_job
from batchgen.cli import main
from batchgen.cost.pricing import PriceBook
from batchgen.engine.runner import RunOptions
from batchgen.errors import UsageError
from batchgen.jobs.load import Overrides
from batchgen.jobs.schema import PriceSpec
from batchgen.outputs.report import Report, build_report, render, unfinished_line
from batchgen.testing.fakeserver import FakeServer
from batchgen.testing.process import FakeProcess
from tests.helpers import FakeTime, read_results, write_job

ESSAY = ("Write a long, careful essay about the history of tea, its trade routes, "
         "and the way it changed daily life in many countries over the centuries.")


def opts() -> RunOptions:
    time = FakeTime()
    return RunOptions(sleep=time.sleep, clock=time.clock, flush_interval=0.05)


# ------------------------------------------------------------ the price table

BOOK = PriceBook()
CN = BOOK.lists["dashscope-cn"]
INTL = BOOK.lists["dashscope-intl"]


def test_qwen_plus_mainland_tiers_by_prompt_tokens() -> None:
    price = BOOK.price(CN, "qwen-plus")
    assert price is not None and price.currency == "CNY"
    # 0-128K: input 0.0008 / output 0.002 CNY per 1K tokens
    assert price.cost(131_072, 1000) == pytest.approx(131_072 * 0.8e-6 + 1000 * 2e-6)
    # one token over the boundary: 128K-256K, 0.0024 / 0.02 per 1K
    assert price.cost(131_073, 1000) == pytest.approx(131_073 * 2.4e-6 + 1000 * 20e-6)
    assert price.cost(300_000, 10) == pytest.approx(300_000 * 4.8e-6 + 10 * 48e-6)


def test_thinking_output_and_cached_input() -> None:
    price = BOOK.price(CN, "qwen-plus")
    assert price is not None
    # the model reasoned: every completion token at the thinking price (0.008 / 1K)
    assert price.cost(1000, 500, reasoning=300) == pytest.approx(1000 * 0.8e-6 + 500 * 8e-6)
    # 400 of 1000 prompt tokens were cache hits (0.0002 / 1K)
    assert price.cost(1000, 0, cached=400) == pytest.approx(600 * 0.8e-6 + 400 * 0.2e-6)
    intl = BOOK.price(INTL, "qwen-plus")
    assert intl is not None and intl.currency == "USD"
    assert intl.cost(1_000_000, 1_000_000) == pytest.approx(0.4 + 1.2)
    assert intl.cost(1_000_000, 1_000_000, reasoning=1) == pytest.approx(0.4 + 4.0)


def test_lists_follow_the_endpoint_and_names_match_snapshots() -> None:
    assert BOOK.list_for("https://dashscope.aliyuncs.com/compatible-mode/v1") is CN
    assert BOOK.list_for("https://dashscope-intl.aliyuncs.com/compatible-mode/v1") is INTL
    assert BOOK.list_for("http://127.0.0.1:9/v1", region="cn") is CN
    assert BOOK.list_for("https://api.deepseek.com/v1") is BOOK.lists["deepseek"]
    assert BOOK.list_for("https://example.com/v1") is None
    latest = BOOK.price(CN, "qwen-plus-2025-07-28")
    assert latest is not None and latest.model == "qwen-plus"
    assert BOOK.price(CN, "qwen-plusplus") is None
    local = BOOK.price(BOOK.list_for("", local=True), "anything")
    assert local is not None and local.cost(10**6, 10**6) == 0
    for required in ("qwen-plus", "qwen-max", "qwen-flash", "qwen-turbo", "qwq-plus",
                     "qwen3-vl-plus", "qwen3-32b", "qwen3-8b"):
        assert required in CN.models and required in INTL.models
    assert {"deepseek-chat", "deepseek-reasoner"} <= set(BOOK.lists["deepseek"].models)
    assert BOOK.lists["openai"].models
    assert all(p.as_of and p.source for plist in BOOK.lists.values()
               for p in plist.models.values())


def test_job_pricing_overrides_and_adds_models() -> None:
    book = PriceBook({"my-tune": PriceSpec(currency="CNY", input=1.0, output=4.0),
                      "qwen-plus": PriceSpec(currency="CNY", input=2.0, output=2.0)})
    tune = book.price(CN, "my-tune")
    assert tune is not None and tune.cost(1000, 1000) == pytest.approx(0.005)
    plus = book.price(CN, "qwen-plus")
    assert plus is not None and plus.cost(1000, 1000) == pytest.approx(0.004)


# -------------------------------------------------- the ledger against billing


def test_report_equals_the_servers_billing_ledger(tmp_path: Path, fake: FakeServer) -> None:
    prompts: list[dict[str, Any]] = [
        {"id": "a", "prompt": ESSAY, "tags": ["history"]},
        {"id": "b", "prompt": "写一篇关于茶叶历史的长文章，介绍它的贸易路线以及对日常生活的影响。",
         "tags": ["history", "zh"]},
        {"id": "think", "model": "qwq-plus", "prompt": ESSAY},
        {"id": "cut", "prompt": ESSAY + " [[len=200]] [[faults=cut@120]]"},
        {"id": "cutzh", "prompt": "写一篇关于茶叶历史的长文章 [[len=200]] [[faults=cut@150]]"},
        {"id": "nousage", "prompt": ESSAY + " [[faults=nousage]]"},
    ]
    job = write_job(tmp_path / "job.yaml", fake, prompts,
                    endpoint={"region": "cn"})
    summary = run_job(load_job(job), opts())
    assert summary.done == 6
    run_dir = tmp_path / "out" / "t"
    db = sqlite3.connect(run_dir / "run.db")
    ledger = fake.ledger.entries
    # finished attempts: to the token
    for result in read_results(run_dir):
        if result["id"] == "nousage":
            assert result["usage"]["estimated"] is True
            continue
        body = json.loads(db.execute("SELECT body FROM requests WHERE id=?",
                                     (result["id"],)).fetchone()[0])
        billed = [e for e in ledger if e["body"]["messages"] == body["messages"]
                  and e["model"] == body["model"] and e["complete"]]
        assert len(billed) == 1
        assert result["usage"]["prompt_tokens"] == billed[0]["prompt_tokens"]
        assert result["usage"]["completion_tokens"] == billed[0]["completion_tokens"]
        assert "estimated" not in result["usage"]
        assert result["cost"]["currency"] == "CNY" and result["cost"]["amount"] > 0
    # aborted attempts: estimated within 15 % of what the server billed, and flagged
    cut = [e for e in ledger if not e["complete"]]
    assert len(cut) == 2
    rows = db.execute(
        "SELECT u.prompt_tokens + u.completion_tokens, u.estimated FROM attempts a "
        "JOIN usage u ON u.attempt_id = a.id WHERE a.status = 'error' ORDER BY a.id").fetchall()
    assert len(rows) == 2
    for (estimate, flagged), entry in zip(rows, sorted(cut, key=lambda e: e["body"]["messages"]
                                                       [0]["content"][0] == "写"), strict=True):
        billed = entry["prompt_tokens"] + entry["completion_tokens"]
        assert flagged == 1
        assert abs(estimate - billed) / billed <= 0.15, (estimate, billed)
    # the report counts every attempt, and says how much is estimated
    report = build_report([run_dir])
    plus = next(r for r in report.rows if r.key == "qwen-plus")
    assert plus.attempts == 7 and plus.requests_done == 5
    assert plus.estimated_cost > 0 and plus.estimated_tokens > 0
    billed_plus = sum(e["prompt_tokens"] for e in ledger if e["model"] == "qwen-plus"
                      and e["complete"] and "nousage" not in e["fault"])
    assert plus.prompt_tokens >= billed_plus
    think = next(r for r in report.rows if r.key == "qwq-plus")
    assert think.reasoning_tokens > 0
    assert [t["currency"] for t in report.totals] == ["CNY"]
    assert (run_dir / "report.md").exists()
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["schema"] == "batchgen.report/1"
    tags = build_report([run_dir], group_by="tag")
    assert {r.key for r in tags.rows} == {"history", "zh", "(no tag)"}
    assert next(r for r in tags.rows if r.key == "history").requests_done == 2


def test_cny_and_usd_shards_merge_without_adding_currencies(tmp_path: Path,
                                                          fake: FakeServer) -> None:
    for name, region in (("cn", "cn"), ("intl", "intl")):
        job = write_job(tmp_path / f"{name}.yaml", fake, [{"id": f"{name}1", "prompt": ESSAY}],
                        name=name, endpoint={"region": region})
        run_job(load_job(job), opts())
    unknown = write_job(tmp_path / "u.yaml", fake, [{"id": "u1", "prompt": "x",
                                                      "model": "mystery-model"}],
                        name="u", endpoint={"region": "cn"})
    run_job(load_job(unknown), opts())
    dirs = [tmp_path / "out" / n for n in ("cn", "intl", "u")]
    report = build_report(dirs)
    assert sorted(t["currency"] for t in report.totals) == ["CNY", "USD"]
    mystery = next(r for r in report.rows if r.key == "mystery-model")
    assert mystery.cost is None and mystery.currency is None
    assert report.unknown_cost == ["mystery-model"] and report.warnings
    text = render(report, "table")
    assert "unknown" in text and "CNY" in text and "USD" in text
    assert "as of" in text
    data = json.loads(render(report, "json"))
    assert {"schema", "rows", "totals", "unknown_cost", "prices", "warnings"} <= data.keys()
    table = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert {row["key"] for row in table} == {"qwen-plus", "mystery-model"}
    assert next(r for r in table if r["key"] == "mystery-model")["cost"] == ""
    md = render(report, "md")
    assert md.startswith("# Cost report") and "| qwen-plus |" in md
    cli = CliRunner().invoke(main, ["report", *map(str, dirs), "--format", "json"])
    assert cli.exit_code == 0 and json.loads(cli.output)["unknown_cost"] == ["mystery-model"]
    unknown_result = read_results(tmp_path / "out" / "u")[0]
    assert unknown_result["cost"] is None


# ------------------------------------------------------------------- budget


def test_budget_stops_with_exit_3_and_resumes_with_a_higher_one(tmp_path: Path) -> None:
    server = FakeProcess()
    try:
        prompts = [{"id": f"p{i}", "prompt": f"[[len=50]] [[delay=0.01]] {ESSAY} {i}"}
                   for i in range(30)]
        job = write_job(tmp_path / "job.yaml", None, prompts, endpoint={"region": "cn"},
                        defaults={"model": "qwen-plus", "max_tokens": 100},
                        run={"concurrency": 3})
        job.write_text(job.read_text().replace("https://example.invalid/v1", server.base_url))
        # worst case of one request: ~40 prompt tokens × 0.8 + 100 × 8 (the thinking
        # price, as the worst case) per 1M ≈ 0.00083 CNY; one costs ≈ 0.00013
        cap = 0.004
        first = run_job(load_job(job, Overrides(max_cost=cap, currency="CNY")), RunOptions())
        assert first.exit_code == 3 and first.stopped_by == "budget"
        assert 0 < first.done < 30
        run_dir = tmp_path / "out" / "t"
        spent = sum(t["cost"] for t in build_report([run_dir]).totals)
        worst_in_flight = 3 * (60 * 0.8e-6 + 100 * 8e-6)
        assert spent <= cap + worst_in_flight
        proc = CliRunner().invoke(main, ["run", str(job), "--max-cost", "1", "--currency", "CNY",
                                         "-q"])
        assert proc.exit_code == 0, proc.output
        assert len(read_results(run_dir)) == 30
    finally:
        server.stop()


def test_a_budget_that_holds_many_answers_but_few_worst_cases_runs_them_all(
        tmp_path: Path, fake: FakeServer) -> None:
    # No max_tokens: each request holds 8,192 output tokens at qwen-max's 9.6 CNY/1M
    # (~0.079 CNY) while in flight, and costs ~0.0003 CNY. Held worst cases used to
    # stop the launching at the first that did not fit: 2 of 20 answers for 0.2 CNY.
    items = [{"id": f"m{i}", "prompt": f"[[len=30]] question {i}"} for i in range(20)]
    job = write_job(tmp_path / "job.yaml", fake, items, endpoint={"region": "cn"},
                    defaults={"model": "qwen-max"}, run={"concurrency": 4})
    summary = run_job(load_job(job, Overrides(max_cost=0.2, currency="CNY")), opts())
    assert summary.exit_code == 0 and summary.done == 20, summary


def test_a_budget_stop_says_what_the_next_request_needed(tmp_path: Path,
                                                          fake: FakeServer) -> None:
    items = [{"id": f"m{i}", "prompt": f"[[len=30]] question {i}"} for i in range(5)]
    job = write_job(tmp_path / "job.yaml", fake, items, endpoint={"region": "cn"},
                    defaults={"model": "qwen-max"})
    too_small = run_job(load_job(job, Overrides(max_cost=0.005, currency="CNY")), opts())
    assert too_small.exit_code == 3 and too_small.done == 0
    (note,) = too_small.notes
    assert "the next request (m0, qwen-max) may cost up to 0.07" in note
    # a report read after a cron run says it is not complete, and why
    run_dir = tmp_path / "out" / "t"
    said = "not finished: 5 requests pending; the latest run stopped at the budget (exit 3)"
    assert f"- {said}; run the job again to go on" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "report.json").read_text())["unfinished"] == 5
    assert f'data-unfinished="5">N{said[1:]}' in (run_dir / "report.html").read_text()
    from batchgen.outputs.status import render_status

    assert "  pending:   5\n  last run:  stopped at the budget (exit 3)\n" in \
        render_status(run_dir, "d", "text")
    with sqlite3.connect(run_dir / "run.db") as db:  # as a kill -9 leaves it
        db.execute("UPDATE runs SET status = 'running'")
    assert "the latest run ended without a word (killed, or it crashed)" in \
        render(build_report([run_dir]), "md")
    assert "last run:  ended without a word" in render_status(run_dir, "d", "text")
    shards = Report(runs=[], group_by="model", unfinished=7,
                    stopped=["stopped:budget", "stopped:interrupt"])
    assert unfinished_line(shards) == (
        "not finished: 7 requests pending; the latest runs (one per directory): stopped at the "
        "budget (exit 3), was interrupted (exit 130); run the job again to go on")
    assert "8,192 output tokens (it sets no max_tokens" in note
    assert "not one request fits" in note
    # room for three worst cases of 100 tokens (~0.001 CNY each) at once: the others
    # wait for answers to settle, and every answer fits, with nothing to say
    bounded_job = write_job(tmp_path / "b.yaml", fake, items, name="b",
                            endpoint={"region": "cn"},
                            defaults={"model": "qwen-max", "max_tokens": 100})
    bounded = run_job(load_job(bounded_job, Overrides(max_cost=0.003, currency="CNY")), opts())
    assert bounded.exit_code == 0 and bounded.done == 5 and not bounded.notes
    assert "not finished" not in (tmp_path / "out" / "b" / "report.md").read_text()


def test_budget_needs_prices_in_its_currency(tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, [{"prompt": "x", "model": "mystery"}],
                    endpoint={"region": "cn"}, budget={"max_cost": 1, "currency": "CNY"})
    with pytest.raises(UsageError, match="no price"):
        run_job(load_job(job), opts())
    # a dry run refuses it as the run would, not a plan the run will not follow
    dry = CliRunner().invoke(main, ["run", str(job), "--dry-run"])
    assert dry.exit_code == 2 and "model 'mystery' has no price" in dry.output, dry.output
    assert not (tmp_path / "out").exists()
    # an endpoint in no price list (a gateway in front of Model Studio): say how to name one
    job = write_job(tmp_path / "job.yaml", fake, [{"prompt": "x"}],
                    budget={"max_cost": 1, "currency": "CNY"})
    dry = CliRunner().invoke(main, ["run", str(job), "--dry-run"])
    assert dry.exit_code == 2 and "is in no price list" in dry.output, dry.output
    assert "name the list with endpoint.region: dashscope-cn, dashscope-intl" in dry.output
    # a JSONL job has no pricing: block to add it to: say what does
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "x"}\n')
    dry = CliRunner().invoke(main, ["run", str(tmp_path / "p.jsonl"), "--dry-run", "--model",
                                    "m", "--base-url", fake.base_url, "--max-cost", "1"])
    assert dry.exit_code == 2, dry.output
    assert "a JSONL job file has no `pricing:` (nor `endpoint:`), so write a YAML job file " \
        "with `prompts_file: p.jsonl` and a `pricing:` block" in dry.output
    job = write_job(tmp_path / "job.yaml", fake, [{"prompt": "x"}],
                    endpoint={"region": "cn"}, budget={"max_cost": 1, "currency": "USD"})
    with pytest.raises(UsageError, match="priced in CNY"):
        run_job(load_job(job), opts())
    assert not (tmp_path / "out").exists()
    assert fake.ledger.requests == 0


def test_max_cost_alone_takes_the_currency_of_the_models_prices(tmp_path: Path,
                                                                fake: FakeServer) -> None:
    """--max-cost without --currency: the job's models are all priced in CNY, so
    the budget is in CNY (before: "pass --currency"); models priced in two
    currencies still need one named."""
    job = write_job(tmp_path / "job.yaml", fake, [{"prompt": "[[len=5]] x"}],
                    endpoint={"region": "cn"})
    dry = CliRunner().invoke(main, ["run", str(job), "--max-cost", "1", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "budget:        1.0000 CNY" in dry.output
    assert run_job(load_job(job, Overrides(max_cost=1.0)), opts()).exit_code == 0
    prices = {"other": {"currency": "USD", "input": 1.0, "output": 1.0}}
    job = write_job(tmp_path / "two.yaml", fake,
                    [{"prompt": "x"}, {"prompt": "y", "model": "other"}],
                    endpoint={"region": "cn"}, pricing=prices)
    proc = CliRunner().invoke(main, ["run", str(job), "--max-cost", "1"])
    assert proc.exit_code == 2
    assert "the job's models are priced in CNY (qwen-plus) and USD (other); pass --currency" \
        in proc.output


def test_dry_run_prints_the_plan_and_calls_nothing(tmp_path: Path, fake: FakeServer) -> None:
    prompts = [{"id": f"p{i}", "prompt": ESSAY, "max_tokens": 1000} for i in range(4)]
    job = write_job(tmp_path / "job.yaml", fake, prompts, endpoint={"region": "cn"})
    out = CliRunner().invoke(main, ["run", str(job), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "to run:        4" in out.output and "to skip:       0" in out.output
    # 4 × (prompt + 1000 tokens at the thinking price 0.008 CNY / 1K)
    assert "worst case:    0.03" in out.output and "CNY" in out.output
    assert fake.ledger.requests == 0 and not (tmp_path / "out").exists()
    run_job(load_job(job, Overrides()), opts())
    again = CliRunner().invoke(main, ["run", str(job), "--dry-run"])
    assert "to run:        0" in again.output and "to skip:       4" in again.output


def test_dry_run_skips_only_what_is_done_as_the_job_says_it(
        tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same id, other parameters: to run again. The store is asked a few ids
    at a time; chunk edges change nothing."""
    from batchgen.engine import budget

    prompts = [{"id": f"p{i}", "prompt": "hi", "max_tokens": 10} for i in range(7)]
    job = write_job(tmp_path / "job.yaml", fake, prompts)
    run_job(load_job(job, Overrides()), opts())
    prompts[2]["max_tokens"] = 11
    prompts[6]["prompt"] = "hello"
    job = write_job(tmp_path / "job.yaml", fake,
                    [*prompts, {"id": "new", "prompt": "x", "max_tokens": 10}])
    for lookup in (500, 3, 1):
        monkeypatch.setattr(budget, "LOOKUP", lookup)
        out = CliRunner().invoke(main, ["run", str(job), "--dry-run"])
        assert out.exit_code == 0, out.output
        assert "to run:        3" in out.output and "to skip:       5" in out.output, lookup


@pytest.mark.parametrize(("model", "near"), [
    ("qwen-plsu", "qwen-plus"),  # two letters swapped
    ("qwen-trubo", "qwen-turbo"),
    ("qwen-pls", "qwen-plus"),  # one missing
    ("qwen3-maxx", "qwen3-max"),  # one added
    ("qwen-plus", None),  # listed
    ("qwen-plus-2025-07-28", None),  # a snapshot of a listed model: priced as it
    ("qwen3.5-plus", None),  # a model newer than the list, not a slip
    ("deepseek-v3", None),
])
def test_a_model_one_typing_slip_from_a_listed_one_is_pointed_out(model: str,
                                                                   near: str | None) -> None:
    book = PriceBook()
    plist = book.list_for("https://dashscope.aliyuncs.com/compatible-mode/v1")
    assert book.misspelt(plist, model) == near
    assert book.misspelt(book.list_for("http://127.0.0.1:8080/v1"), model) is None  # no list
    assert book.misspelt(book.list_for("", local=True), model) is None  # free: any name


def test_validate_and_the_dry_run_say_which_model_a_typo_meant(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"output_dir: {tmp_path / 'out'}\ndefaults: {{model: qwen-plsu}}\n"
                   "prompts: [a, {prompt: b, model: qwen-plus}]\n")
    said = ("model 'qwen-plsu' is not in the dashscope-cn price list: did you mean "
            "'qwen-plus'? (a model newer than the list needs its price in `pricing:`)")
    runner = CliRunner()
    out = runner.invoke(main, ["validate", str(job)])
    assert out.exit_code == 0 and f"  note: {said}\n" in out.output
    out = runner.invoke(main, ["validate", str(job), "--format", "json"])
    assert said in json.loads(out.output)["notes"]
    out = runner.invoke(main, ["run", str(job), "--dry-run"], env={"DASHSCOPE_API_KEY": "x"})
    assert out.exit_code == 0 and f"  note:          {said}\n" in out.output
    assert out.output.count("did you mean") == 1


def test_a_budget_in_any_currency_holds_on_the_free_local_endpoint(tmp_path: Path) -> None:
    # jobs/essays.yaml (a CNY budget) with --local was refused: "'qwen-plus' is
    # priced in USD" — on the local endpoint it costs nothing, in any currency
    job = tmp_path / "job.yaml"
    job.write_text(f"output_dir: {tmp_path / 'out'}\ndefaults: {{model: qwen-plus}}\n"
                   "budget: {max_cost: 20, currency: CNY}\nprompts: [a]\n")
    out = CliRunner().invoke(main, ["run", str(job), "--local", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "budget:        20.0000 CNY" in out.output
    bare = tmp_path / "bare.yaml"  # --max-cost alone: no currency to disagree with
    bare.write_text(f"output_dir: {tmp_path / 'out'}\nprompts: [a]\n")
    out = CliRunner().invoke(main, ["run", str(bare), "--local", "--dry-run", "--max-cost", "1"])
    assert out.exit_code == 0 and "budget:        1.0000 USD" in out.output, out.output
    # a price the job gives the local endpoint is a price: its currency must agree
    job.write_text(job.read_text() + "pricing:\n  qwen-plus: {currency: USD, input: 1, "
                   "output: 2}\n")
    out = CliRunner().invoke(main, ["run", str(job), "--local", "--dry-run"])
    assert out.exit_code == 2 and "the budget is in CNY but 'qwen-plus' is priced in USD" in \
        out.output


def test_tags_in_chinese_line_up_and_a_pipe_keeps_report_md_a_table(tmp_path: Path,
                                                                   fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, [
        {"id": "a", "prompt": "x", "tags": ["历史", "a|b"]}, {"id": "b", "prompt": "y"}])
    run_job(load_job(job), opts())
    report = build_report([tmp_path / "out" / "t"], group_by="tag")
    head, *rows = render(report, "table").split("\n\n")[0].splitlines()
    # the second column starts at one place on every line, as a terminal shows it
    starts = {unicodedata_width(line[:line.index("  1") if "  1" in line else
                                      line.index("  done")]) for line in (head, *rows)}
    assert len(starts) == 1, (head, rows)
    md = render(report, "md")
    assert "| a\\|b | 1 |" in md and "| 历史 | 1 |" in md


def unicodedata_width(text: str) -> int:
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
