"""Data in, table out: a job templated over rows of CSV, JSONL and Parquet,
run against the fake API; the table exact and in data order, also after a
kill -9; errors that name the row; the same from Python."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from batchgen.testing.fakeserver import Config, FakeServer, plan_for
from batchgen.testing.process import FakeProcess
from tests.helpers import KEY_ENV, ROOT, kill_until_done, read_results, run_cli

ROWS = [
    {"doc_id": "d1", "lang": "French", "text": "Hello {{ x }} world"},
    {"doc_id": "d2", "lang": "German", "text": "Good, {% bad morning } {"},
    {"doc_id": "d3", "lang": "Spanish", "text": "multi\nline, \"quoted\""},
    {"doc_id": "d4", "lang": "日本語", "text": "猫が好きです"},
]
TEMPLATE = {"system": "You translate into {{ lang }}.",
            "prompt": "Translate into {{ lang }}:\n\n{{ text }}", "tags": ["{{ lang }}"]}
GENERATED = ["id", "status", "content", "reasoning", "finish_reason", "prompt_tokens",
             "completion_tokens", "cost", "error"]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                        encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def data_job(tmp_path: Path, base_url: str, data: Any, **extra: Any) -> Path:
    job = {"name": "translate", "output_dir": str(tmp_path / "out"),
           "endpoint": {"base_url": base_url, "api_key_env": KEY_ENV},
           "defaults": {"model": "qwen-plus", "max_tokens": 200}, "data": data,
           "template": TEMPLATE, **extra}
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def expected_content(row: dict[str, Any]) -> str:
    body = {"model": "qwen-plus", "max_tokens": 200, "messages": [
        {"role": "system", "content": f"You translate into {row['lang']}."},
        {"role": "user", "content": f"Translate into {row['lang']}:\n\n{row['text']}"}]}
    return "".join(plan_for(body, 1, Config()).tokens)


def answer_to(prompt: str) -> str:
    """What the fake server answers a data job's one-message prompt."""
    body = {"model": "qwen-plus", "max_tokens": 200,
            "messages": [{"role": "user", "content": prompt}]}
    return "".join(plan_for(body, 1, Config()).tokens)


def read_table(path: Path) -> list[dict[str, Any]]:
    if path.suffix in (".csv", ".tsv"):
        text = path.read_text(encoding="utf-8")
        return list(csv.DictReader(io.StringIO(text, newline=""),
                                   delimiter="\t" if path.suffix == ".tsv" else ","))
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    import pyarrow.parquet as pq

    return list(pq.read_table(path).to_pylist())


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_data_job_runs_and_writes_its_table_in_data_order(tmp_path: Path, fake: FakeServer,
                                                            suffix: str) -> None:
    rows = list(reversed(ROWS))  # data order, not id order
    data = write_rows(tmp_path / f"docs{suffix}", rows)
    job = data_job(tmp_path, fake.base_url, {"path": data.name, "id": "doc_id"},
                   output={"columns": ["doc_id", "lang"], "prefix": "gen_"})
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "out" / "translate"
    table = read_table(run_dir / f"table{suffix}")
    assert [r["doc_id"] for r in table] == [r["doc_id"] for r in rows]
    assert list(table[0]) == ["doc_id", "lang", *("gen_" + c for c in GENERATED)]
    for got, row in zip(table, rows, strict=True):
        assert got["gen_id"] == row["doc_id"] and got["gen_status"] == "done"
        assert got["gen_content"] == expected_content(row)  # row values went in literally
        assert got["lang"] == row["lang"] and "text" not in got
        assert got["gen_finish_reason"] == "stop"
    assert int(table[0]["gen_prompt_tokens"]) > 0
    results = {r["id"]: r for r in read_results(run_dir)}
    assert results["d4"]["tags"] == ["日本語"]
    # a re-run sends nothing and rewrites the same table
    sent = len(fake.ledger.entries)
    before = (run_dir / f"table{suffix}").read_bytes()
    (run_dir / f"table{suffix}").unlink()
    assert run_cli("run", str(job), "-q").returncode == 0
    assert len(fake.ledger.entries) == sent
    assert (run_dir / f"table{suffix}").read_bytes() == before


def test_ids_from_content_are_stable_and_export_writes_any_format(tmp_path: Path,
                                                                   fake: FakeServer) -> None:
    rows = [*ROWS, ROWS[0]]  # a second identical row
    write_rows(tmp_path / "docs.jsonl", rows)
    job = data_job(tmp_path, fake.base_url, "docs.jsonl", output={"prefix": "gen_"})
    assert run_cli("run", str(job), "-q").returncode == 0, "run"
    run_dir = tmp_path / "out" / "translate"
    table = read_table(run_dir / "table.jsonl")
    ids = [r["gen_id"] for r in table]
    assert all(i.startswith("r-") for i in ids) and ids[4] == ids[0] + "-2"
    assert list(table[0])[:3] == ["doc_id", "lang", "text"]  # every input column by default
    # reordered and appended rows keep their ids
    write_rows(tmp_path / "docs.jsonl", [ROWS[2], ROWS[0], ROWS[3], ROWS[0], ROWS[1],
                                         {"doc_id": "d5", "lang": "Czech", "text": "Ahoj"}])
    assert run_cli("run", str(job), "-q").returncode == 0
    again = read_table(run_dir / "table.jsonl")
    assert {r["gen_id"] for r in again} == {*ids, again[-1]["gen_id"]}
    assert len(fake.ledger.entries) == 6  # only the new row was sent
    out = tmp_path / "t.tsv"
    proc = run_cli("export", str(run_dir), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    tsv = read_table(out)
    assert [r["gen_content"] for r in tsv] == [r["gen_content"] for r in again]
    proc = run_cli("export", str(run_dir), "--format", "parquet")
    assert proc.stdout.strip() == str(run_dir / "table.parquet")
    proc = run_cli("export", str(run_dir), "-o", str(tmp_path / "t.xlsx"))  # not CSV in it
    assert proc.returncode == 2 and "end the file's name in one of them, or choose with " \
        "--format" in proc.stderr
    assert not (tmp_path / "t.xlsx").exists()
    assert run_cli("export", str(run_dir), "-o", str(tmp_path / "t.xlsx"), "--format",
                   "csv").returncode == 0
    assert [r["gen_id"] for r in read_table(run_dir / "table.parquet")] == \
        [r["gen_id"] for r in again]


def test_the_table_keeps_the_datas_column_order_and_one_id(tmp_path: Path,
                                                           fake: FakeServer) -> None:
    """The input columns come in the data file's order (the store keeps rows with
    sorted keys; the table used that order), and a data.id column named id is
    one column (it was two, and Parquet could not be written from JSON ids)."""
    (tmp_path / "docs.jsonl").write_text(
        '{"text": "a", "lang": "French", "id": 7}\n{"text": "b", "lang": "German", "id": 8,'
        ' "zone": "eu"}\n', encoding="utf-8")
    job = data_job(tmp_path, fake.base_url, {"path": "docs.jsonl", "id": "id"})
    assert run_cli("run", str(job), "-q").returncode == 0
    run_dir = tmp_path / "out" / "translate"
    table = read_table(run_dir / "table.jsonl")
    assert list(table[1]) == ["text", "lang", "zone", *GENERATED]
    assert [(r["id"], r["zone"]) for r in table] == [("7", None), ("8", "eu")]
    for fmt in ("csv", "parquet"):
        proc = run_cli("export", str(run_dir), "--format", fmt)
        assert proc.returncode == 0, proc.stderr
        again = read_table(Path(proc.stdout.strip()))
        assert list(again[0]) == ["text", "lang", "zone", *GENERATED]
        assert [r["id"] for r in again] == ["7", "8"]
    # the order stays when the next run takes the validated job from its store
    (run_dir / "table.jsonl").unlink()
    assert run_cli("run", str(job), "-q").returncode == 0
    assert list(read_table(run_dir / "table.jsonl")[1]) == ["text", "lang", "zone", *GENERATED]


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


@pytest.mark.parametrize(("rows", "template", "where", "says"), [
    ([{"doc_id": "d1", "lang": "x", "text": "t"}], {"prompt": "{{ missing }}"},
     "docs.csv:2: template.prompt:", "'missing' is undefined"),
    ([{"doc_id": "d1", "lang": "x", "text": "t"}, {"doc_id": "d2", "lang": "x", "text": ""}],
     {"prompt": "{{ text }}"}, "docs.csv:3: template.prompt:", "empty"),
    ([{"doc_id": "d1", "lang": "many", "text": "t"}],
     {"prompt": "{{ text }}", "max_tokens": "{{ lang }}"}, "docs.csv:2: template.max_tokens:",
     "integer"),
    ([{"doc_id": "d 1", "lang": "x", "text": "t"}], {"prompt": "{{ text }}"},
     "docs.csv:2: data.id (doc_id):", "not a valid request id"),
    ([{"doc_id": "d1", "lang": "x", "text": "t"}, {"doc_id": "d1", "lang": "y", "text": "u"}],
     {"prompt": "{{ text }}"}, "docs.csv:3: id:", "duplicate id 'd1'"),
    ([{"doc_id": "d1", "lang": "x", "text": "t"}], {"prompt": "{{ text }"},
     "job.yaml", "template syntax error"),
    ([{"doc_id": "d1", "lang": "x", "content": "t"}], {"prompt": "{{ content }}"},
     "job.yaml", "output.prefix"),
])
def test_every_error_names_its_row_and_nothing_is_written(
        tmp_path: Path, fake: FakeServer, rows: list[dict[str, Any]], template: dict[str, Any],
        where: str, says: str) -> None:
    write_rows(tmp_path / "docs.csv", rows)
    job = data_job(tmp_path, fake.base_url, {"path": "docs.csv", "id": "doc_id"})
    spec = json.loads(job.read_text())
    spec["template"] = template
    job.write_text(json.dumps(spec))
    for command in ("validate", "run"):
        proc = run_cli(command, str(job))
        assert proc.returncode == 2, proc.stderr
        assert where in proc.stderr and says in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()
    assert fake.ledger.entries == []


def test_a_glob_that_matches_no_file_says_so(tmp_path: Path, fake: FakeServer) -> None:
    # was "the job has no prompts, and job.yaml has no rows": the job file named
    # where the pattern was meant
    job = data_job(tmp_path, fake.base_url, {"glob": "photos/**/*.png"})
    proc = run_cli("validate", str(job))
    assert proc.returncode == 2
    assert (f"the job has no prompts, and data.glob 'photos/**/*.png' matches no file in "
            f"{tmp_path.resolve()}") in proc.stderr, proc.stderr


@pytest.mark.parametrize(("text", "says"), [
    ("doc_id,lang,text\n", "the job has no prompts, and {path} has no rows"),
    ("", "data: docs.csv: empty file: no rows to run"),
    # Excel's "Unicode Text", some editors' default: was "not a YAML/JSONL job file"
    ("\ufeffdoc_id,lang,text\nd1,x,t\n", "data: docs.csv: UTF-16 text; save it as UTF-8"),
    ("doc_id,lang,text\x00\n", "data: docs.csv: binary file, not CSV, TSV, JSONL or JSON"),
    # the file ends inside a quoted value: the csv module made the rest of it one
    # value, and rows went missing without a word
    ('doc_id,lang,text\nd1,x,"unclosed\nd2,y,t\nd3,z,u\n',
     '{path}:2: a quoted value opens on this row and is never closed'),
    # Excel's CSV in many locales: every row was one column, and every row an
    # "undefined" error naming that column
    ("doc_id;lang;text\nd1;x;t\n", "{path}:1: header row: one column, 'doc_id;lang;text': "
     "the file is separated by semicolons, and a .csv file is read with commas"),
])
def test_a_data_file_without_rows_or_not_readable_says_so(tmp_path: Path, fake: FakeServer,
                                                          text: str, says: str) -> None:
    path = tmp_path / "docs.csv"
    path.write_text(text, encoding="utf-16" if text.startswith("\ufeff") else "utf-8")
    job = data_job(tmp_path, fake.base_url, "docs.csv")
    proc = run_cli("run", str(job))
    assert proc.returncode == 2
    assert says.format(path=path) in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_numeric_parameter_renders_to_a_number(tmp_path: Path, fake: FakeServer) -> None:
    write_rows(tmp_path / "docs.csv", [{"doc_id": "d1", "n": "7", "t": "0.5", "text": "x"}])
    job = data_job(tmp_path, fake.base_url, {"path": "docs.csv", "id": "doc_id"})
    spec = json.loads(job.read_text())
    spec["template"] = {"prompt": "{{ text }}", "max_tokens": "{{ n }}",
                        "temperature": "{{ t }}", "extra_body": {"top_k": "{{ n }}"}}
    job.write_text(json.dumps(spec))
    assert run_cli("run", str(job), "-q").returncode == 0
    (body,) = [e["body"] for e in fake.ledger.entries]
    assert body["max_tokens"] == 7 and body["temperature"] == 0.5 and body["top_k"] == 7


@pytest.mark.slow
def test_kill_9_mid_run_gives_the_table_of_an_uninterrupted_run(
        tmp_path: Path, fake_process: FakeProcess) -> None:
    rows = [{"doc_id": f"d{i:02d}", "lang": "French",
             "text": f"[[len={30 + i % 17}]] [[delay=0.02]] document {i}"} for i in range(20)]
    write_rows(tmp_path / "docs.csv", rows)
    job = data_job(tmp_path, fake_process.base_url, {"path": "docs.csv", "id": "doc_id"},
                   run={"concurrency": 4}, endpoint={"base_url": fake_process.base_url,
                                                     "api_key_env": KEY_ENV,
                                                     "continuation": "partial"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(out: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(job), "--out",
                                 str(tmp_path / out), "-q"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    assert start("clean").wait(120) == 0
    kills = kill_until_done(lambda: start("killed"), random.Random(5), 0.4, 1.5,
                            run_db=tmp_path / "killed" / "translate" / "run.db")
    assert kills >= 1
    keep = ["doc_id", "lang", "text", "id", "status", "content", "finish_reason", "error"]
    clean = read_table(tmp_path / "clean" / "translate" / "table.csv")
    killed = read_table(tmp_path / "killed" / "translate" / "table.csv")
    assert [{k: r[k] for k in keep} for r in killed] == [{k: r[k] for k in keep} for r in clean]
    assert [r["doc_id"] for r in clean] == [r["doc_id"] for r in rows]


def test_prompts_and_data_together_and_a_table_elsewhere(tmp_path: Path,
                                                         fake: FakeServer) -> None:
    write_rows(tmp_path / "docs.csv", ROWS[:2])
    job = data_job(tmp_path, fake.base_url, {"path": "docs.csv", "id": "doc_id"},
                   prompts=[{"id": "intro", "prompt": "[[len=5]] hello"}],
                   output={"format": "parquet", "table": "tables/out.parquet",
                           "columns": ["lang"]})
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in read_results(tmp_path / "out" / "translate")] == [
        "intro", "d1", "d2"]
    table = read_table(tmp_path / "tables" / "out.parquet")
    assert [(r["lang"], r["id"]) for r in table] == [("French", "d1"), ("German", "d2")]
    assert not (tmp_path / "out" / "translate" / "table.csv").exists()


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


def test_an_input_column_named_json_needs_a_prefix_when_answers_are_json(
        tmp_path: Path, fake: FakeServer) -> None:
    """With a schema the table writes a ``json`` column: an input column of that
    name was written twice under one name; it is refused where the data is
    named (the job has no ``output:``), and a prefix sets the two apart."""
    write_rows(tmp_path / "docs.csv", [{"doc_id": "d1", "json": "{}"}])
    template = {"prompt": "[[json=valid]] {{ doc_id }}", "schema": {"type": "object"}}
    job = data_job(tmp_path, fake.base_url, {"path": "docs.csv", "id": "doc_id"},
                   template=template)
    proc = run_cli("run", str(job), "-q")
    assert proc.returncode == 2
    line = job.read_text().splitlines().index(' "data": {') + 1
    assert f"job.yaml:{line}: output: the table's column 'json' (what batchgen writes)" \
        in proc.stderr
    assert not (tmp_path / "out").exists() and not fake.ledger.entries
    job = data_job(tmp_path, fake.base_url, {"path": "docs.csv", "id": "doc_id"},
                   template=template, output={"prefix": "gen_"})
    assert run_cli("run", str(job), "-q").returncode == 0
    (row,) = read_table(tmp_path / "out" / "translate" / "table.csv")
    assert row["json"] == "{}" and json.loads(row["gen_json"])["name"]


def test_a_folder_of_documents_becomes_prompts_through_read_text(tmp_path: Path,
                                                                  fake: FakeServer) -> None:
    """``{{ read_text(path) }}`` puts a file's text in a prompt (a folder's rows
    had only its name); a changed file is a changed request, and the file must
    be UTF-8 and inside the job's folder or a media root, as file:// media."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("\ufeffBonjour {{ x }}\n", encoding="utf-8")  # BOM dropped
    (docs / "b.md").write_text("Guten Tag\n", encoding="utf-8")
    job = data_job(tmp_path, fake.base_url, {"glob": "docs/*.md"},
                   template={"prompt": "Translate:\n{{ read_text(path) }}"},
                   output={"columns": ["path"]})
    assert run_cli("run", str(job), "-q").returncode == 0
    run_dir = tmp_path / "out" / "translate"
    table = read_table(run_dir / "table.csv")
    assert [r["path"] for r in table] == ["docs/a.md", "docs/b.md"]
    assert [r["content"] for r in table] == [answer_to("Translate:\nBonjour {{ x }}\n"),
                                             answer_to("Translate:\nGuten Tag\n")]
    (docs / "b.md").write_text("Guten Abend\n", encoding="utf-8")
    proc = run_cli("run", str(job))
    assert proc.returncode == 0 and "1 request to run (1 already done, skipped)" in proc.stderr
    assert read_table(run_dir / "table.csv")[1]["content"] == answer_to("Translate:\nGuten Abend\n")
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    outside.mkdir()
    (outside / "c.md").write_text("Hola\n", encoding="utf-8")
    (docs / "c.md").symlink_to(outside / "c.md")
    proc = run_cli("run", str(job))
    assert proc.returncode == 2
    assert "template.prompt: read_text('docs/c.md'): docs/c.md resolves to" in proc.stderr
    assert "outside the job file's folder" in proc.stderr
    proc = run_cli("run", str(job), "-q", "--media-root", str(outside))
    assert proc.returncode == 0, proc.stderr
    assert read_table(run_dir / "table.csv")[2]["content"] == answer_to("Translate:\nHola\n")
    (docs / "d.md").write_bytes("Grüß".encode("latin-1"))
    proc = run_cli("validate", str(job), "--media-root", str(outside))
    assert proc.returncode == 2
    assert "read_text('docs/d.md'):" in proc.stderr and "is not UTF-8 text" in proc.stderr
    (docs / "d.md").unlink()
    write_rows(tmp_path / "files.csv", [{"file": "docs/a.md"}, {"file": "docs/gone.md"}])
    job = data_job(tmp_path, fake.base_url, "files.csv",
                   template={"prompt": "{{ read_text(file) }}"})
    proc = run_cli("validate", str(job))
    assert proc.returncode == 2
    assert "files.csv:3: template.prompt: read_text('docs/gone.md'): no such file" in proc.stderr


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
