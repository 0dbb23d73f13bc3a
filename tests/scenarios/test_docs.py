"""The README and the docs pages cannot drift: their commands, job files,
paths and exit codes are checked here (and `mkdocs build --strict` in CI
checks the pages' links and navigation)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from batchgen.jobs.load import load_job
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_two_setup_commands_one_runs_a_job_one_runs_the_tests() -> None:
    setup = README.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    commands = [b.strip() for b in re.findall(r"```sh\n(.*?)```", setup, flags=re.S)][:2]
    assert commands[0].endswith("batchgen run jobs/example.yaml")
    assert commands[1].endswith("python -m pytest")
    assert (ROOT / "jobs" / "example.yaml").exists()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci.splitlines(), "CI must run the README's test command verbatim"
    # both build llama.cpp portably, with the flags batchgen's own hints name
    from batchgen.llama.server import PORTABLE_CMAKE_ARGS

    for command in commands:
        assert command.startswith(f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install')


def test_readme_job_example_validates(tmp_path: Path) -> None:
    example = next(b for b in blocks("yaml") if "prompts:" in b)
    data = yaml.safe_load(example)
    data.pop("prompts_file")
    path = tmp_path / "essays.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    job = load_job(path)
    assert job.info.requests == 2
    assert job.info.models == ("qwen-plus", "qwen3-vl-plus")


def test_readme_names_every_exit_code_the_cli_uses() -> None:
    for code in ("0", "1", "2", "3", "4", "5", "69", "74", "75", "130"):
        assert f"| {code} |" in README


def test_the_exit_code_table_is_the_one_list_of_exit_codes() -> None:
    from batchgen.errors import ExitCode

    table = README.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.*) \|$", table, flags=re.M)
    assert rows == [(str(c.value), c.meaning) for c in ExitCode]


PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
TEXTS = {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
         for path in [ROOT / "README.md", *PAGES]}


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_every_docs_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in (ROOT / "docs").glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def job_fragments() -> list[tuple[str, dict[str, Any]]]:
    """Every YAML block of the README and the pages that is (part of) a job file."""
    from batchgen.jobs.schema import JobSpec

    keys = set(JobSpec.keys())
    out = []
    for name, text in TEXTS.items():
        for block in fenced(text, "yaml"):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and set(data) <= keys:
                out.append((name, data))
    return out


@pytest.mark.parametrize(("page", "data"), job_fragments(),
                         ids=[f"{n}:{i}" for i, (n, _) in enumerate(job_fragments())])
def test_every_job_file_example_in_the_docs_validates(page: str, data: dict[str, Any],
                                                      tmp_path: Path) -> None:
    """A fragment (``budget:``, ``endpoint:``) is checked inside a one-prompt job."""
    job: dict[str, Any] = {"prompts": [{"id": "a", "prompt": "hello"}],
                           "defaults": {"model": "qwen-plus"}, **data}
    job.pop("prompts_file", None)
    endpoint = job.get("endpoint")
    if isinstance(endpoint, dict) and endpoint.get("model_path"):
        model = tmp_path / "model.gguf"
        model.write_bytes(b"GGUF")
        endpoint["model_path"] = str(model)
    given = job.get("data")
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 64  # a stand-in for the docs' photos
    if isinstance(given, dict) and "glob" in given:  # a folder of photos, or of documents
        one = tmp_path / given["glob"].replace("**/", "").replace("*", "one")
        one.parent.mkdir(parents=True, exist_ok=True)
        one.write_bytes(jpeg if one.suffix == ".jpg" else b"A chapter.\n")
    elif given is not None:  # the docs' data is the example's: jobs/translate.csv
        name = given if isinstance(given, str) else given["path"]
        (tmp_path / name).write_bytes((ROOT / "jobs" / "translate.csv").read_bytes())
    for name in re.findall(r'file://([\w./-]+)', json.dumps(job)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(jpeg)
    schema = (job.get("defaults") or {}).get("schema")
    if isinstance(schema, str):  # the docs' schema files are the examples' in jobs/
        (tmp_path / schema).write_bytes((ROOT / "jobs" / schema).read_bytes())
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job, allow_unicode=True), encoding="utf-8")
    load_job(path)


def command_lines() -> list[tuple[str, str]]:
    lines = []
    for name, text in TEXTS.items():
        for block in fenced(text, "sh") + fenced(text, "text"):
            for raw in block.splitlines():
                # a command, then (after two spaces) a comment or what it does
                line = re.split(r"\s{2,}", raw.strip().removeprefix("$ "))[0]
                for part in line.split("&&"):
                    if part.strip().startswith("batchgen "):
                        lines.append((name, part.strip()))
    return lines


def test_every_batchgen_command_in_the_docs_names_real_commands_and_flags() -> None:
    from batchgen.cli import main

    checked = 0
    for page, line in command_lines():
        words = shlex.split(line.replace("[", "").replace("]", ""))[1:]
        command: click.Command = main
        for word in words:
            if isinstance(command, click.Group) and word in command.commands:
                command = command.commands[word]
                continue
            if word.startswith("--"):
                names = {n for p in command.params for n in (*p.opts, *p.secondary_opts)}
                names.add("--help")
                flag = word.split("=")[0]
                assert flag in names, f"{page}: `{line}`: {flag} is no option of {command.name}"
        assert not isinstance(command, click.Group), f"{page}: `{line}` names no command"
        checked += 1
    assert checked >= 20


PATH = re.compile(r"`((?:batchgen|tests|bench|jobs|docs)/[A-Za-z0-9_./-]+)`")


def test_every_path_the_docs_name_exists() -> None:
    missing = [f"{name}: {path}" for name, text in TEXTS.items()
               for path in PATH.findall(text) if not (ROOT / path.rstrip("/")).exists()
               and "<" not in path]
    assert missing == []


def test_every_link_of_the_readme_leads_somewhere() -> None:
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), target
