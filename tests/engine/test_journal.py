"""The journal's writes: attempt rows held to the next commit, texts/ files
written in batches after the commit that recorded their answers."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from batchgen import load_job, run_job
from batchgen.engine import textfiles
from batchgen.engine.runner import RunOptions
from batchgen.engine.textfiles import TextFiles
from batchgen.outputs import files
from batchgen.store.attempts import AttemptEnd, Ended
from batchgen.store.records import Resume, Usage
from batchgen.store.runstore import RunStore
from batchgen.testing.fakeserver import FakeServer
from tests.helpers import no_sleep, write_job


def _usage() -> Usage:
    return Usage(prompt_tokens=3, completion_tokens=5, total_tokens=8)


def _rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT id, request_id, n, mode, status, ended, continues, "
                           "prefix_chars FROM attempts ORDER BY id").fetchall()


def test_attempt_rows_wait_for_the_commit_and_are_written_once(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    store = RunStore(db)
    first = store.start_attempt("a", "fp", "m", run_id=1, n=1, now=1.0)  # written at once
    assert first == 1
    quick = store.new_attempt("b", "fp", "m", run_id=1, n=1, now=2.0)
    slow = store.new_attempt("c", "fp", "m", run_id=1, n=1, now=2.5,
                             resume=Resume(parent=first, text="so far", depth=0, tokens=2))
    assert (quick.id, slow.id) == (2, 3)
    # "b" finished before the commit: inserted once, its end in it; "c" still streams
    store.write_attempts([quick, slow], [
        Ended(quick.id, AttemptEnd(status="done", finish_reason="stop"), _usage(), 3.0,
              request_id="b", content="hi"),
        Ended(first, AttemptEnd(status="error", error_class="http_500"), None, 3.0),
    ])
    store.commit()
    assert _rows(db) == [(1, "a", 1, "fresh", "error", 3.0, None, None),
                         (2, "b", 1, "fresh", "done", 3.0, None, None),
                         (3, "c", 1, "continue", "streaming", None, 1, 6)]
    store.write_attempts([], [Ended(slow.id, AttemptEnd(status="aborted"), None, 4.0)])
    store.commit()
    assert _rows(db)[2][4:6] == ("aborted", 4.0)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT content FROM segments WHERE attempt_id=2").fetchall() == [
            ("hi",)]
        assert con.execute("SELECT completion_tokens FROM usage").fetchall() == [(5,)]
    store.close()
    # numbers go on after the rows on disk, in a new process too
    again = RunStore(db)
    assert again.new_attempt("d", "fp", "m", run_id=2, n=1, now=5.0).id == 4
    assert again.add_batch_attempt("a", "fp", "m", run_id=2, now=5.0) == 5
    again.commit()
    assert _rows(db)[-1][:4] == (5, "a", 2, "batch")
    again.close()


def _ended(i: int) -> Ended:
    return Ended(i, AttemptEnd(status="done"), None, 0.0, request_id=f"r{i}", content=f"text {i}")


def test_text_files_are_written_in_batches_a_sync_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[int] = []
    real = files.write_many_atomic

    def counting(items: list[tuple[str, bytes]]) -> None:
        batches.append(len(items))
        real(items)

    monkeypatch.setattr(textfiles, "write_many_atomic", counting)
    monkeypatch.setattr(textfiles, "SYNC_EVERY", 0.3)
    (tmp_path / "texts").mkdir()

    async def main() -> None:
        writer = TextFiles(tmp_path, lambda exc: pytest.fail(f"unexpected: {exc}"))
        writer.submit([_ended(0)])
        await asyncio.sleep(0.1)  # the first batch goes at once
        for i in range(1, 31):  # then 30 finishes, 10 ms apart, within one sync's wait
            writer.submit([_ended(i)])
            await asyncio.sleep(0.005)
        await writer.close()  # what is queued is written now, without waiting

    asyncio.run(main())
    assert batches[0] == 1
    assert sum(batches) == 31 and len(batches) <= 3, batches
    assert sorted(p.name for p in (tmp_path / "texts").iterdir()) == sorted(
        f"r{i}.md" for i in range(31))
    assert (tmp_path / "texts" / "r30.md").read_text(encoding="utf-8") == "text 30"


def test_an_answers_file_is_created_while_it_streams_and_filled_when_it_ends(
        tmp_path: Path) -> None:
    """The file an answer lands in exists (empty, under its temporary name)
    before the answer does, and is the very file renamed into place; files
    of requests that end unanswered, or never end, are removed."""
    texts = tmp_path / "texts"
    texts.mkdir()

    def temp(rid: str, kind: str = "md") -> Path:
        return Path(files.temp_of(texts / f"{rid}.{kind}"))

    async def main() -> tuple[int, int]:
        writer = TextFiles(tmp_path, lambda exc: pytest.fail(f"unexpected: {exc}"))
        for rid in ("r1", "r2", "r3"):
            writer.reserve(rid)
        writer.reserve("r1")  # a second attempt: the same file
        writer.reserve("r1", reasoning=True)  # it thinks
        writer.reserve("r3", reasoning=True)
        writer.reserve("r4")
        writer.release("r4")  # failed before the writer ran: its file is never made
        await asyncio.sleep(0.05)
        assert not temp("r1").exists()  # made when the writer runs: for an answer
        writer.submit([_ended(0)])
        for _ in range(200):
            if all(temp(rid).exists() for rid in ("r1", "r2", "r3")) \
                    and temp("r1", "reasoning.md").exists():
                break
            await asyncio.sleep(0.01)
        assert temp("r1").stat().st_size == 0
        made = temp("r1").stat().st_ino, temp("r1", "reasoning.md").stat().st_ino
        writer.release("r2")  # r2 failed for good
        writer.submit([replace(_ended(1), reasoning="thought 1")])  # r1 answered
        for _ in range(200):
            if (texts / "r1.md").exists():
                break
            await asyncio.sleep(0.01)
        assert not temp("r2").exists()  # removed with the batch that answered r1
        assert not temp("r4").exists()
        assert temp("r3").exists() and temp("r3", "reasoning.md").exists()  # r3 streams on
        await writer.close()
        return made

    made = asyncio.run(main())
    assert sorted(p.name for p in texts.iterdir()) == ["r0.md", "r1.md", "r1.reasoning.md"]
    assert (texts / "r1.md").read_text(encoding="utf-8") == "text 1"
    assert (texts / "r1.reasoning.md").read_text(encoding="utf-8") == "thought 1"
    assert ((texts / "r1.md").stat().st_ino, (texts / "r1.reasoning.md").stat().st_ino) == made


def test_a_failed_request_leaves_no_temporary_file(
        tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a whole run: the failed request's file, made while it was
    tried, is released when it fails and gone at the end; the answered one
    is in place."""
    released: list[str] = []
    reserved: list[tuple[str, bool]] = []
    real, real_reserve = TextFiles.release, TextFiles.reserve

    def release(self: TextFiles, request_id: str) -> None:
        released.append(request_id)
        real(self, request_id)

    def reserve(self: TextFiles, request_id: str, reasoning: bool = False) -> None:
        reserved.append((request_id, reasoning))
        real_reserve(self, request_id, reasoning)

    monkeypatch.setattr(TextFiles, "release", release)
    monkeypatch.setattr(TextFiles, "reserve", reserve)
    job = write_job(tmp_path / "t.yaml", fake, [
        {"id": "ok", "prompt": "[[think=10]][[len=20]][[delay=0.01]] fine"},
        {"id": "bad", "prompt": "[[faults=cut@3,400]] cut, then refused"}])
    summary = run_job(load_job(job), RunOptions(sleep=no_sleep))
    assert (summary.done, summary.failed) == (1, 1)
    assert released == ["bad"]
    assert ("ok", True) in reserved  # asked for at its first reasoning text
    names = sorted(p.name for p in (tmp_path / "out" / "t" / "texts").iterdir())
    assert names == ["ok.md", "ok.reasoning.md"]


def test_a_refused_batch_reaches_the_journal_and_launches_are_not_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_items: list[tuple[str, bytes]]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(textfiles, "write_many_atomic", refuse)
    monkeypatch.setattr(textfiles, "MAX_PENDING_TEXT", 10)
    errors: list[BaseException] = []

    async def main() -> None:
        writer = TextFiles(tmp_path, errors.append)
        writer.submit([_ended(1)])
        await asyncio.wait_for(writer.room(), 5)  # the failed batch does not hold launches
        await writer.close()

    asyncio.run(main())
    assert [getattr(e, "errno", None) for e in errors] == [28]


def test_no_text_file_is_written_before_its_answer_is_committed(
        tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files follow the commit: at every batch of files, another connection
    already sees each of their answers done (a kill between the two leaves a
    result the export writes again, never a file without its result)."""
    run_dir = tmp_path / "out" / "t"
    seen: list[str] = []
    real = files.write_many_atomic

    def checking(items: list[tuple[str, bytes]]) -> None:
        with sqlite3.connect(f"file:{run_dir / 'run.db'}?mode=ro", uri=True) as con:
            done = {r[0] for r in con.execute("SELECT id FROM requests WHERE state='done'")}
            mode = con.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
        for path, _ in items:
            name = os.path.basename(path)
            rid = name.split(".")[0]
            assert rid in done, f"{name} before its commit"
            seen.append(rid)
        real(items)

    monkeypatch.setattr(textfiles, "write_many_atomic", checking)
    job = write_job(tmp_path / "job.yaml", fake,
                    [{"id": f"p{i}", "prompt": f"[[len=3]] q {i}"} for i in range(40)],
                    run={"concurrency": 8})
    summary = run_job(load_job(job), RunOptions(sleep=no_sleep, flush_interval=0.05))
    assert summary.done == 40
    assert sorted(seen) == sorted(f"p{i}" for i in range(40))


@pytest.mark.parametrize("listed_at_most", [65_536, 1])  # one listing; a stat each
def test_the_export_restores_a_missing_text_file_and_only_that(
        tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch,
        listed_at_most: int) -> None:
    monkeypatch.setattr(files, "LISTED_AT_MOST", listed_at_most)
    prompts: list[dict[str, Any]] = [
        {"id": f"p{i}", "prompt": f"[[len=4]] q {i}"} for i in range(3)]
    prompts[1]["model"] = "qwq-plus"  # an answer with its reasoning
    job = write_job(tmp_path / "job.yaml", fake, prompts)
    assert run_job(load_job(job), RunOptions(sleep=no_sleep)).done == 3
    texts = tmp_path / "out" / "t" / "texts"
    lost = ["p0.md", "p1.reasoning.md"]
    kept = {name: (texts / name).read_bytes() for name in lost}
    before = {p.name: p.stat().st_mtime_ns for p in texts.iterdir()}
    for name in lost:
        (texts / name).unlink()
    store = RunStore(tmp_path / "out" / "t" / "run.db")
    try:
        counts = files.export_all(store, tmp_path / "out" / "t")
    finally:
        store.close()
    assert counts["texts_restored"] == 2
    assert {name: (texts / name).read_bytes() for name in lost} == kept
    assert {p.name: p.stat().st_mtime_ns for p in texts.iterdir() if p.name not in lost} == {
        name: t for name, t in before.items() if name not in lost}
