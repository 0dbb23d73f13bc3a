"""run.on_length: continue — an answer past the model's output cap, continued
segment after segment into one text, nothing repeated or lost at a seam."""

from __future__ import annotations

import json
from pathlib import Path

from batchgen.testing.fakeserver import Config, FakeServer, plan_for
from tests.helpers import read_results, run_cli, write_job

PROMPT = "[[len=100]] a long report"


def whole() -> str:
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": PROMPT}]}
    return "".join(plan_for(body, 1, Config()).tokens)


def job(tmp_path: Path, fake: FakeServer, continuation: str = "partial",
        **run: object) -> Path:
    path = write_job(tmp_path / "job.yaml", fake, [{"id": "doc", "prompt": PROMPT}],
                     defaults={"model": "qwen-plus", "max_tokens": 30},
                     run={"on_length": "continue", **run})
    path.write_text(path.read_text().replace(
        '"api_key_env"', f'"continuation": "{continuation}", "api_key_env"'))
    return path


def test_an_answer_past_the_cap_is_continued_into_one_text(tmp_path: Path,
                                                          fake: FakeServer) -> None:
    proc = run_cli("run", str(job(tmp_path, fake)), "-q")
    assert proc.returncode == 0, proc.stderr
    (result,) = read_results(tmp_path / "out" / "t")
    assert result["content"] == whole()  # byte for byte, every seam
    assert (tmp_path / "out" / "t" / "texts" / "doc.md").read_text() == whole()
    assert result["finish_reason"] == "stop"
    assert result["length_continuations"] == 3 and "continuations" not in result
    sent = [e["completion_tokens"] for e in fake.ledger.entries]
    assert sent == [30, 30, 30, 10]  # each segment asks for max_tokens, nothing twice
    assert result["usage"]["completion_tokens"] == 100  # every segment's
    report = (tmp_path / "out" / "t" / "report.json").read_text()
    assert '"completion_tokens": 100' in report  # every segment counted and priced


def test_the_limits_end_it_at_length(tmp_path: Path, fake: FakeServer) -> None:
    proc = run_cli("run", str(job(tmp_path, fake, max_continuations=1)), "-q")
    assert proc.returncode == 0, proc.stderr
    (result,) = read_results(tmp_path / "out" / "t")
    assert result["finish_reason"] == "length" and result["length_continuations"] == 1
    assert result["content"] == whole()[:len(result["content"])]
    other = tmp_path / "total"
    other.mkdir()
    fake.ledger.entries.clear()
    proc = run_cli("run", str(job(other, fake, max_total_tokens=50)), "-q")
    assert proc.returncode == 0, proc.stderr
    assert [e["completion_tokens"] for e in fake.ledger.entries] == [30, 20]
    (result,) = read_results(other / "out" / "t")
    assert result["finish_reason"] == "length"


def test_max_total_tokens_counts_what_the_endpoint_reported(tmp_path: Path,
                                                           fake: FakeServer) -> None:
    """Eight segments of 50 make 400 by the endpoint's usage; a tokenizer's
    count of the text so far (the Qwen vocabulary's, where installed, counts
    the fake's words differently) must not stand in for it, or a ninth segment
    goes past the limit."""
    path = write_job(tmp_path / "job.yaml", fake, [{"id": "doc", "prompt": "[[len=1000]] a"}],
                     defaults={"model": "qwen-plus", "max_tokens": 50},
                     run={"on_length": "continue", "max_total_tokens": 400})
    path.write_text(path.read_text().replace(
        '"api_key_env"', '"continuation": "partial", "api_key_env"'))
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 0, proc.stderr
    assert [e["completion_tokens"] for e in fake.ledger.entries] == [50] * 8
    (result,) = read_results(tmp_path / "out" / "t")
    assert result["usage"]["completion_tokens"] == 400
    assert result["finish_reason"] == "length" and result["length_continuations"] == 7


def test_stop_is_the_default_and_none_is_refused_at_validation(tmp_path: Path,
                                                              fake: FakeServer) -> None:
    path = job(tmp_path, fake, continuation="none")
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2
    assert "run.on_length" in proc.stderr and "endpoint.continuation: none" in proc.stderr
    # where, as every job-file problem: the file, the key's line, who chose "none"
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                if '"on_length"' in text)
    assert f"{path}:{line}: run.on_length: " in proc.stderr
    assert "(set in the job file)" in proc.stderr
    assert not (tmp_path / "out").exists()
    plain = write_job(tmp_path / "plain.yaml", fake, [{"id": "doc", "prompt": PROMPT}],
                      defaults={"model": "qwen-plus", "max_tokens": 30}, name="plain")
    assert run_cli("run", str(plain), "-q").returncode == 0
    (result,) = read_results(tmp_path / "out" / "plain")
    assert result["finish_reason"] == "length" and "length_continuations" not in result
    status = run_cli("status", str(tmp_path / "out" / "plain")).stdout
    assert "at the cap: 1 done but stopped at the output cap" in status
    report = (tmp_path / "out" / "plain" / "report.json").read_text()
    assert '"stopped_at_the_cap": 1' in report
    markdown = (tmp_path / "out" / "plain" / "report.md").read_text()
    assert "stopped at the output cap: 1 answer ends with finish_reason length" in markdown


def test_a_kill_9_inside_the_third_segment_resumes_inside_it(tmp_path: Path) -> None:
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from batchgen.testing.process import FakeProcess
    from tests.helpers import CANARY, ROOT

    prompt = "[[len=100]][[delay=0.03]] a long report"
    with FakeProcess("--api-key", CANARY) as server:
        path = write_job(tmp_path / "job.yaml", None, [{"id": "doc", "prompt": prompt}],
                         defaults={"model": "qwen-plus", "max_tokens": 30},
                         run={"on_length": "continue"})
        path.write_text(path.read_text().replace("https://example.invalid/v1", server.base_url)
                        .replace('"api_key_env"', '"continuation": "partial", "api_key_env"'))
        db = tmp_path / "out" / "t" / "run.db"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(path), "-q"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # two segments done, the third streaming
            try:
                with sqlite3.connect(db) as conn:
                    third = conn.execute(
                        "SELECT COUNT(*) FROM attempts a JOIN segments s ON s.attempt_id = a.id "
                        "WHERE a.n = 3").fetchone()[0]
                if third:
                    break
            except sqlite3.Error:
                pass
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        again = run_cli("run", str(path), "-q")
        assert again.returncode == 0, again.stderr
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": prompt}]}
    (result,) = read_results(tmp_path / "out" / "t")
    assert result["content"] == "".join(plan_for(body, 1, Config()).tokens)
    assert result["length_continuations"] == 3
    assert result["continuations"] == 1  # the kill: one resume, inside the third segment


def test_the_table_says_how_often_each_answer_was_continued(tmp_path: Path,
                                                          fake: FakeServer) -> None:
    """The table of a data job gains ``length_continuations`` (after ``error``);
    Parquet keeps it an integer; an input column of that name is refused."""
    (tmp_path / "docs.csv").write_text("doc,n\nlong,100\nshort,20\n", encoding="utf-8")
    path = write_job(tmp_path / "job.yaml", fake, [], defaults={
        "model": "qwen-plus", "max_tokens": 30}, run={"on_length": "continue"},
        data={"path": "docs.csv", "id": "doc"},
        template={"prompt": "[[len={{ n }}]] a report"})
    path.write_text(path.read_text().replace(
        '"api_key_env"', '"continuation": "partial", "api_key_env"').replace(
        '"prompts": [],', ""))
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "out" / "t"
    header, *rows = (run_dir / "table.csv").read_text().splitlines()
    assert header.endswith(",cost,error,length_continuations")
    assert [(r.split(",")[0], r.split(",")[-1]) for r in rows] == [("long", "3"), ("short", "0")]
    assert [r.get("length_continuations") for r in read_results(run_dir)] == [3, None]
    export = run_cli("export", str(run_dir), "-o", str(tmp_path / "t.parquet"))
    assert export.returncode == 0, export.stderr
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "t.parquet")
    assert str(table.schema.field("length_continuations").type) == "int64"
    assert table.column("length_continuations").to_pylist() == [3, 0]
    (tmp_path / "docs.csv").write_text("doc,n,length_continuations\nlong,100,x\n",
                                       encoding="utf-8")
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 2
    assert "the table's column 'length_continuations' (what batchgen writes)" in proc.stderr


def test_a_batch_answer_cut_at_the_cap_goes_on_streamed(tmp_path: Path,
                                                        fake: FakeServer) -> None:
    """--via batch: an answer cut at the output cap was recorded done at
    length. A batch cannot continue it; a stream can, from its text: the first
    segment at the batch price, the rest streamed, one text byte for byte."""
    proc = run_cli("run", str(job(tmp_path, fake)), "--via", "batch", "-q")
    assert proc.returncode == 0, proc.stderr
    (result,) = read_results(tmp_path / "out" / "t")
    assert result["content"] == whole() and result["finish_reason"] == "stop"
    assert result["length_continuations"] == 3
    assert [(e.get("via", "stream"), e["completion_tokens"]) for e in fake.ledger.entries] \
        == [("batch", 30), ("stream", 30), ("stream", 30), ("stream", 10)]
    assert result["usage"]["completion_tokens"] == 100
    stopped = tmp_path / "stop"  # run.on_length: stop (the default) ends it at the cap
    stopped.mkdir()
    path = job(stopped, fake)
    path.write_text(path.read_text().replace('"on_length": "continue"', '"on_length": "stop"'))
    assert run_cli("run", str(path), "--via", "batch", "-q").returncode == 0
    (result,) = read_results(stopped / "out" / "t")
    assert result["finish_reason"] == "length" and result["content"] == whole()[:len(
        result["content"])]


def test_a_budget_holds_across_the_segments_of_a_continued_answer(tmp_path: Path,
                                                                  fake: FakeServer) -> None:
    # Each segment re-sends the text so far and buys up to max_tokens more: a request
    # holds one segment's worst case (~0.001 CNY at qwen-max's prices), so the next
    # segment goes only while the budget still fits, as a retry does. Before, the
    # segments ran on to the end: ~0.02 CNY against a budget of 0.003.
    prompt = "[[len=1000]] a very long report"
    path = write_job(tmp_path / "job.yaml", fake, [{"id": "doc", "prompt": prompt}],
                     endpoint={"region": "cn"},
                     defaults={"model": "qwen-max", "max_tokens": 100},
                     run={"on_length": "continue"})
    path.write_text(path.read_text().replace(
        '"api_key_env"', '"continuation": "partial", "api_key_env"'))
    proc = run_cli("run", str(path), "-q", "--max-cost", "0.003", "--currency", "CNY")
    assert proc.returncode == 3, proc.stderr
    assert "the next attempt of doc (qwen-max: a retry, a continuation or a re-ask) may " \
           "cost up to 0.0010 CNY" in proc.stdout, proc.stdout
    run_dir = tmp_path / "out" / "t"
    report = json.loads((run_dir / "report.json").read_text())
    (total,) = report["totals"]
    assert 0 < total["cost"] <= 0.003, total
    assert len(fake.ledger.entries) < 10
    # the answer so far is kept, and a higher budget goes on from it to the end
    proc = run_cli("run", str(path), "-q", "--max-cost", "1", "--currency", "CNY")
    assert proc.returncode == 0, proc.stderr
    body = {"model": "qwen-max", "messages": [{"role": "user", "content": prompt}]}
    (result,) = read_results(run_dir)
    assert result["content"] == "".join(plan_for(body, 1, Config()).tokens)


def capped_run(tmp_path: Path, fake: FakeServer, prompt: str) -> dict[str, object]:
    """One answer at a cap of 10 tokens, continued in partial mode: its result."""
    path = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": prompt}],
                     defaults={"model": "qwen-plus", "max_tokens": 10},
                     run={"on_length": "continue"}, endpoint={"continuation": "partial"})
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 0, proc.stderr
    (result,) = read_results(tmp_path / "out" / "t")
    return result


def test_an_endpoint_that_refuses_to_continue_ends_it_at_the_cap(tmp_path: Path,
                                                                  fake: FakeServer) -> None:
    """After the endpoint refused a continuation, each fresh attempt was cut at
    the cap again and taken for a segment to continue, which could not be:
    one answer of 50 tokens at a cap of 10 bought 17 attempts, 170 tokens.
    Now the fresh attempt's answer is kept, ending at length."""
    prompt = "[[len=50]] [[nocontinue=1]] a long answer"
    result = capped_run(tmp_path, fake, prompt)
    assert result["finish_reason"] == "length"
    assert result["content"] == "".join(plan_for(
        {"model": "qwen-plus", "messages": [{"role": "user", "content": prompt}]}, 1,
        Config()).tokens[:10])
    # the first answer, the refused continuation, one fresh answer: 20 tokens bought
    assert [e["completion_tokens"] for e in fake.ledger.entries] == [10, 0, 10]


def test_an_answer_that_thought_unannounced_ends_at_the_cap(tmp_path: Path,
                                                            fake: FakeServer) -> None:
    """A model not known to think sent reasoning: its answer cannot go on from
    its text, so each fresh attempt was taken for a segment, cut again, up to
    run.max_continuations (17 attempts). Now the first is kept, at length."""
    prompt = "[[len=50]] [[think=5]] a long answer"
    result = capped_run(tmp_path, fake, prompt)
    assert result["finish_reason"] == "length" and result["reasoning_content"]
    assert len(fake.ledger.entries) == 1
