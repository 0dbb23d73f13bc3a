"""The README cannot drift: its commands and examples are checked here."""

from __future__ import annotations

import re
from pathlib import Path

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
    for code in ("0", "1", "2", "3", "4", "5", "74", "75", "130"):
        assert f"| {code} |" in README
