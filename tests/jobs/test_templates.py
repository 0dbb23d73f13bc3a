"""Templates over rows: Jinja2, sandboxed and strict; row values are data; the
plain path renders exactly what Jinja2 renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from jinja2.sandbox import SandboxedEnvironment

from batchgen.errors import JobFileError
from batchgen.jobs.data import DataFile, rows
from batchgen.jobs.templates import RenderError, Template


def written(value: Any) -> Any:
    """What a template writes for a value: null as nothing, nested values as JSON."""
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False) if type(value) in (dict, list) else value


JINJA = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             finalize=written)


def template(spec: dict[str, Any]) -> Template:
    t = Template(spec, "job.yaml", lambda _p: 3)
    assert t.problems == []
    return t


def test_row_values_are_data_never_templates() -> None:
    t = template({"prompt": "A: {{ a }} | B: {{ b.c }}", "tags": ["{{ a }}"]})
    row = {"a": "{{ secret }} {% if x %} { unbalanced }}", "b": {"c": "{# no comment #}"}}
    out = t.render(row)
    assert out["prompt"] == "A: {{ secret }} {% if x %} { unbalanced }} | B: {# no comment #}"
    assert out["tags"] == ["{{ secret }} {% if x %} { unbalanced }}"]


def test_a_null_writes_nothing_and_nested_values_write_json() -> None:
    """Not "None", nor Python's repr of a dict ({'k': ...}), in a prompt."""
    t = template({"prompt": "[{{ a }}] {{ b }} {{ b.k }}",
                  "system": "{% for x in c %}<{{ x }}>{% endfor %}"})
    row = {"a": None, "b": {"k": ["é", 1, None]}, "c": [None, {"d": True}]}
    assert t.render(row) == {"prompt": '[] {"k": ["é", 1, null]} ["é", 1, null]',
                             "system": '<><{"d": true}>'}


def test_a_column_whose_name_is_no_name_is_reached_through_row() -> None:
    """CSV headers such as "First Name" or "product-id" cannot be written as
    {{ names }}; {{ row['First Name'] }} reaches them (before: 'row' is
    undefined). A column named row wins over the whole row."""
    t = template({"prompt": "{{ row['First Name'] }} / {{ row['product-id'] }}",
                  "system": "{{ row }}"})
    row = {"First Name": "Ada", "product-id": "p1"}
    assert t.render(row) == {"prompt": "Ada / p1",
                             "system": '{"First Name": "Ada", "product-id": "p1"}'}
    assert template({"prompt": "{{ row }}!"}).render({"row": "own"}) == {"prompt": "own!"}
    with pytest.raises(RenderError) as caught:
        t.render({"First Name": "Ada"})
    assert "(its columns: First Name)" in caught.value.message


def test_strict_names_and_the_sandbox() -> None:
    with pytest.raises(RenderError) as caught:
        template({"prompt": "{{ missing }}"}).render({"present": 1})
    assert caught.value.path == ("template", "prompt")
    assert "'missing' is undefined" in caught.value.message and "present" in caught.value.message
    with pytest.raises(RenderError) as caught:
        template({"system": "x", "prompt": "{{ a.__class__.__mro__ }}"}).render({"a": "s"})
    assert "unsafe" in caught.value.message or "undefined" in caught.value.message


def test_parameters_of_one_expression_become_numbers() -> None:
    t = template({"prompt": "{{ n }}", "max_tokens": "{{ n }}", "temperature": " {{ t }} ",
                  "extra_body": {"top_k": "{{ n }}", "note": "k={{ n }}"},
                  "stop": ["{{ s }}"]})
    out = t.render({"n": "12", "t": "0.7", "s": "END"})
    assert out["prompt"] == "12"  # the prompt stays text
    assert out["max_tokens"] == 12 and out["temperature"] == 0.7
    assert out["extra_body"] == {"top_k": 12, "note": "k=12"}
    assert out["stop"] == ["END"]


def test_a_syntax_error_is_a_problem_at_its_key() -> None:
    t = Template({"prompt": "{{ a }"}, "job.yaml", lambda p: 7 if p == ("template",
                                                                        "prompt") else None)
    (problem,) = t.problems
    assert (problem.line, problem.key) == (7, "template.prompt")
    assert "syntax" in problem.message


TEXT = st.text(alphabet=st.sampled_from(list("ab {}%#\n\t_x1")), max_size=30)


@given(st.lists(st.one_of(TEXT, st.sampled_from(["{{ a }}", "{{b}}", "{{  a_1 }}"])),
                max_size=6),
       st.one_of(st.text(max_size=10), st.integers(), st.none(), st.floats(allow_nan=False)))
@example(["{#"], None)  # a comment's start: Jinja2's, not text (hypothesis found it)
def test_the_plain_path_renders_what_jinja_renders(parts: list[str], value: Any) -> None:
    source = "".join(parts)
    names = {"a": value, "b": "B", "a_1": [1, "x"]}
    try:
        expected = JINJA.from_string(source).render(names)
    except jinja2.TemplateError:
        return  # not a template Jinja2 takes: no plain path to compare
    t = Template({"prompt": source}, "job.yaml", lambda _p: 1)
    assert t.render(names)["prompt"] == expected


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def read(path: Path, **kw: Any) -> tuple[list[tuple[dict[str, Any], int]], list[str]]:
    problems: list[str] = []
    got = list(rows(DataFile(path=path, **kw), lambda p: problems.append(str(p))))
    return got, problems


def test_csv_rows_with_a_bom_quoted_newlines_and_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", '\ufeffa,b\n1,"two\nlines"\n\n3,x\n4\n5,y\n')
    got, problems = read(path)
    assert got == [({"a": "1", "b": "two\nlines"}, 2), ({"a": "3", "b": "x"}, 5),
                   ({"a": "5", "b": "y"}, 7)]
    assert problems == [f"{path}:6: row has 1 value, the header has 2 columns; quote "
                        "values that hold commas"]
    got, _ = read(path, limit=1)
    assert len(got) == 1


def test_tsv_jsonl_and_json_rows(tmp_path: Path) -> None:
    got, _ = read(write(tmp_path / "d.tsv", "a\tb\nx, y\tz\n"))
    assert got == [({"a": "x, y", "b": "z"}, 2)]
    got, problems = read(write(tmp_path / "d.jsonl", '{"a": {"b": 1}}\n\n[1]\n{"a": 2}\n'))
    assert got == [({"a": {"b": 1}}, 1), ({"a": 2}, 4)]
    assert "each line is one JSON object" in problems[0]
    got, _ = read(write(tmp_path / "d.json", '[{"a": 1}, {"a": 2}]'))
    assert got == [({"a": 1}, 1), ({"a": 2}, 2)]


def test_a_broken_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="appears twice"):
        read(write(tmp_path / "d.csv", "a,a\n1,2\n"))
    with pytest.raises(JobFileError, match="not UTF-8"):
        (tmp_path / "e.csv").write_bytes(b"a\n\xff\xfe\n")
        read(tmp_path / "e.csv")


def test_a_csv_in_the_windows_code_page_is_refused_at_its_line_and_byte(tmp_path: Path) -> None:
    # Excel's plain "CSV" is saved in the Windows code page (é is 0xe9); the reader
    # decodes ahead in blocks, so the line it stood at was not the line at fault
    lines = ["name,topic", *(f"n{i},t{i}" for i in range(5000)), "José,café", "x,y"]
    (tmp_path / "e.csv").write_bytes("\n".join(lines).encode("cp1252"))
    with pytest.raises(JobFileError) as info:
        read(tmp_path / "e.csv")
    (problem,) = info.value.problems
    assert problem.line == 5002
    assert "not UTF-8 text (byte 0xe9, column 4)" in problem.message
    assert '"CSV UTF-8"' in problem.message


def test_a_folder_as_rows(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.jpg", "sub/c.jpg", "d.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    got, _ = read_glob(tmp_path, "**/*.jpg")
    assert [r for r, _ in got] == [
        {"path": "a.jpg", "name": "a.jpg", "stem": "a"},
        {"path": "b.jpg", "name": "b.jpg", "stem": "b"},
        {"path": "sub/c.jpg", "name": "c.jpg", "stem": "c"}]


def read_glob(base: Path, pattern: str) -> tuple[list[tuple[dict[str, Any], int]], list[str]]:
    problems: list[str] = []
    got = list(rows(DataFile(path=None, glob=pattern, base=base),
                    lambda p: problems.append(str(p))))
    return got, problems
