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



def test_a_data_file_or_schema_linked_from_elsewhere_is_read_only_from_a_media_root(
        tmp_path: Path, fake: FakeServer) -> None:
    """`data:` and a schema file were checked by their text alone (no absolute
    path, no '..'): a link in the job's folder to a file elsewhere was read and
    its rows sent, so a shared job folder could send any table of yours. Now,
    as file:// media and read_text(): inside the job's folder or a media root,
    after links, or refused before anything is sent or written."""
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    outside.mkdir()
    write_rows(outside / "rows.csv", [{"doc_id": "s1", "lang": "French", "text": "secret"}])
    (tmp_path / "rows.csv").symlink_to(outside / "rows.csv")
    job = data_job(tmp_path, fake.base_url, "rows.csv")
    proc = run_cli("run", str(job))
    assert proc.returncode == 2, proc.stderr
    assert f": data: rows.csv resolves to {outside / 'rows.csv'}, outside the job file's " \
        "folder and the media roots" in proc.stderr
    assert fake.ledger.requests == 0 and not (tmp_path / "out").exists()
    assert run_cli("run", str(job), "-q", "--media-root", str(outside)).returncode == 0
    assert fake.ledger.requests == 1
    (outside / "answer.json").write_text('{"type": "object"}', encoding="utf-8")
    (tmp_path / "answer.json").symlink_to(outside / "answer.json")
    job = data_job(tmp_path, fake.base_url, "rows.csv",
                   defaults={"model": "qwen-plus", "schema": "answer.json"})
    proc = run_cli("validate", str(job), "--media-root", str(outside))
    assert proc.returncode == 2
    assert "defaults.schema: answer.json resolves to" in proc.stderr

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
