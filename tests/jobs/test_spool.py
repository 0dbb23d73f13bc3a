"""The plan a run keeps from validating: the same rows as resolving the job
again, whatever the job holds; never a stale or partial plan; never a file
left behind."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import IO

import pytest

from batchgen.engine.runner import RunOptions, run_job
from batchgen.errors import JobFileError
from batchgen.jobs import spool as spool_mod
from batchgen.jobs.load import Overrides, load_job
from batchgen.jobs.spool import Spool
from batchgen.testing.fakeserver import FakeServer
from tests.helpers import KEY_ENV, no_sleep

MIXED = (
    "name: mixed\noutput_dir: OUT\nendpoint: {base_url: 'BASE', api_key_env: KEY}\n"
    "defaults: {model: qwen-plus, system: Be brief., temperature: 0.5}\n"
    "prompts:\n"
    "  - {id: a, prompt: 'Écris un poème 诗', tags: [fr, 诗], max_tokens: 7}\n"
    "  - {prompt: 'no temperature', temperature: null}\n"
    "  - {prompt: 'no id, twice'}\n"
    "  - {prompt: 'no id, twice'}\n"
    "  - {id: m, messages: [{role: user, content: hi}], extra_body: {top_k: 3}}\n"
    "  - {id: big, prompt: 'x', seed: 123456789012345678901234567890}\n"
)


def _job(tmp_path: Path, base: str = "https://example.com/v1") -> Path:
    path = tmp_path / "mixed.yaml"
    path.write_text(MIXED.replace("BASE", base).replace("KEY", KEY_ENV)
                    .replace("OUT", str(tmp_path / "out")), encoding="utf-8")
    return path


def _unlinked() -> int:
    """This process's open unlinked files in the temporary directory (Linux
    makes a TemporaryFile nameless: ``/tmp/#123 (deleted)``; pytest's output
    capture holds some too, so tests compare counts)."""
    import tempfile

    where = os.path.realpath(tempfile.gettempdir()) + "/"
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        count += link.startswith(where) and link.endswith(" (deleted)")
    return count


def test_spooled_rows_are_the_resolved_rows(tmp_path: Path) -> None:
    path = _job(tmp_path)
    again = [r.row() for r in load_job(path).requests()]
    before = _unlinked()
    job = load_job(path, for_run=True)
    assert _unlinked() == before + 1
    assert list(job.plan_rows()) == again
    assert _unlinked() == before  # read once, then closed
    assert len(again) == 6 and again[0][5] == '["fr","诗"]' and again[0][4].count("诗") == 1
    # read again (say, by a second run of the same Job): resolved once more
    assert list(job.plan_rows()) == again


def test_many_rows_over_many_batches_and_a_shard(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_mod, "BATCH", 7)
    path = tmp_path / "many.jsonl"
    path.write_text("".join(f'{{"prompt": "p{i}", "tags": ["t{i % 3}"]}}\n' for i in range(99))
                    + '{"prompt": "a pair of escapes \\ud83d\\ude00"}\n', encoding="utf-8")
    for shard in (None, (1, 3)):
        ov = Overrides(model="m", shard=shard)
        again = [r.row() for r in load_job(path, ov).requests()]
        assert list(load_job(path, ov, for_run=True).plan_rows()) == again
        if shard is None:
            assert len(again) == 100 and "\U0001f600" in again[-1][4]
        else:
            assert 0 < len(again) == load_job(path, ov).info.requests < 100


def test_a_broken_job_leaves_no_spool_open(tmp_path: Path) -> None:
    before = _unlinked()
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b", "temperature": "hot"}\n{"prompt": "c"}\n',
                    encoding="utf-8")
    with pytest.raises(JobFileError):
        load_job(path, Overrides(model="m"), for_run=True)
    clash = tmp_path / "clash.jsonl"
    clash.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', encoding="utf-8")
    with pytest.raises(JobFileError):
        load_job(clash, Overrides(model="m"), for_run=True)
    assert _unlinked() == before


def test_no_temporary_directory_means_resolving_again(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = _job(tmp_path)
    again = [r.row() for r in load_job(path).requests()]
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    job = load_job(path, for_run=True)
    assert job.spool is not None and job.spool.take() is None
    assert list(job.plan_rows()) == again


@pytest.mark.parametrize("fail_at", ["write", "seek"])
def test_a_full_disk_means_resolving_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           fail_at: str) -> None:
    """ENOSPC while spooling (or when the last buffered bytes go out): the
    spool gives up whole, never hands back part of the plan."""
    monkeypatch.setattr(spool_mod, "BATCH", 2)
    path = _job(tmp_path)
    again = [r.row() for r in load_job(path).requests()]
    import tempfile
    real = tempfile.TemporaryFile

    class Full:
        def __init__(self, inner: IO[bytes]) -> None:
            self.inner, self.writes = inner, 0

        def write(self, data: bytes) -> int:
            self.writes += 1
            if fail_at == "write" and self.writes == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.inner.write(data)

        def seek(self, pos: int) -> int:
            if fail_at == "seek":
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.inner.seek(pos)

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    monkeypatch.setattr(tempfile, "TemporaryFile",
                        lambda **kw: Full(real("w+b", **kw)))
    before = _unlinked()
    job = load_job(path, for_run=True)
    assert list(job.plan_rows()) == again
    assert _unlinked() == before


def test_spool_round_trip_and_single_read() -> None:
    spool = Spool()
    rows = [(f"r{i}", i, "f" * 64, "m", '{"a":"\ud83d\ude00 \udc80"}', None if i % 2 else '["t"]',
             None if i % 3 else '{"doc_id":"7"}', None if i % 5 else '{"type":"object"}')
            for i in range(5_001)]
    for row in rows:
        spool.add(row)
    taken = spool.take()
    assert taken is not None and list(taken) == rows
    assert spool.take() is None


def test_long_bodies_are_written_out_early(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch holds ~BATCH_CHARS of body text, not 2,000 long prompts."""
    monkeypatch.setattr(spool_mod, "BATCH_CHARS", 1_000)
    spool = Spool()
    rows = [(f"r{i}", i, "f", "m", "x" * 300, None, None, None) for i in range(40)]
    held = 0
    for row in rows:
        spool.add(row)
        held = max(held, len(spool._batch))
    assert held == 3
    taken = spool.take()
    assert taken is not None and list(taken) == rows


def test_a_run_plans_from_the_spool_even_if_the_file_changes_after_validating(
        tmp_path: Path, fake: FakeServer) -> None:
    """What ran is what was validated (and counted into the plan's digest):
    the file is not read a second time. Resolving it again would refuse the
    change as a file that changed while batchgen read it."""
    path = tmp_path / "job.jsonl"
    path.write_text("".join(f'{{"prompt": "poème {i}", "tags": ["t"]}}\n' for i in range(6)),
                    encoding="utf-8")
    ov = Overrides(model="qwen-plus", base_url=fake.base_url, api_key_env=KEY_ENV,
                   out=str(tmp_path / "out"))
    before = _unlinked()
    job = load_job(path, ov, for_run=True)
    expected = [r.row() for r in job.requests()]
    path.write_text(path.read_text(encoding="utf-8").replace("poème", "roman"),
                    encoding="utf-8")
    summary = run_job(job, RunOptions(sleep=no_sleep, flush_interval=0.05))
    assert summary.exit_code == 0 and summary.done == 6
    with sqlite3.connect(job.run_dir / "run.db") as db:
        stored = db.execute("SELECT id, position, fingerprint, model, body, tags, data_row, schema "
                            "FROM requests ORDER BY position").fetchall()
    assert stored == expected
    assert _unlinked() == before
    # a resume: the store holds this plan already, nothing to keep
    assert load_job(path, ov, for_run=True).spool is None


def test_batchgen_run_plans_without_resolving_again(tmp_path: Path, fake: FakeServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from batchgen.cli import main
    from batchgen.jobs.load import Job

    path = tmp_path / "job.jsonl"
    path.write_text("".join(f'{{"prompt": "p{i}"}}\n' for i in range(5)), encoding="utf-8")

    def refused(_job: Job) -> object:
        raise AssertionError("the job was resolved a second time")

    monkeypatch.setattr(Job, "requests", refused)
    done = CliRunner().invoke(main, [
        "run", str(path), "--model", "qwen-plus", "--base-url", fake.base_url,
        "--api-key-env", KEY_ENV, "--out", str(tmp_path / "out"), "-q"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "out" / "job" / "results.jsonl").read_text().count("\n") == 5
