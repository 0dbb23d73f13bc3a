"""batchgen from Python: ``batchgen.run`` and ``arun`` with a job dict, rows
from Python or a DataFrame, inside a running event loop, Ctrl-C, the CLI's
errors, and the table as rows and as a DataFrame."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import batchgen
from batchgen.errors import JobFileError
from batchgen.testing.fakeserver import FakeServer
from batchgen.testing.process import FakeProcess
from tests.helpers import KEY_ENV, ROOT
from tests.scenarios.test_data import ROWS, data_job, read_table, write_rows


def python_job(tmp_path: Path, fake: FakeServer) -> dict[str, Any]:
    return {"name": "py", "output_dir": str(tmp_path / "out"),
            "endpoint": {"base_url": fake.base_url, "api_key_env": KEY_ENV},
            "defaults": {"model": "qwen-plus"}, "template": {"prompt": "Say {{ word }}"}}


def test_run_from_python_with_rows_and_a_dataframe(tmp_path: Path, fake: FakeServer) -> None:
    import pandas as pd

    rows = [{"word": "one", "n": 1}, {"word": "two", "n": 2}, {"word": "three", "n": 3}]
    result = batchgen.run(python_job(tmp_path, fake), rows=rows, progress=False)
    assert result.ok and result.counts == {"done": 3, "failed": 0, "pending": 0}
    assert result.run_dir == tmp_path / "out" / "py"
    table = result.rows()
    assert [(r["word"], r["n"], r["status"]) for r in table] == [
        ("one", 1, "done"), ("two", 2, "done"), ("three", 3, "done")]
    frame = result.to_pandas()
    assert list(frame["word"]) == ["one", "two", "three"]
    # the same rows as a DataFrame: the same ids, nothing sent again
    sent = len(fake.ledger.entries)
    again = batchgen.run(python_job(tmp_path, fake), rows=pd.DataFrame(rows), progress=False)
    assert again.ok and len(fake.ledger.entries) == sent
    assert [r["id"] for r in again.rows()] == [r["id"] for r in table]


def test_missing_values_of_a_dataframe_are_null_not_text(tmp_path: Path,
                                                         fake: FakeServer) -> None:
    """NaN, NaT and pandas' NA are null in the row (not "NaT" or "<NA>" in the
    prompt); times are ISO 8601 in the prompt, and times again in the table's
    rows; a NumPy array in a cell is a list."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({
        "word": pd.array(["one", None], dtype="string"),
        "n": pd.array([1, None], dtype="Int64"),
        "x": [1.5, np.nan],
        "when": pd.to_datetime(["2024-01-02", None]),
        "v": [np.array([1, 2]), np.array([3])]})
    result = batchgen.run(python_job(tmp_path, fake), rows=frame, progress=False)
    assert result.ok
    table = result.rows()
    assert [(r["word"], r["n"], r["x"], r["when"], r["v"]) for r in table] == [
        ("one", 1, 1.5, datetime.datetime(2024, 1, 2), [1, 2]), (None, None, None, None, [3])]
    sent = [e["body"]["messages"][0]["content"] for e in fake.ledger.entries]
    assert sent == ["Say one", "Say "]  # a null writes nothing


def test_errors_from_python_are_the_clis(tmp_path: Path, fake: FakeServer) -> None:
    with pytest.raises(JobFileError) as caught:
        batchgen.run(python_job(tmp_path, fake), rows=[{"word": "x"}, {"other": 1}],
                     progress=False)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.key) == ("rows", 2, "template.prompt")
    assert "'word' is undefined" in problem.message
    with pytest.raises(TypeError, match="unknown setting"):
        batchgen.run(python_job(tmp_path, fake), rows=[], bogus=1)
    with pytest.raises(JobFileError) as caught:
        batchgen.run(python_job(tmp_path, fake), rows=[], progress=False)
    (problem,) = caught.value.problems
    assert (problem.file, problem.message) == (
        "rows", "no rows: give at least one, or leave rows= out")
    # settings the CLI's flags check, checked as they are (concurrency=0 ran at 8, and
    # shard="1/2" was a TypeError from deep inside)
    rows = [{"word": "x"}]
    for bad, says in ((dict(concurrency=0), "concurrency=0: a whole number from 1 to 4096"),
                      (dict(concurrency=2.5), "concurrency=2.5"),
                      (dict(max_cost=-1), "max_cost=-1: a number above 0"),
                      (dict(via="carrier"), "via='carrier': one of stream, batch"),
                      (dict(shard="3/2"), "K must be from 1 to 2"),
                      (dict(shard=(0, 2)), "shard=(0, 2): K must be from 1 to N"),
                      (dict(shard="half"), "write K/N")):
        with pytest.raises(batchgen.UsageError, match=re.escape(says)):
            batchgen.run(python_job(tmp_path, fake), rows=rows, progress=False, **bad)
    assert not (tmp_path / "out").exists()
    with pytest.raises(batchgen.UsageError, match="concurrency 0: from 1 to 4096"):
        spec = {**python_job(tmp_path, fake), "prompts": [{"prompt": "hi"}]}
        del spec["template"]
        (tmp_path / "job.json").write_text(json.dumps(spec))
        batchgen.load_job(tmp_path / "job.json", batchgen.Overrides(concurrency=0))
    result = batchgen.run(python_job(tmp_path, fake), rows=rows, progress=False, shard="1/1")
    assert result.ok and result.run_dir == tmp_path / "out" / "py" / "shard-1-of-1"


def test_run_inside_a_running_event_loop_like_a_notebook_cell(tmp_path: Path,
                                                              fake_process: FakeProcess) -> None:
    job = {"name": "nb", "output_dir": str(tmp_path / "out"),
           "endpoint": {"base_url": fake_process.base_url, "api_key_env": KEY_ENV},
           "defaults": {"model": "qwen-plus"}, "template": {"prompt": "Say {{ word }}"}}

    async def cell() -> batchgen.RunResult:
        return batchgen.run(job, rows=[{"word": "a"}, {"word": "b"}], progress=False)

    result = asyncio.run(cell())
    assert result.counts["done"] == 2

    async def awaited() -> batchgen.RunResult:
        return await batchgen.arun(job, rows=[{"word": "a"}, {"word": "b"}, {"word": "c"}],
                                   progress=False)

    assert asyncio.run(awaited()).counts == {"done": 3, "failed": 0, "pending": 0}


def test_ctrl_c_stops_a_python_run_cleanly_and_the_next_call_resumes(
        tmp_path: Path, fake_process: FakeProcess) -> None:
    """SIGINT to a script inside batchgen.run (as a notebook's interrupt): the
    run stops as the CLI's does, KeyboardInterrupt is raised, the outputs are
    written; the same call again finishes the job."""
    job = {"name": "ki", "output_dir": str(tmp_path / "out"),
           "endpoint": {"base_url": fake_process.base_url, "api_key_env": KEY_ENV,
                        "continuation": "partial"},
           "defaults": {"model": "qwen-plus"}, "run": {"concurrency": 2},
           "template": {"prompt": "[[len=60]] [[delay=0.03]] Say {{ word }}"}}
    script = tmp_path / "script.py"
    script.write_text(
        "import json, sys, batchgen\n"
        f"job = json.loads({json.dumps(json.dumps(job))})\n"
        "rows = [{'word': f'w{i}'} for i in range(12)]\n"
        "try:\n"
        "    result = batchgen.run(job, rows=rows, progress=False)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(0)\n"
        "print('finished', result.counts, flush=True)\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    db = tmp_path / "out" / "ki" / "run.db"
    import sqlite3
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                if conn.execute("SELECT COUNT(*) FROM requests WHERE state = 'done'"
                                ).fetchone()[0] >= 2:
                    break
        except sqlite3.Error:
            continue
    proc.send_signal(2)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == "interrupted", (out, err)
    run_dir = tmp_path / "out" / "ki"
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM requests GROUP BY state"))
        aborted = conn.execute("SELECT COUNT(*) FROM attempts WHERE error_class = "
                               "'interrupted'").fetchone()[0]
    assert 2 <= states.get("done", 0) < 12 and aborted >= 1, (states, aborted)
    assert (run_dir / "table.jsonl").exists()  # written on the way out, as the CLI does
    again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert "finished {'done': 12, 'failed': 0, 'pending': 0}" in again.stdout, again.stderr
    table = read_table(run_dir / "table.jsonl")
    assert [r["word"] for r in table] == [f"w{i}" for i in range(12)]
    assert all(r["status"] == "done" for r in table)


def test_the_table_of_parquet_data_has_its_types_in_python_too(tmp_path: Path,
                                                               fake: FakeServer) -> None:
    """``table.parquet`` gave Parquet data's dates, timestamps and decimals back,
    but ``rows()`` and ``to_pandas()`` gave them as text: a notebook had to parse
    them again. Now ``to_pandas()`` is what pandas reads from ``table.parquet``,
    and ``rows()`` has the same values."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    when = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    pq.write_table(pa.table({
        "doc_id": ["d1", "d2"], "text": ["a", "b"],
        "day": pa.array([datetime.date(2024, 1, 2), None]),
        "price": pa.array([decimal.Decimal("1.50"), None], pa.decimal128(6, 2)),
        "at": pa.array([when, when], pa.timestamp("us", tz="UTC")),
        "n": pa.array([1, None], pa.int32())}), tmp_path / "docs.parquet")
    job = data_job(tmp_path, fake.base_url, {"path": "docs.parquet", "id": "doc_id"},
                   template={"prompt": "[[len=3]] {{ text }}"})
    result = batchgen.run(job, progress=False)
    assert result.ok
    first = result.rows()[0]
    assert (first["day"], first["price"], first["at"], first["n"]) == (
        datetime.date(2024, 1, 2), decimal.Decimal("1.50"), when, 1)
    assert result.rows()[1]["day"] is None
    frame = result.to_pandas()
    read = pd.read_parquet(result.run_dir / "table.parquet")
    assert frame.dtypes.equals(read.dtypes)
    assert str(frame["at"].dtype) == str(read["at"].dtype) and "datetime64" in str(read["at"].dtype)
    assert frame.drop(columns=["content"]).equals(read.drop(columns=["content"]))
    # data that is not Parquet keeps its values as the store has them
    (tmp_path / "c").mkdir()
    write_rows(tmp_path / "c" / "docs.csv", ROWS[:1])
    csv_job = data_job(tmp_path / "c", fake.base_url, "docs.csv")
    assert batchgen.run(csv_job, progress=False).rows()[0]["lang"] == "French"


def test_a_dataframe_s_types_come_back_in_its_table(tmp_path: Path, fake: FakeServer) -> None:
    """A DataFrame given as ``rows=`` gave its dates, timestamps, decimals and
    categories back as text (``rows()``, ``to_pandas()``, ``table.parquet``),
    as Parquet data did before: they come back as the DataFrame had them, as
    pandas reads them from Parquet. A column of mixed objects keeps the values
    as JSON holds them, and so does every column with it."""
    import pandas as pd

    when = pd.to_datetime(["2024-01-01 10:00", None], utc=True)
    frame = pd.DataFrame({
        "word": ["one", "two"], "day": [datetime.date(2024, 1, 2), None],
        "price": [decimal.Decimal("1.10"), decimal.Decimal("2.25")], "at": when,
        "kind": pd.Categorical(["a", "b"])})
    job = {**python_job(tmp_path, fake), "output": {"format": "parquet"}}
    result = batchgen.run(job, rows=frame, progress=False)
    assert result.ok
    first = result.rows()[0]
    assert (first["day"], first["price"], first["at"], first["kind"]) == (
        datetime.date(2024, 1, 2), decimal.Decimal("1.10"),
        datetime.datetime(2024, 1, 1, 10, tzinfo=datetime.UTC), "a")
    got = result.to_pandas()
    assert str(got["at"].dtype) == "datetime64[us, UTC]" and got["at"].isna().tolist() == [
        False, True]
    assert isinstance(got["kind"].dtype, pd.CategoricalDtype)
    read = pd.read_parquet(result.run_dir / "table.parquet")
    assert got.dtypes.equals(read.dtypes)
    assert got.drop(columns=["content"]).equals(read.drop(columns=["content"]))
    sent = [e["body"]["messages"][0]["content"] for e in fake.ledger.entries]
    assert sent == ["Say one", "Say two"]
    mixed = batchgen.run({**python_job(tmp_path, fake), "name": "mixed"},
                         rows=pd.DataFrame({"word": [1, "a"], "at": when}), progress=False)
    assert [(r["word"], r["at"]) for r in mixed.rows()] == [
        (1, "2024-01-01T10:00:00+00:00"), ("a", None)]
