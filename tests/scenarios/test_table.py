"""The table out: ``batchgen export`` to a file, standard output, a pipe or a
link; ``output.table`` and ``output.format``; tables Excel opens; no table
written over the job's own files; Parquet tables with the data's types."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from batchgen.testing.fakeserver import FakeServer
from tests.helpers import ROOT, run_cli
from tests.scenarios.test_data import GENERATED, ROWS, data_job, read_table, write_rows


def test_export_goes_to_standard_output_a_pipe_or_a_link(tmp_path: Path,
                                                         fake: FakeServer) -> None:
    """-o - and -o /dev/stdout write the table to the output; a FIFO is written
    into, not replaced by a file; a symlink's file is replaced, the link kept.
    (/proc/self/fd/1 is /dev/stdout's target: were it renamed over, as root,
    /dev/stdout itself would be a file; /proc refuses one.)"""
    import threading

    write_rows(tmp_path / "docs.csv", ROWS)
    job = data_job(tmp_path, fake.base_url, {"path": "docs.csv", "id": "doc_id"})
    assert run_cli("run", str(job), "-q").returncode == 0
    run_dir = tmp_path / "out" / "translate"
    table = (run_dir / "table.csv").read_text(encoding="utf-8")
    for dest in ("-", "/proc/self/fd/1"):
        proc = run_cli("export", str(run_dir), "-o", dest, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == table  # the table, and no path after it
    assert not (tmp_path / "-").exists()
    # standard output redirected to a file: the table goes into it
    with (tmp_path / "redirected.csv").open("w") as out:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "batchgen", "export", str(run_dir), "-o",
                        "/proc/self/fd/1"], stdout=out, env=env, check=True, timeout=60)
    assert (tmp_path / "redirected.csv").read_text(encoding="utf-8") == table
    if os.access("/dev/shm", os.W_OK):  # a regular file under /dev is replaced, not added to
        with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
            (Path(shm) / "t.csv").write_text("old\n", encoding="utf-8")
            assert run_cli("export", str(run_dir), "-o", f"{shm}/t.csv").returncode == 0
            assert (Path(shm) / "t.csv").read_text(encoding="utf-8") == table
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    proc = run_cli("export", str(run_dir), "-o", str(fifo))
    reader.join(timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert got == [table.encode()] and fifo.is_fifo()
    (tmp_path / "real.csv").write_text("old", encoding="utf-8")
    (tmp_path / "link.csv").symlink_to(tmp_path / "real.csv")
    assert run_cli("export", str(run_dir), "-o", str(tmp_path / "link.csv")).returncode == 0
    assert (tmp_path / "link.csv").is_symlink()
    assert (tmp_path / "real.csv").read_text(encoding="utf-8") == table


def test_export_of_a_job_without_data_has_a_row_per_request(tmp_path: Path,
                                                            fake: FakeServer) -> None:
    from tests.helpers import write_job

    job = write_job(tmp_path / "p.yaml", fake, [{"id": "b", "prompt": "[[len=5]] x"},
                                                {"id": "a", "prompt": "[[len=6]] y"}])
    assert run_cli("run", str(job), "-q").returncode == 0
    proc = run_cli("export", str(tmp_path / "out" / "t"))
    assert proc.returncode == 0, proc.stderr
    table = read_table(Path(proc.stdout.strip()))
    assert [(r["id"], r["status"]) for r in table] == [("b", "done"), ("a", "done")]
    assert list(table[0]) == GENERATED


def test_output_table_is_written_in_the_format_its_name_says(tmp_path: Path,
                                                             fake: FakeServer) -> None:
    """output.table: t.tsv is a TSV table, whatever the data's format (it was
    JSONL for JSONL data); a name and an output.format that disagree are refused."""
    write_rows(tmp_path / "docs.jsonl", ROWS[:2])
    job = data_job(tmp_path, fake.base_url, {"path": "docs.jsonl", "id": "doc_id"},
                   output={"format": "parquet", "table": "t.tsv"})
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 2
    assert "output.table: 't.tsv' names a .tsv file, and output.format is parquet" in proc.stderr
    assert not (tmp_path / "out").exists()
    # a name no format of ours has: it was written as CSV under that name
    job = data_job(tmp_path, fake.base_url, {"path": "docs.jsonl", "id": "doc_id"},
                   output={"table": "t.xlsx"})
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 2
    assert "output.table: 't.xlsx' names a .xlsx file, and a table is written as csv, tsv, " \
        "jsonl, parquet; end its name in one of them" in proc.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "tables").mkdir()  # a folder: before, found only when the run had ended
    job = data_job(tmp_path, fake.base_url, {"path": "docs.jsonl", "id": "doc_id"},
                   output={"table": "tables"})
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 2
    assert "output.table: 'tables' is a folder; name the table's file (tables/table.jsonl" \
        in proc.stderr
    assert not (tmp_path / "out").exists() and not fake.ledger.entries
    job = data_job(tmp_path, fake.base_url, {"path": "docs.jsonl", "id": "doc_id"},
                   output={"table": "t.tsv"})
    said = f"table:    {tmp_path / 't.tsv'} (tsv)"  # validate and --dry-run say where
    assert said in run_cli("validate", str(job)).stdout
    assert said.replace(":", ":     ", 1) in run_cli("run", str(job), "--dry-run").stdout
    assert run_cli("run", str(job), "-q").returncode == 0
    table = read_table(tmp_path / "t.tsv")
    assert [(r["doc_id"], r["status"]) for r in table] == [("d1", "done"), ("d2", "done")]


def test_a_csv_saved_by_excel_gets_a_table_excel_opens(tmp_path: Path, fake: FakeServer) -> None:
    """Excel's "CSV UTF-8" begins with a byte-order mark, and Excel reads a CSV
    without one in the machine's legacy code page, so the table's Chinese
    opened garbled: a table from such a file (csv or tsv, and its export)
    begins with the mark too; one from a file without it does not."""
    write_rows(tmp_path / "docs.csv", ROWS[:2])
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "docs.csv").read_bytes())
    for name, bom in (("excel.csv", True), ("docs.csv", False)):
        job = data_job(tmp_path, fake.base_url, {"path": name, "id": "doc_id"},
                       name=name.split(".")[0])
        assert run_cli("run", str(job), "-q").returncode == 0
        run_dir = tmp_path / "out" / name.split(".")[0]
        raw = (run_dir / "table.csv").read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf") is bom
        table = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
        assert [r["doc_id"] for r in table] == ["d1", "d2"]
        tsv = tmp_path / f"{name}.tsv"
        assert run_cli("export", str(run_dir), "-o", str(tsv)).returncode == 0
        assert tsv.read_bytes().startswith(b"\xef\xbb\xbf") is bom


def test_no_table_is_written_over_the_jobs_own_files(tmp_path: Path, fake: FakeServer) -> None:
    """``output.table`` or ``export -o`` naming the data file (or a link to it,
    the job file, a prompts file) replaced it with the table: the next run read
    other rows and paid for them again; naming results.jsonl or failed.jsonl,
    the run's results and the table overwrote each other. All are refused and
    the file is kept."""
    data = write_rows(tmp_path / "docs.csv", ROWS[:2])
    before = data.read_bytes()
    (tmp_path / "docs-link.csv").symlink_to(data)
    for named in ("docs.csv", "./docs-link.csv"):
        job = data_job(tmp_path, fake.base_url, {"path": "docs.csv", "id": "doc_id"},
                       output={"table": named})
        proc = run_cli("run", str(job), "-q")
        assert proc.returncode == 2, proc.stderr
        assert f"output.table: '{named}' is {data}, which the job reads: the table would " \
            "replace it" in proc.stderr
        assert not (tmp_path / "out").exists() and not fake.ledger.entries
    job = data_job(tmp_path, fake.base_url, {"path": "docs.csv", "id": "doc_id"},
                   prompts_file="more.jsonl")
    (tmp_path / "more.jsonl").write_text('{"id": "p1", "prompt": "[[len=2]] hi"}\n')
    assert run_cli("run", str(job), "-q").returncode == 0
    run_dir = tmp_path / "out" / "translate"
    for target, what in ((data, f"{data}, which the job reads"), (job, "the job file"),
                         (tmp_path / "docs-link.csv", f"{data}, which the job reads"),
                         (tmp_path / "more.jsonl", f"{tmp_path / 'more.jsonl'}, which the job "
                                                   "reads")):
        kept = target.read_bytes()
        proc = run_cli("export", str(run_dir), "-o", str(target), "--format", "csv")
        assert proc.returncode == 2
        assert f"{target} is {what}: the table would replace it" in proc.stderr
        assert target.read_bytes() == kept
    assert data.read_bytes() == before
    assert run_cli("export", str(run_dir), "-o", str(tmp_path / "t.csv")).returncode == 0
    # nor over the results every run writes (a tool reading results.jsonl got the table)
    results = (run_dir / "results.jsonl").read_bytes()
    proc = run_cli("export", str(run_dir), "-o", str(run_dir / "results.jsonl"))
    assert proc.returncode == 2
    assert f"is {run_dir / 'results.jsonl'}, which batchgen writes the run's results to" \
        in proc.stderr
    assert (run_dir / "results.jsonl").read_bytes() == results
    job = data_job(tmp_path, fake.base_url, {"path": "docs.csv", "id": "doc_id"},
                   output={"table": "out/translate/failed.jsonl"})
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 2
    assert "output.table: 'out/translate/failed.jsonl' is " \
        f"{run_dir / 'failed.jsonl'}, which batchgen writes the run's results to: the " \
        "table and the results would overwrite each other" in proc.stderr


def test_parquet_data_gives_a_parquet_table_its_column_types_back(tmp_path: Path,
                                                                  fake: FakeServer) -> None:
    """The kept columns of Parquet data were all text or JSON text in a Parquet
    table (dates, decimals, lists, structs, int32): a data engineer's types come
    back, where the values fit them; bytes and durations stay text."""
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    when = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)
    columns = {
        "doc_id": pa.array(["d1", "d2", "d3"]),
        "lang": pa.array(["French", "German", "Spanish"]).dictionary_encode(),
        "text": pa.array(["a", "b", "c"]),
        "day": pa.array([datetime.date(2024, 1, 2), None, datetime.date(1999, 12, 31)]),
        "price": pa.array([decimal.Decimal("1.50"), decimal.Decimal("2"), None],
                          pa.decimal128(6, 2)),
        "tags": pa.array([["x", "y"], [], None]),
        "meta": pa.array([{"k": 1, "s": "a"}, {"k": 2, "s": None}, None]),
        "n": pa.array([1, 2, 3], pa.int32()),
        "at": pa.array([when] * 3, pa.timestamp("us", tz="UTC")),
        "raw": pa.array([b"ab", None, b"cd"]),
        "wait": pa.array([datetime.timedelta(days=1)] * 3),
    }
    pq.write_table(pa.table(columns), tmp_path / "docs.parquet")
    job = data_job(tmp_path, fake.base_url, {"path": "docs.parquet", "id": "doc_id"},
                   template={"prompt": "[[len=3]] {{ text }}"})
    assert run_cli("run", str(job), "-q").returncode == 0
    run_dir = tmp_path / "out" / "translate"
    table = pq.read_table(run_dir / "table.parquet")
    kept = pa.table(columns).schema
    for name in ("doc_id", "lang", "text", "day", "price", "tags", "meta", "n", "at"):
        assert table.schema.field(name).type == kept.field(name).type, name
    assert table.schema.field("raw").type == table.schema.field("wait").type == pa.string()
    got = table.select(["day", "price", "tags", "meta", "n", "at"]).to_pylist()
    assert got == pa.table(columns).select(["day", "price", "tags", "meta", "n", "at"]
                                           ).to_pylist()
    assert table.column("id").to_pylist() == ["d1", "d2", "d3"]
    # export writes the same; a CSV table of the same data has the values as text
    assert run_cli("export", str(run_dir), "-o", str(tmp_path / "again.parquet")
                   ).returncode == 0
    assert pq.read_table(tmp_path / "again.parquet").equals(table)
    assert run_cli("export", str(run_dir), "-o", str(tmp_path / "t.csv")).returncode == 0
    assert read_table(tmp_path / "t.csv")[0]["day"] == "2024-01-02"


def test_a_parquet_table_without_pyarrow_is_refused_before_anything_is_bought(
        tmp_path: Path, fake: FakeServer) -> None:
    """Without pyarrow, ``output.format: parquet`` passed validation, every answer
    was bought, and the run ended with exit 2 and no table, report or summary."""
    write_rows(tmp_path / "docs.csv", ROWS[:2])
    job = data_job(tmp_path, fake.base_url, {"path": "docs.csv", "id": "doc_id"},
                   output={"format": "parquet"})
    without = ("import sys; sys.modules['pyarrow'] = None; from batchgen.cli import entry; "
               f"sys.argv = ['batchgen', 'run', {str(job)!r}, '-q']; entry()")
    proc = subprocess.run([sys.executable, "-c", without], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "output.format: a Parquet table needs pyarrow, which is not installed: pip " \
        "install 'batchgen[parquet]'" in proc.stderr
    assert not (tmp_path / "out").exists() and not fake.ledger.entries


