"""endpoint.headers and --header: what is sent, what is refused, what stays secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen import load_job
from batchgen.engine.runner import Runner, RunOptions
from batchgen.errors import JobFileError, UsageError
from batchgen.jobs.load import Overrides
from batchgen.testing.fakeserver import FakeServer
from tests.helpers import run_cli, write_job

GATEWAY_KEY = "gw-9c1e5b2d4f6a8c0e7f3a"


def job_with(tmp_path: Path, fake: FakeServer | None, headers: dict[str, str]) -> Path:
    return write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "[[len=3]] hi"}],
                     endpoint={"headers": headers})


def test_the_headers_go_with_every_request_their_variables_read_at_the_start(
        tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_API_KEY", GATEWAY_KEY)
    job = job_with(tmp_path, fake, {"X-Title": "nightly essays",
                                    "cf-aig-authorization": "Bearer ${GATEWAY_API_KEY}"})
    proc = run_cli("run", str(job), "-q", "--header", "X-Route: eu ${GATEWAY_API_KEY}",
                   env={"GATEWAY_API_KEY": GATEWAY_KEY})
    assert proc.returncode == 0, proc.stderr
    (entry,) = fake.ledger.entries
    sent = entry["headers"]
    assert sent["x-title"] == "nightly essays"
    assert sent["cf-aig-authorization"] == f"Bearer {GATEWAY_KEY}"
    assert sent["x-route"] == f"eu {GATEWAY_KEY}"
    assert sent["authorization"].startswith("Bearer ")  # batchgen's own, untouched
    assert sent["user-agent"].startswith("batchgen/")
    # a flag replaces the job file's header of the same name (names ignore case)
    fake.ledger.entries.clear()
    again = run_cli("run", str(job), "-q", "--name", "b", "--header", "x-title: by hand")
    assert again.returncode == 0, again.stderr
    assert fake.ledger.entries[0]["headers"]["x-title"] == "by hand"
    # nothing written holds the value a ${NAME} read
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert GATEWAY_KEY.encode() not in path.read_bytes(), path


def test_a_header_variable_is_scrubbed_from_messages_as_the_key_is(
        tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_API_KEY", GATEWAY_KEY)
    runner = Runner(load_job(job_with(tmp_path, fake, {"X-Key": "k=${GATEWAY_API_KEY}"})),
                    RunOptions())
    runner.check()
    assert runner.headers == {"X-Key": f"k={GATEWAY_KEY}"}
    assert runner.redact(f"the gateway said: bad key {GATEWAY_KEY}") == \
        "the gateway said: bad key ***"
    assert "GATEWAY" not in repr(runner.redact)


@pytest.mark.parametrize(("headers", "said"), [
    ({"Authorization": "Bearer ${GATEWAY_API_KEY}"}, "'Authorization' is batchgen's to set"),
    ({"User-Agent": "me"}, "'User-Agent' is batchgen's to set"),
    ({"X Title": "a"}, "'X Title' is not a header name"),
    ({"X-Title": "a", "x-title": "b"}, "given twice"),
    ({"X-Title": "a\nInjected: b"}, "must be one line"),
    ({"X-Key": "${1BAD}"}, "names an environment variable"),
    ({"Helicone-Auth": "Bearer hk-abcdefghijklmnopqrstuvwx"}, "looks like a literal key"),
    ({"x-api-key": "abc123"}, "looks like a literal key"),
    ({"X-Key": "${GITHUB_TOKEN}"}, "GITHUB_TOKEN does not look like an API-key variable"),
    ({"X-Key": "${DASHSCOPE_API_KEY}"}, "holds a Model Studio key, and example.invalid"),
])
def test_a_header_the_job_file_may_not_send_is_refused_at_its_line(
        tmp_path: Path, headers: dict[str, str], said: str) -> None:
    job = job_with(tmp_path, None, headers)
    with pytest.raises(JobFileError) as info:
        load_job(job)
    text = str(info.value)
    assert said in text, text
    assert "hk-abcdefghijklmnopqrstuvwx" not in text and "abc123" not in text
    assert not (tmp_path / "out").exists()


def test_the_user_may_allow_a_variable_and_a_missing_one_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = job_with(tmp_path, None, {"X-Key": "${GITHUB_TOKEN}"})
    loaded = load_job(job, Overrides(allowed_key_envs=("GITHUB_TOKEN",)))
    assert loaded.endpoint.headers == (("X-Key", "${GITHUB_TOKEN}"),)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    with pytest.raises(UsageError, match="needs the environment variable GITHUB_TOKEN"):
        Runner(loaded, RunOptions()).check()
    monkeypatch.setenv("GITHUB_TOKEN", "two\nlines")
    with pytest.raises(UsageError, match="holds more than one line"):
        Runner(loaded, RunOptions()).check()


def test_validate_names_the_headers_and_a_variable_not_set(tmp_path: Path) -> None:
    job = job_with(tmp_path, None, {"X-Title": "t", "X-Key": "${UNSET_GATEWAY_API_KEY}"})
    proc = run_cli("validate", str(job))
    assert proc.returncode == 0, proc.stderr
    assert "  headers:  X-Title, X-Key\n" in proc.stdout
    assert "note: UNSET_GATEWAY_API_KEY is not set; the header 'X-Key' needs it" in proc.stdout
    dry = run_cli("run", str(job), "--dry-run")
    assert dry.returncode == 0 and "  headers:       X-Title, X-Key\n" in dry.stdout


def test_header_flags_and_the_python_api_are_checked_as_the_file_is(tmp_path: Path) -> None:
    job = job_with(tmp_path, None, {})
    proc = run_cli("run", str(job), "--header", "no colon here")
    assert proc.returncode == 2 and "write it as 'Name: value'" in proc.stderr
    proc = run_cli("run", str(job), "--header", "Host: evil.example")
    assert proc.returncode == 2 and "'Host' is batchgen's to set" in proc.stderr
    import batchgen

    with pytest.raises(UsageError, match="a mapping of header name to value"):
        batchgen.run(str(job), headers=["X-Title: a"])
    with pytest.raises(UsageError, match="'Content-Type' is batchgen's to set"):
        batchgen.run(str(job), headers={"Content-Type": "text/plain"})


def test_the_batch_api_calls_carry_the_headers_too(tmp_path: Path, fake: FakeServer) -> None:
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "prompt": "[[len=3]] hi"}],
                    endpoint={"headers": {"X-Route": "${ROUTE_API_KEY}"}})
    proc = run_cli("run", str(job), "-q", "--via", "batch", env={"ROUTE_API_KEY": GATEWAY_KEY})
    assert proc.returncode == 0, proc.stderr
    calls = fake.batches.state.headers
    assert calls and all(h.get("x-route") == GATEWAY_KEY for h in calls), calls
