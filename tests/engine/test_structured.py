"""Structured output: a schema for the answer — the four modes, invalid answers
asked again and priced apart, early stops, outputs, failures said everywhere."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batchgen.engine.structured import AnswerCheck, NotJson, watched
from batchgen.jobs.structured import apply, auto_mode, instruction, strict_subset, unfenced
from batchgen.testing.fakeserver import FakeServer
from tests.helpers import ROOT, read_results, run_cli, write_job

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "tags"], "additionalProperties": False}
PRICES = {"qwen-plus": {"currency": "CNY", "input": 0.8, "output": 2.0}}


def job(tmp_path: Path, fake: FakeServer, prompts: list[dict[str, Any]], **extra: Any) -> Path:
    (tmp_path / "person.json").write_text(json.dumps(PERSON), encoding="utf-8")
    defaults = {"model": "qwen-plus", "schema": "person.json", **extra.pop("defaults", {})}
    return write_job(tmp_path / "job.yaml", fake, prompts, defaults=defaults, pricing=PRICES,
                     **extra)


def sent(fake: FakeServer, key: str) -> list[dict[str, Any]]:
    return [e["body"] for e in fake.ledger.entries
            if key in json.dumps(e["body"]["messages"])]


def test_the_four_modes_send_what_they_say(tmp_path: Path, fake: FakeServer) -> None:
    prompts = [{"id": "js", "prompt": "[[json=valid]] a", "schema_mode": "json_schema"},
               {"id": "jo", "prompt": "[[json=valid]] b", "schema_mode": "json_object"},
               {"id": "pr", "prompt": "[[json=valid]] d", "schema_mode": "prompt",
                "system": "Be exact."},
               {"id": "au", "prompt": "[[json=valid]] e"}]
    proc = run_cli("run", str(job(tmp_path, fake, prompts)), "-q")
    assert proc.returncode == 0, proc.stderr
    (js,) = sent(fake, "] a")
    assert js["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": PERSON, "strict": True}}
    (jo,) = sent(fake, "] b")
    assert jo["response_format"] == {"type": "json_object"}
    # the fake's own [[json=...]] names JSON already: nothing is added
    assert [m["role"] for m in jo["messages"]] == ["user"]
    unnamed = apply({"model": "m", "messages": [{"role": "user", "content": "b"}]},
                    PERSON, "json_object")
    assert unnamed["messages"][0] == {"role": "system", "content": instruction(PERSON)}
    (pr,) = sent(fake, "] d")
    assert "response_format" not in pr
    assert pr["messages"][0]["content"] == "Be exact.\n\n" + instruction(PERSON)
    (au,) = sent(fake, "] e")  # auto on an endpoint batchgen does not know: prompt
    assert "response_format" not in au and "JSON Schema" in au["messages"][0]["content"]
    results = {r["id"]: r for r in read_results(tmp_path / "out" / "t")}
    assert all(isinstance(r["json"]["age"], int) for r in results.values())
    saved = json.loads((tmp_path / "out" / "t" / "texts" / "js.json").read_text())
    assert saved == results["js"]["json"]
    assert (tmp_path / "out" / "t" / "texts" / "js.md").read_text() == results["js"]["content"]


def jobs_schema(name: str) -> dict[str, Any]:
    return dict(json.loads((ROOT / "jobs" / name).read_text(encoding="utf-8")))


def test_auto_is_the_best_the_endpoint_takes() -> None:
    body = {"model": "qwen-plus", "messages": []}
    assert auto_mode("https://dashscope.aliyuncs.com/compatible-mode/v1", False, body) \
        == "json_object"
    assert auto_mode("https://api.openai.com/v1", False, body) == "json_schema"
    assert auto_mode("http://127.0.0.1:8080/v1", True, body) == "json_schema"
    thinking = {**body, "extra_body": {"enable_thinking": True}}
    assert auto_mode("https://dashscope.aliyuncs.com/compatible-mode/v1", False, thinking) \
        == "prompt"  # Model Studio takes no response_format while thinking
    assert auto_mode("https://example.com/v1", False, body) == "prompt"
    openai = "https://api.openai.com/v1"
    assert auto_mode(openai, False, body, PERSON) == "json_schema"
    assert strict_subset(PERSON) and strict_subset(jobs_schema("people.schema.json"))
    # what OpenAI's strict mode refuses with a 400 on every request: json_object
    optional = {**PERSON, "required": ["name"]}
    open_ended = {k: v for k, v in PERSON.items() if k != "additionalProperties"}
    nested = {**PERSON, "properties": {**PERSON["properties"], "home": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    nested["required"] = [*PERSON["required"], "home"]
    unique = {**PERSON, "properties": {**PERSON["properties"], "tags": {
        "type": "array", "items": {"type": "string"}, "uniqueItems": True}}}
    for schema in (optional, open_ended, nested, unique, {"type": "array"}):
        assert not strict_subset(schema), schema
        assert auto_mode(openai, False, body, schema) == "json_object"
    fixed = {**nested, "properties": {**nested["properties"], "home": {
        "type": "object", "properties": {"city": {"type": ["string", "null"]}},
        "required": ["city"], "additionalProperties": False}}}
    defs = {"type": "object", "properties": {"p": {"$ref": "#/$defs/p"}}, "required": ["p"],
            "additionalProperties": False, "$defs": {"p": {"anyOf": [{"type": "null"}, PERSON]}}}
    assert strict_subset(fixed) and strict_subset(defs)
    # Model Studio: json_schema for the models its structured-output page names
    # (with thinking off), json_object for the others and for a schema strict
    # mode would refuse
    studio = "https://dashscope-intl.aliyuncs.com/compatible-mode/v1"
    for model, mode in [("qwen-plus", "json_schema"), ("qwen-plus-2025-07-28", "json_schema"),
                        ("qwen-plus-2025-12-01", "json_schema"),
                        ("qwen-plus-2025-04-28", "json_object"),
                        ("qwen3-max", "json_schema"), ("qwen3-max-2025-09-23", "json_schema"),
                        ("qwen3-max-preview", "json_object"), ("qwen-flash", "json_schema"),
                        ("deepseek-v3.2", "json_schema"), ("qwen-max", "json_object"),
                        ("qwen-turbo", "json_object")]:
        assert auto_mode(studio, False, {**body, "model": model}, PERSON) == mode, model
    assert auto_mode(studio, False, body, optional) == "json_object"
    assert auto_mode(studio, False, {**thinking, "model": "qwen-plus"}, PERSON) == "prompt"
    # a Qwen3 open-source model thinks unless told not to: a response_format
    # would be refused (it got json_object); QwQ and DeepSeek-R1 always think
    for model in ("qwen3-235b-a22b", "qwen3-32b", "qwen3.5-plus", "qwq-plus", "deepseek-r1"):
        assert auto_mode(studio, False, {**body, "model": model}, PERSON) == "prompt", model
    off = {**body, "model": "qwen3-32b", "extra_body": {"enable_thinking": False}}
    assert auto_mode(studio, False, off, PERSON) == "json_object"
    # OpenAI's reasoning models take a response_format
    assert auto_mode(openai, False, {**body, "model": "o3"}, PERSON) == "json_schema"
    # a property may be named like a keyword
    assert strict_subset({"type": "object", "properties": {"not": {"type": "string"}},
                          "required": ["not"], "additionalProperties": False})
    assert apply({"model": "m", "messages": [{"role": "user", "content": "x"}]},
                 PERSON, "prompt")["messages"][0]["role"] == "system"


def test_invalid_answers_are_asked_again_priced_apart_and_then_fail(tmp_path: Path,
                                                                    fake: FakeServer) -> None:
    prompts = [{"id": "fix", "prompt": "[[json=prose,violate,fenced]] [[delay=0.002]] a"},
               {"id": "bad", "prompt": "[[json=invalid,stall,violate]] [[delay=0.002]] b"},
               {"id": "fine", "prompt": "[[json=valid]] c"}]
    path = job(tmp_path, fake, prompts)
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 1
    run_dir = tmp_path / "out" / "t"
    results = {r["id"]: r for r in read_results(run_dir)}
    assert set(results) == {"fix", "fine"} and results["fix"]["attempts"] == 3
    assert results["fix"]["content"].startswith("```json") and results["fix"]["json"]["tags"]
    # early stops: prose and whitespace are left before the answer's end
    entries = {(e["key"], e["attempt"]): e for e in fake.ledger.entries}
    stall = [e for e in entries.values() if "stall" in json.dumps(e["body"]) and
             e["attempt"] == 2]
    assert stall and stall[0]["completion_tokens"] < 300
    status = run_cli("status", str(run_dir)).stdout
    assert "bad: schema: the answer does not fit the schema: /age:" in status
    report = json.loads((run_dir / "report.json").read_text())
    assert [(f["id"], f["error_class"]) for f in report["failed"]] == [("bad", "schema")]
    [line] = [a for a in report["apart"] if a["kind"] == "invalid answers"]
    billed = [e for e in fake.ledger.entries if "fine" not in json.dumps(e["body"])
              and not (e["attempt"] == 3 and "prose" in json.dumps(e["body"]))]
    assert line["attempts"] == 5 == len(billed)
    assert line["completion_tokens"] >= sum(e["completion_tokens"] for e in billed
                                            if e["complete"])
    assert "- invalid answers: qwen-plus: 5 attempts" in (run_dir / "report.md").read_text()
    assert 'data-apart="invalid answers"' in (run_dir / "report.html").read_text()
    # failed.jsonl runs again as a job, with its schema
    failed = (run_dir / "failed.jsonl").read_text().splitlines()
    entry = json.loads(failed[0])
    assert entry["schema"] == PERSON and entry["schema_mode"] == "prompt"
    assert "JSON Schema" not in json.dumps(entry["messages"])
    again = run_cli("validate", str(run_dir / "failed.jsonl"), "--model", "qwen-plus")
    assert again.returncode == 0, again.stderr


def test_max_invalid_and_a_broken_schema(tmp_path: Path, fake: FakeServer) -> None:
    path = job(tmp_path, fake, [{"id": "a", "prompt": "[[json=violate,valid]] a"}],
               run={"max_invalid": 0})
    assert run_cli("run", str(path), "-q").returncode == 1
    assert len(fake.ledger.entries) == 1
    broken = write_job(tmp_path / "broken.yaml", fake, [
        {"id": "a", "prompt": "x", "schema": {"type": "objekt"}}], name="broken")
    proc = run_cli("validate", str(broken))
    assert proc.returncode == 2
    assert "prompts[0].schema" in proc.stderr and "not a valid JSON Schema" in proc.stderr
    both = write_job(tmp_path / "both.yaml", fake, [
        {"id": "a", "prompt": "x", "schema": PERSON, "response_format": {"type": "json_object"}}],
        name="both")
    assert "not both" in run_cli("validate", str(both)).stderr


def test_dry_run_says_the_mode(tmp_path: Path, fake: FakeServer) -> None:
    path = job(tmp_path, fake, [{"id": "a", "prompt": "x"}])
    out = run_cli("run", str(path), "--dry-run").stdout
    assert "schema:        qwen-plus: prompt" in out


def test_lost_answer_files_come_back_on_the_next_run(tmp_path: Path, fake: FakeServer) -> None:
    """A finished job run again sends nothing and skips the export, unless a
    texts/ file was deleted since: then it is written again from the store."""
    path = job(tmp_path, fake, [{"id": "a", "prompt": "[[json=valid]] a"},
                                {"id": "b", "prompt": "[[json=valid]] b"}])
    assert run_cli("run", str(path), "-q").returncode == 0
    texts = tmp_path / "out" / "t" / "texts"
    kept = {p.name: p.read_bytes() for p in texts.iterdir()}
    assert sorted(kept) == ["a.json", "a.md", "b.json", "b.md"]
    untouched = (texts / "b.json").stat().st_mtime_ns
    (texts / "a.json").unlink()
    (texts / "b.md").unlink()
    sent_before = len(fake.ledger.entries)
    assert run_cli("run", str(path), "-q").returncode == 0
    assert len(fake.ledger.entries) == sent_before  # nothing asked again
    assert {p.name: p.read_bytes() for p in texts.iterdir()} == kept
    assert (texts / "b.json").stat().st_mtime_ns == untouched


def test_a_data_table_gains_json_and_flattened_columns(tmp_path: Path, fake: FakeServer) -> None:
    (tmp_path / "rows.csv").write_text("k,w\nk1,one\nk2,two\n", encoding="utf-8")
    path = job(tmp_path, fake, [], data={"path": "rows.csv", "id": "k"},
               template={"prompt": "[[json=valid]] about {{ w }}"},
               output={"flatten": True, "columns": ["w"]})
    spec = json.loads(path.read_text())
    del spec["prompts"]
    path.write_text(json.dumps(spec))
    assert run_cli("run", str(path), "-q").returncode == 0
    import csv

    with (tmp_path / "out" / "t" / "table.csv").open(encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0])[-4:] == ["json", "name", "age", "tags"]
    assert json.loads(table[0]["json"])["age"] == int(table[0]["age"])


def test_flattened_columns_in_parquet_have_their_property_types(tmp_path: Path,
                                                                fake: FakeServer) -> None:
    """A property of one scalar type (null allowed beside it) is a column of
    that type in Parquet, not JSON text: age int64 here; an array, an object or
    a union stays JSON text. A boolean input column is Parquet's bool (writing
    one raised AttributeError: pyarrow has no ``bool``)."""
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "rows.jsonl").write_text('{"k": "k1", "w": "one", "on": true}\n'
                                         '{"k": "k2", "w": "two", "on": false}\n',
                                         encoding="utf-8")
    path = job(tmp_path, fake, [], data={"path": "rows.jsonl", "id": "k"},
               template={"prompt": "[[json=valid]] about {{ w }}"},
               output={"flatten": True, "columns": ["w", "on"], "format": "parquet"})
    spec = json.loads(path.read_text())
    del spec["prompts"]
    path.write_text(json.dumps(spec))
    proc = run_cli("run", str(path), "-q")
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(tmp_path / "out" / "t" / "table.parquet")
    types = {f.name: str(f.type) for f in table.schema}
    assert [types[c] for c in ("on", "name", "age", "tags")] == \
        ["bool", "string", "int64", "string"]
    rows = table.to_pylist()
    assert [r["on"] for r in rows] == [True, False]
    for row in rows:
        answer = json.loads(row["json"])
        assert (row["name"], row["age"]) == (answer["name"], answer["age"])
        assert json.loads(row["tags"]) == answer["tags"]


@pytest.mark.parametrize(("prop", "kind"), [
    ({"type": "integer"}, "int64"), ({"type": ["integer", "null"]}, "int64"),
    ({"type": "number"}, "float64"), ({"type": "boolean"}, "bool"),
    ({"type": "string", "enum": ["a"]}, "string"), ({"type": ["string", "integer"]}, "json"),
    ({"type": "object"}, "json"), ({"enum": [1, 2]}, "json"), (True, "json")])
def test_a_flattened_property_s_parquet_type(prop: Any, kind: str) -> None:
    from batchgen.outputs.table import _property_type

    assert _property_type(prop) == kind


@pytest.mark.parametrize(("value", "kind", "cell"), [
    (3, "int64", 3), (3.0, "int64", 3), (2**63, "int64", None), (3.5, "int64", None),
    (True, "int64", None), (2, "float64", 2.0), (10**400, "float64", None),
    (False, "bool", False), (0, "bool", None), ("x", "string", "x"), ([1], "string", "[1]"),
    (None, "int64", None)])
def test_a_value_that_cannot_be_its_column_s_type_is_left_empty(value: Any, kind: str,
                                                                  cell: Any) -> None:
    """Answers fit their schema, so this is for the one that cannot (an integer
    past 64 bits): the cell is empty and the json column keeps the value."""
    from batchgen.outputs.table import _typed

    assert _typed(value, kind) == cell and type(_typed(value, kind)) is type(cell)


def test_flattened_columns_that_would_share_a_name_are_refused(tmp_path: Path,
                                                              fake: FakeServer) -> None:
    """A property of the schema becomes a column of the table: one named like an
    input column needs output.prefix; one named like a column batchgen writes
    (status) cannot be set apart by it. Before, both were written twice under
    one name, and the property's value took the place of the row's status."""
    (tmp_path / "rows.csv").write_text("name,w\nAda,one\n", encoding="utf-8")
    (tmp_path / "status.json").write_text(json.dumps(
        {"type": "object", "properties": {"status": {"type": "string"}}}), encoding="utf-8")

    def flattened(schema: str, output: dict[str, Any]) -> Path:
        path = job(tmp_path, fake, [], data="rows.csv", defaults={"schema": schema},
                   template={"prompt": "[[json=valid]] about {{ w }}"},
                   output={"flatten": True, **output})
        spec = json.loads(path.read_text())
        del spec["prompts"]
        path.write_text(json.dumps(spec))
        return path

    proc = run_cli("run", str(flattened("person.json", {})), "-q")
    assert proc.returncode == 2
    assert "output.flatten: the schema's property 'name' would be the table's column " \
        "'name', the name of an input column; set `output.prefix:`" in proc.stderr
    for output in ({}, {"prefix": "gen_"}):
        proc = run_cli("run", str(flattened("status.json", output)), "-q")
        assert proc.returncode == 2
        assert "property 'status' would be the table's column " \
            f"'{output.get('prefix', '')}status', which batchgen writes already" in proc.stderr
    assert not (tmp_path / "out").exists() and not fake.ledger.entries
    proc = run_cli("run", str(flattened("person.json", {"prefix": "gen_"})), "-q")
    assert proc.returncode == 0, proc.stderr
    header = (tmp_path / "out" / "t" / "table.csv").read_text(encoding="utf-8").split("\n")[0]
    assert header.split(",")[:4] == ["name", "w", "gen_id", "gen_status"]
    assert header.split(",")[-3:] == ["gen_name", "gen_age", "gen_tags"]


def test_a_kill_mid_object_continues_into_valid_json(tmp_path: Path) -> None:
    """kill -9 while a JSON answer streams, cut mid-object: the re-run goes on
    from the text (partial mode) and the seam leaves valid JSON."""
    import os
    import random
    import subprocess
    import sys

    from batchgen.testing.process import FakeProcess
    from tests.helpers import KEY_ENV, ROOT, kill_until_done

    with FakeProcess("--api-key", os.environ[KEY_ENV]) as server:
        prompts = [{"id": f"p{i}", "prompt": f"[[json=valid]] [[len=60]] [[delay=0.03]] {i}"}
                   for i in range(4)]
        (tmp_path / "person.json").write_text(json.dumps(PERSON), encoding="utf-8")
        path = write_job(tmp_path / "job.yaml", None, prompts,
                         defaults={"model": "qwen-plus", "schema": "person.json"},
                         endpoint={"base_url": server.base_url, "api_key_env": KEY_ENV,
                                   "continuation": "partial"}, run={"concurrency": 2})
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        kills = kill_until_done(
            lambda: subprocess.Popen([sys.executable, "-m", "batchgen", "run", str(path), "-q"],
                                     env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL),
            random.Random(11), 0.5, 1.2, run_db=tmp_path / "out" / "t" / "run.db")
        assert kills >= 1
    with sqlite3.connect(tmp_path / "out" / "t" / "run.db") as db:
        continued = db.execute("SELECT COUNT(*) FROM attempts WHERE mode = 'continue' "
                               "AND status = 'done'").fetchone()[0]
    assert continued >= 1
    for r in read_results(tmp_path / "out" / "t"):
        assert r["json"] == json.loads(r["content"]) and isinstance(r["json"]["age"], int)


@pytest.mark.parametrize(("text", "ok"), [
    ('{"a": 1}', True), ("  \n[1]", True), ("```json\n{}", True), ('"s"', True),
    ("Sure, here", False), ("``x", False), (" " * 300, False),
    # a reasoning model served without a reasoning parser thinks in its content
    # first: every such answer was left at its "<" and the request failed
    ("<think>\nThe user wants " + "x " * 400 + "</think>\n\n{\"a\": 1}", True),
    ("<think>x</think>Sure, here", False), ("<think>x</think>" + " " * 300, False),
    ("<thinking", False), ("<b>", False)])
def test_the_start_of_an_answer(text: str, ok: bool) -> None:
    watch = watched(lambda _c, _r: None)
    try:
        for i in range(0, len(text), 2):
            watch(text[i:i + 2], "")
    except NotJson:
        assert not ok
    else:
        assert ok


def test_the_check_at_the_finish() -> None:
    check = AnswerCheck(PERSON)
    assert check.problem('```json\n{"name": "a", "age": 3, "tags": []}\n```') is None
    assert unfenced("```\n[1]\n```") == "[1]"
    assert unfenced("<think>\n{no}\n</think>\n\n```json\n[1]\n```") == "[1]"
    assert check.problem('<think>hm</think>{"name": "a", "age": 3, "tags": []}') is None
    problem = check.problem('{"name": 1, "age": "x", "tags": [], "extra": 0}')
    assert problem is not None and problem.startswith("does not fit the schema: ")
    assert '/age: "x" is not of type "integer"' in problem and "/name" in problem
    assert (check.problem('{"name": "a"') or "").startswith("is not JSON")
