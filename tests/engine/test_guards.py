"""The repetition guard: a degenerate loop is stopped while it streams, and
long legitimate structure is not (a corpus of such texts, written here)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from batchgen.engine.guards import loop_found
from batchgen.jobs.records import GuardSettings
from batchgen.testing.fakeserver import FakeServer
from tests.helpers import read_results, run_cli, write_job

SENTENCE = " The answer is the same as before, and so on."


def corpus() -> dict[str, str]:
    """Long texts with much structure and no loop."""
    rng = random.Random(7)
    words = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
             "omicron pi rho sigma tau upsilon phi chi psi omega").split()
    table = "| id | name | price | stock |\n|---|---|---|---|\n" + "".join(
        f"| {i} | {rng.choice(words)}-{rng.randint(100, 999)} | {rng.uniform(1, 99):.2f} | "
        f"{rng.randint(0, 500)} |\n" for i in range(400))
    numbered = "".join(f"{i}. Step {i}: {rng.choice(words)} the {rng.choice(words)}.\n"
                       for i in range(1, 300))
    code = "".join(f"    self.field_{i} = config.get('field_{i}', {i})\n" for i in range(300))
    csv = "date,open,high,low,close\n" + "".join(
        f"2026-{1 + i // 28:02d}-{1 + i % 28:02d},{rng.uniform(90, 110):.2f},"
        f"{rng.uniform(100, 120):.2f},{rng.uniform(80, 100):.2f},{rng.uniform(90, 110):.2f}\n"
        for i in range(300))
    refrain = "\n\nAnd the river runs to the sea, to the sea, to the sea.\n\n"
    poem = "".join(f"Verse {i}: " + " ".join(rng.choice(words) for _ in range(30)) + refrain
                   for i in range(40))
    chinese = "".join(rng.choice("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就"
                                 "分对成会可主发年动同工也能下过子说产种面而方后多定行学法所")
                      for _ in range(6000))
    japanese = "".join(rng.choice("あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほ"
                                  "まみむめもやゆよらりるれろわをん、。日本語の文章")
                       for _ in range(6000))
    # runs of one character, each under the bar, between lines that differ
    dots = "".join(f"Step {i}: loading" + "." * rng.randint(10, 40) + " done.\n" + "=" * 80
                   + "\n" for i in range(20))
    return {"markdown table": table, "numbered list": numbered, "similar code lines": code,
            "csv dump": csv, "poem with a refrain": poem, "chinese": chinese,
            "japanese": japanese, "rules and dots": dots}


@pytest.mark.parametrize("name", list(corpus()))
def test_no_false_positive_on_long_legitimate_structure(name: str) -> None:
    text = corpus()[name]
    assert len(text) > 1500
    assert loop_found(text) is None, name


@pytest.mark.parametrize("span", [SENTENCE, "很好很好，我们继续。", " | x | y |\n"])
def test_a_loop_is_found_and_the_first_copy_kept(span: str) -> None:
    head = "A fine beginning of a report. " * 3
    text = head + span * max(400, 1500 // len(span) + 1)
    keep = loop_found(text)
    assert keep == len(head) + len(span)  # the text to the end of the loop's first copy


@pytest.mark.parametrize("unit", ["ok", "-", "ab", "\n"])
def test_a_unit_shorter_than_a_span_is_not_a_loop_of_text(unit: str) -> None:
    """A ruler, "okokok…" (the SDK's decoder test), a run of newlines: the
    repeating unit is shorter than min_span, so they are read as they are."""
    assert loop_found("Intro. " + unit * 3000) is None


def test_the_thresholds_are_settings() -> None:
    text = "x" * 20 + SENTENCE * 35  # 1,610 characters of loop, 35 copies
    assert loop_found(text) is not None
    assert loop_found(text, GuardSettings(min_copies=40)) is None
    assert loop_found(text, GuardSettings(min_chars=5000)) is None
    assert loop_found(text, GuardSettings(min_span=40)) is not None  # a 46-character unit
    assert loop_found(text, GuardSettings(min_span=100)) is None  # ... is shorter than this


def job(tmp_path: Path, fake: FakeServer, on: str | bool) -> Path:
    guard: dict[str, object] = ({"repetition": False} if on is False
                                else {"on_repetition": on})
    return write_job(tmp_path / "job.yaml", fake,
                     [{"id": "loop", "prompt": "[[len=2000]][[loop=300]][[delay=0.002]] a report"},
                      {"id": "fine", "prompt": "[[len=40]] a short answer"}],
                     defaults={"model": "qwen-plus", "max_tokens": 8192},
                     run={"guard": guard, "max_attempts": 2},
                     pricing={"qwen-plus": {"currency": "CNY", "input": 0.8, "output": 2.0}})


def bought(fake: FakeServer) -> list[int]:
    return sorted(e["completion_tokens"] for e in fake.ledger.entries)


def test_fail_stops_the_loop_early_keeps_the_text_and_says_why(tmp_path: Path,
                                                                fake: FakeServer) -> None:
    proc = run_cli("run", str(job(tmp_path, fake, "fail")), "-q")
    assert proc.returncode == 1, proc.stderr
    run_dir = tmp_path / "out" / "t"
    # the loop starts at token 300; 10 copies of 12 tokens, then a check's worth more
    assert bought(fake)[-1] <= 300 + 10 * 12 + 256, bought(fake)
    partial = (run_dir / "texts" / "loop.partial.md").read_text(encoding="utf-8")
    assert partial.endswith(SENTENCE) and partial.count(SENTENCE) == 1
    failed = [json.loads(line) for line in (run_dir / "failed.jsonl").read_text().splitlines()]
    assert [f["id"] for f in failed] == ["loop"]  # re-runnable, in job-file form
    status = run_cli("status", str(run_dir)).stdout
    assert "loop: repetition" in status
    assert "completion (1 attempt estimated)" in status
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    assert [(f["id"], f["error_class"]) for f in report["failed"]] == [("loop", "repetition")]
    # what the loop cost is on a line of its own, as well as in the totals
    [apart] = report["apart"]
    assert (apart["kind"], apart["key"], apart["attempts"]) == ("loops stopped", "qwen-plus", 1)
    assert 300 < apart["completion_tokens"] <= 300 + 10 * 12 + 256
    assert 0 < apart["cost"] < report["totals"][0]["cost"]
    assert "- loops stopped: qwen-plus: 1 attempt, " in (run_dir / "report.md").read_text()
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "repetition" in html and 'data-apart="loops stopped"' in html
    assert [r["id"] for r in read_results(run_dir)] == ["fine"]


def test_keep_finishes_with_the_text_to_the_first_copy(tmp_path: Path, fake: FakeServer) -> None:
    proc = run_cli("run", str(job(tmp_path, fake, "keep")), "-q")
    assert proc.returncode == 0, proc.stderr
    results = {r["id"]: r for r in read_results(tmp_path / "out" / "t")}
    loop = results["loop"]
    assert loop["finish_reason"] == "repetition"
    assert loop["content"].endswith(SENTENCE) and loop["content"].count(SENTENCE) == 1
    # its cost is the looping attempt's, for all it streamed (estimated, then refined
    # from that text); the kept answer's own record carries no usage
    assert loop["usage"] is None
    import sqlite3

    with sqlite3.connect(tmp_path / "out" / "t" / "run.db") as db:
        (tokens,) = db.execute(
            "SELECT u.completion_tokens FROM attempts a JOIN usage u ON u.attempt_id = a.id "
            "WHERE a.request_id = 'loop' AND a.error_class = 'repetition'").fetchone()
    assert tokens > 300  # what was bought, not what was kept


def test_retry_asks_again_within_max_attempts_and_off_buys_it_all(tmp_path: Path,
                                                                   fake: FakeServer) -> None:
    proc = run_cli("run", str(job(tmp_path, fake, "retry")), "-q")
    assert proc.returncode == 1  # the fake loops every time: two attempts, then failed
    assert len([t for t in bought(fake) if t > 300]) == 2
    other = tmp_path / "off"
    other.mkdir()
    fake.ledger.entries.clear()
    proc = run_cli("run", str(job(other, fake, False)), "-q")
    assert proc.returncode == 0
    assert bought(fake)[-1] == 2000  # without the guard the loop is bought to its end
