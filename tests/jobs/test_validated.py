"""A run of an unchanged job reuses what the last run found validating it;
any change that could matter validates again, and nothing stale stands."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from batchgen.cli import main
from batchgen.jobs import load as jobfile
from batchgen.jobs import resolve, validated
from batchgen.jobs.load import Overrides, load_job
from batchgen.testing.fakeserver import FakeServer
from tests.helpers import KEY_ENV


@pytest.fixture
def walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times a job's prompts were walked (resolved), run by run."""
    count = [0]
    real: Callable[..., Iterator[Any]] = resolve.resolve_all

    def counting(*args: Any) -> Iterator[Any]:
        count[0] += 1
        return real(*args)

    monkeypatch.setattr(jobfile, "resolve_all", counting)
    return count


def _write(path: Path, n: int) -> Path:
    path.write_text("".join(f'{{"prompt": "p{i}", "temperature": 0.{i}}}\n' for i in range(n)),
                    encoding="utf-8")
    return path


def _run(path: Path, fake: FakeServer, tmp_path: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, [
        "run", str(path), "--model", "qwen-plus", "--base-url", fake.base_url,
        "--api-key-env", KEY_ENV, "--out", str(tmp_path / "out"), "-q", *extra])


def test_an_unchanged_job_is_not_walked_again(tmp_path: Path, fake: FakeServer,
                                              walks: list[int]) -> None:
    path = _write(tmp_path / "job.jsonl", 6)
    first = _run(path, fake, tmp_path)
    assert first.exit_code == 0, first.output
    assert walks[0] == 1
    again = _run(path, fake, tmp_path, "--concurrency", "3")  # changes no request
    assert again.exit_code == 0, again.output
    assert walks[0] == 1 and fake.ledger.requests == 6
    ov = Overrides(model="qwen-plus", base_url=fake.base_url, api_key_env=KEY_ENV,
                   out=str(tmp_path / "out"))
    assert load_job(path, ov, for_run=True).info == load_job(path, ov).info


@pytest.mark.parametrize("change", ["content", "model", "base_url", "shard", "code"])
def test_what_could_change_a_request_walks_the_job_again(
        tmp_path: Path, fake: FakeServer, walks: list[int], monkeypatch: pytest.MonkeyPatch,
        change: str) -> None:
    path = _write(tmp_path / "job.jsonl", 4)
    ov = Overrides(model="qwen-plus", base_url=fake.base_url, api_key_env=KEY_ENV,
                   out=str(tmp_path / "out"))
    assert _run(path, fake, tmp_path).exit_code == 0
    assert walks[0] == 1
    if change == "content":  # same size, same second: only the bytes differ
        path.write_text(path.read_text(encoding="utf-8").replace("p1", "q1"), encoding="utf-8")
    elif change == "model":
        ov = Overrides(**{**ov.__dict__, "model": "qwen-max"})
    elif change == "base_url":
        ov = Overrides(**{**ov.__dict__, "base_url": fake.base_url.replace("127.0.0.1",
                                                                            "localhost")})
    elif change == "shard":
        ov = Overrides(**{**ov.__dict__, "shard": (0, 1)})
    else:
        monkeypatch.setattr(validated, "_code_key", lambda: b"another batchgen")
    job = load_job(path, ov, for_run=True)
    assert walks[0] == 2
    assert job.info == load_job(path, ov).info


def test_a_broken_edit_after_a_run_is_still_refused(tmp_path: Path, fake: FakeServer) -> None:
    path = _write(tmp_path / "job.jsonl", 3)
    assert _run(path, fake, tmp_path).exit_code == 0
    path.write_text(path.read_text(encoding="utf-8") + '{"prompt": "x", "temperature": "hot"}\n',
                    encoding="utf-8")
    broken = _run(path, fake, tmp_path)
    assert broken.exit_code == 2 and "job.jsonl:4: temperature" in broken.output


def test_validate_and_dry_run_always_walk(tmp_path: Path, fake: FakeServer,
                                          walks: list[int]) -> None:
    path = _write(tmp_path / "job.jsonl", 3)
    assert _run(path, fake, tmp_path).exit_code == 0
    flags = ["--model", "qwen-plus", "--base-url", fake.base_url, "--api-key-env", KEY_ENV,
             "--out", str(tmp_path / "out")]
    assert CliRunner().invoke(main, ["validate", str(path), *flags]).exit_code == 0
    assert walks[0] == 2
    dry = CliRunner().invoke(main, ["run", str(path), *flags, "--dry-run"])
    assert dry.exit_code == 0 and "to skip:       3" in dry.output
    assert walks[0] >= 3


@pytest.mark.parametrize("damage", ["garbage record", "other key", "not a store"])
def test_an_unusable_record_means_validating(tmp_path: Path, fake: FakeServer,
                                             walks: list[int], damage: str) -> None:
    path = _write(tmp_path / "job.jsonl", 3)
    assert _run(path, fake, tmp_path).exit_code == 0
    db = tmp_path / "out" / "job" / "run.db"
    if damage == "not a store":
        db.unlink()
        db.write_bytes(b"not sqlite at all" * 100)
    else:
        value = "{not json" if damage == "garbage record" else '{"key": "x", "info": {}}'
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE meta SET value=? WHERE key=?", (value, validated.META_KEY))
    ov = Overrides(model="qwen-plus", base_url=fake.base_url, api_key_env=KEY_ENV,
                   out=str(tmp_path / "out"))
    job = load_job(path, ov, for_run=True)
    assert walks[0] == 2 and job.info.requests == 3


def test_a_file_that_moves_while_read_gives_no_key(tmp_path: Path) -> None:
    path = _write(tmp_path / "job.jsonl", 3)
    job = load_job(path, Overrides(model="m"), for_run=True)
    assert job.validation_key is not None and validated.key_of(job) == job.validation_key
    path.write_text(path.read_text(encoding="utf-8") + '{"prompt": "more"}\n', encoding="utf-8")
    assert validated.key_of(job) is None and not validated.still_valid(job)
