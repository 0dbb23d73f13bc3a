"""A canary key goes through every path; it must never come out anywhere."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from batchgen.secrets import Redactor
from batchgen.testing.process import FakeProcess
from tests.helpers import CANARY, read_results, run_cli, write_job


def all_bytes_under(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_canary_key_never_leaves_the_process(tmp_path: Path, fake_process: FakeProcess) -> None:
    prompts = [
        {"id": "ok", "prompt": "[[len=8]] fine"},
        {"id": "retried", "prompt": "[[len=8]] [[faults=500,cut@2,ok]] x"},
        {"id": "bad", "prompt": "[[faults=400]] refused"},
        {"id": "echo", "prompt": "[[faults=errevent@1,401]] echoes the key"},
    ]
    job = write_job(tmp_path / "job.yaml", None, prompts, run={"concurrency": 1})
    job.write_text(job.read_text().replace("https://example.invalid/v1", fake_process.base_url))
    outputs = []
    first = run_cli("run", str(job), "--verbose", "--progress", "lines")
    outputs.append(first)
    assert first.returncode == 4, first.stderr  # the 401 stopped the run...
    assert "Incorrect API key provided: ***" in first.stderr  # ...and its echo was scrubbed
    run_dir = tmp_path / "out" / "t"
    outputs.append(run_cli("status", str(run_dir)))
    outputs.append(run_cli("validate", str(job)))
    # a crash: the run store is unreadable
    (tmp_path / "broken" / "t").mkdir(parents=True)
    (tmp_path / "broken" / "t" / "run.db").write_bytes(b"not a database" * 100)
    crash = run_cli("run", str(job), "--out", str(tmp_path / "broken"), "--verbose")
    assert crash.returncode != 0
    outputs.append(crash)
    text = "".join(o.stdout + o.stderr for o in outputs)
    assert CANARY not in text
    assert CANARY.encode() not in all_bytes_under(tmp_path)
    assert {r["id"] for r in read_results(run_dir)} >= {"ok"}
    db = sqlite3.connect(run_dir / "run.db")
    messages = [m for (m,) in db.execute("SELECT error_message FROM attempts") if m]
    assert any("***" in m for m in messages)


def test_redactor() -> None:
    redact = Redactor("sk-secret-value-1234", None, "")
    assert redact("key sk-secret-value-1234 here") == "key *** here"
    assert "sk-secret" not in repr(redact)
