"""Broken job files: every kind is refused with exit 2, its file, line and
what to fix, and nothing is written; many problems are reported together."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from batchgen.cli import main
from batchgen.errors import JobFileError
from batchgen.jobs.load import load_job
from tests.helpers import run_cli
from tests.jobs.test_load import GOOD_HEAD

BIG = "prompts:\n" + "  - prompt: " + "x" * 1000 + "\n"
BOMB = (
    'a: &a ["l","l","l","l","l","l","l","l","l"]\n'
    + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n"
              for p, c in zip("abcdefgh", "bcdefghi", strict=True))
)

CASES: list[tuple[str, str, str, int | None, str]] = [
    # (case, file name, content, line, what the message says)
    ("empty", "j.yaml", "", None, "empty file"),
    ("only-comments", "j.yaml", "# nothing\n", None, "empty file"),
    ("yaml-syntax", "j.yaml", GOOD_HEAD + "prompts: [a, b\n", 5, "YAML syntax error"),
    ("unterminated-quote", "j.yaml", "name: 'oops\ndefaults: {model: m}\nprompts: []\n", 4,
     "found unexpected end of stream (what it was reading began on line 1)"),
    ("yaml-tab", "j.yaml", GOOD_HEAD + "prompts:\n\t- prompt: x\n", 5,
     "(a tab: YAML indents with spaces only)"),
    ("yaml-tab-in-item", "j.yaml", GOOD_HEAD + "prompts:\n  - prompt: x\n\tid: y\n", 6,
     "tab character"),
    ("not-a-mapping", "j.yaml", "- a\n- b\n", 1, "is a mapping"),
    ("unknown-top-key", "j.yaml", GOOD_HEAD + "promts: []\n", 4, "did you mean 'prompts'"),
    ("unknown-param", "j.yaml", GOOD_HEAD + "prompts:\n  - prompt: x\n    temprature: 1\n", 6,
     "did you mean 'temperature'"),
    ("provider-key-top", "j.yaml",
     GOOD_HEAD + "prompts:\n  - prompt: x\n    enable_thinking: true\n", 6, "extra_body"),
    ("unknown-run-key", "j.yaml", GOOD_HEAD + "run: {concurency: 3}\nprompts: [{prompt: x}]\n", 4,
     "did you mean 'concurrency'"),
    ("wrong-type-temp", "j.yaml", GOOD_HEAD + "prompts:\n  - prompt: x\n    temperature: hot\n", 6,
     "wrong type"),
    ("wrong-type-max", "j.yaml", GOOD_HEAD + "prompts:\n  - prompt: x\n    max_tokens: '100'\n", 6,
     "wrong type"),
    ("out-of-range", "j.yaml", GOOD_HEAD + "prompts:\n  - prompt: x\n    temperature: 9\n", 6,
     "less than or equal to 2"),
    ("concurrency-zero", "j.yaml", GOOD_HEAD + "run: {concurrency: 0}\nprompts: [{prompt: x}]\n",
     4, "greater than or equal to 1"),
    ("missing-prompt", "j.yaml", GOOD_HEAD + "prompts:\n  - id: a\n", 5, "missing prompt/messages"),
    ("prompt-and-messages", "j.yaml",
     GOOD_HEAD + "prompts:\n  - prompt: x\n    messages: [{role: user, content: y}]\n", 5,
     "either"),
    ("no-prompts", "j.yaml", GOOD_HEAD, None, "no prompts"),
    ("empty-prompts", "j.yaml", GOOD_HEAD + "prompts: []\n", None, "no prompts"),
    ("duplicate-id", "j.yaml", GOOD_HEAD + "prompts:\n  - {id: a, prompt: x}\n"
     "  - {id: a, prompt: y}\n", 6, "duplicate id 'a'"),
    ("traversal-id", "j.yaml", GOOD_HEAD + "prompts:\n  - {id: ../../etc/passwd, prompt: x}\n", 5,
     "names files"),
    ("slash-id", "j.yaml", GOOD_HEAD + "prompts:\n  - {id: a/b, prompt: x}\n", 5,
     "id 'a/b' must match"),
    ("dot-id", "j.yaml", GOOD_HEAD + "prompts:\n  - {id: .hidden, prompt: x}\n", 5, "names files"),
    ("long-id", "j.yaml", GOOD_HEAD + f"prompts:\n  - {{id: {'a' * 129}, prompt: x}}\n", 5,
     "names files"),
    ("bad-name", "j.yaml", "name: ../up\n" + GOOD_HEAD[8:] + "prompts: [{prompt: x}]\n", 1,
     "names files"),
    ("no-model", "j.yaml", "prompts:\n  - prompt: x\n", 2, "no model"),
    ("bad-role", "j.yaml", GOOD_HEAD + "prompts:\n  - messages: [{role: robot, content: x}]\n", 5,
     "role"),
    ("part-without-type", "j.yaml",
     GOOD_HEAD + "prompts:\n  - messages: [{role: user, content: [{text: x}]}]\n", 5, "'type'"),
    ("n-two", "j.yaml", GOOD_HEAD + "prompts:\n  - {prompt: x, n: 2}\n", 5,
     "n must be 1: a request streams one answer"),
    ("stream-in-extra-body", "j.yaml",
     GOOD_HEAD + "prompts:\n  - {prompt: x, extra_body: {stream: false}}\n", 5, "sets them itself"),
    ("duplicate-key", "j.yaml", GOOD_HEAD + "prompts: [{prompt: x}]\nname: again\n", 5,
     "duplicate key 'name'"),
    ("alias-bomb", "j.yaml", BOMB, None, "alias"),
    ("prompt-not-a-mapping", "j.yaml", GOOD_HEAD + "prompts:\n  - {prompt: x}\n  - 42\n",
     6, "each prompt is its text, or a mapping"),
    ("prompt-empty-text", "j.yaml", GOOD_HEAD + "prompts:\n  - {prompt: x}\n  - '  '\n",
     6, "not empty"),
    ("syntax-in-a-later-prompt", "j.yaml",
     GOOD_HEAD + "prompts:\n  - {prompt: x}\n  - {prompt: y\n  - {prompt: z}\n", 7,
     "YAML syntax error"),
    ("duplicate-key-in-a-prompt", "j.yaml",
     GOOD_HEAD + "prompts:\n  - {prompt: x}\n  - prompt: y\n    prompt: z\n", 7,
     "duplicate key 'prompt'"),
    ("anchored-prompts", "j.yaml", GOOD_HEAD + "prompts: &all\n  - {prompt: x}\n", 4,
     "anchor on `prompts:`"),
    ("prompts-not-a-list", "j.yaml", GOOD_HEAD + "prompts: 7\n", 4, "expected a list"),
    ("prompts-a-mapping", "j.yaml", GOOD_HEAD + "prompts: {prompt: x}\n", 4,
     "expected a list (- item lines), got a mapping"),
    ("merged-prompts", "j.yaml", "base: &b {prompts: [{prompt: x}]}\n<<: *b\n" + GOOD_HEAD, 2,
     "write `prompts:` out"),
    ("second-document", "j.yaml", GOOD_HEAD + "prompts: [{prompt: x}]\n---\nname: b\n", 5,
     "single document"),
    ("python-tag", "j.yaml", "name: !!python/object/apply:os.system [ls]\n", 1,
     "could not determine a constructor"),
    ("http-base-url", "j.yaml", "endpoint: {base_url: 'http://api.example.com/v1'}\n"
     "defaults: {model: m}\nprompts: [{prompt: x}]\n", 1, "https://"),
    ("space-in-url", "j.yaml", "endpoint: {base_url: 'https://api.example.com/v1\n"
     "  region: cn'}\ndefaults: {model: m}\nprompts: [{prompt: x}]\n", 1, "holds a space"),
    ("port-out-of-range", "j.yaml", "endpoint: {base_url: 'https://api.example.com:99999/v1'}\n"
     "defaults: {model: m}\nprompts: [{prompt: x}]\n", 1, "port is not a number"),
    ("port-not-a-number", "j.yaml", "endpoint: {base_url: 'https://api.example.com:44x/v1'}\n"
     "defaults: {model: m}\nprompts: [{prompt: x}]\n", 1, "port is not a number"),
    ("creds-in-url", "j.yaml", "endpoint: {base_url: 'https://u:p@api.example.com/v1'}\n"
     "defaults: {model: m}\nprompts: [{prompt: x}]\n", 1, "credentials"),
    ("literal-key", "j.yaml", "endpoint:\n  api_key: sk-abcdef0123456789abcdef\n"
     "defaults: {model: m}\nprompts: [{prompt: x}]\n", 2, "api_key_env"),
    ("key-in-env-field", "j.yaml", "endpoint:\n  api_key_env: sk-abcdef0123456789abcdef\n"
     "defaults: {model: m}\nprompts: [{prompt: x}]\n", 2, "api_key_env"),
    ("prompts-file-escape", "j.yaml", GOOD_HEAD + "prompts_file: ../../etc/passwd.jsonl\n", 4,
     "inside the job file's folder"),
    ("prompts-file-missing", "j.yaml", GOOD_HEAD + "prompts_file: nothere.jsonl\n", 4,
     "cannot read"),
    # a table of data where a job file goes (`batchgen run rows.csv`), or as prompts_file
    ("data-as-job", "rows.csv", "topic\nrain\n", None, "not a job file: name it in a job "
     "file's `data:`, with a `template:`"),
    ("data-as-prompts-file", "j.yaml", GOOD_HEAD + "prompts_file: rows.csv\n", 4,
     "a table of rows goes in `data:`"),
    ("jsonl-syntax", "j.jsonl", '{"prompt": "x", "model": "m"}\n{"prompt": "y",\n', 2,
     "JSON syntax error"),
    ("jsonl-not-object", "j.jsonl", '{"prompt": "x", "model": "m"}\n["y"]\n', 2, "JSON object"),
    ("jsonl-unknown-key", "j.jsonl", '{"prompt": "x", "modle": "m"}\n', 1, "did you mean 'model'"),
    ("jsonl-duplicate-custom-id", "j.jsonl",
     '{"custom_id": "a", "url": "/v1/chat/completions", "body": {"model": "m", '
     '"messages": [{"role": "user", "content": "x"}]}}\n'
     '{"custom_id": "a", "url": "/v1/chat/completions", "body": {"model": "m", '
     '"messages": [{"role": "user", "content": "y"}]}}\n', 2, "duplicate id"),
    ("batch-wrong-url", "j.jsonl", '{"custom_id": "a", "url": "/v1/embeddings", "body": {}}\n', 1,
     "chat-completions"),
    ("jsonl-not-utf8", "j.jsonl", '{"prompt": "x", "model": "m"}\n', 1, "UTF-8"),
    ("binary", "j.yaml", "", None, "binary file"),
    ("huge-yaml", "j.yaml", BIG, None, "cap"),
    ("directory", "j.yaml", "", None, "directory"),
]


def _make(tmp_path: Path, case: str, name: str, content: str) -> Path:
    path = tmp_path / "jobs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if case == "binary":
        path.write_bytes(b"\x7fELF\x00\x01\x02" * 20)
    elif case == "jsonl-not-utf8":
        path.write_bytes(b'{"prompt": "\xff\xfe", "model": "m"}\n')
    elif case == "directory":
        path.mkdir()
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize(("case", "name", "content", "line", "says"), CASES,
                         ids=[c[0] for c in CASES])
def test_broken_job_file_exit_2_with_location_and_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, name: str, content: str,
    line: int | None, says: str,
) -> None:
    from batchgen.jobs import load as jobfile

    monkeypatch.setattr(jobfile, "MAX_YAML_BYTES", 512)
    monkeypatch.chdir(tmp_path)
    path = _make(tmp_path, case, name, content)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for command in ("validate", "run"):
        result = CliRunner().invoke(main, [command, str(path)])
        assert result.exit_code == 2, (command, result.output)
        where = f"{path}:{line}:" if line is not None else f"{path}:"
        assert where in result.output, result.output
        assert says in result.output, result.output
        assert "sk-abcdef0123456789abcdef" not in result.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_many_problems_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "j.yaml"
    path.write_text(GOOD_HEAD + "prompts:\n" + "".join(
        f"  - {{prompt: x, temprature: {i}}}\n" for i in range(30)))
    with pytest.raises(JobFileError) as info:
        load_job(path)
    assert len(info.value.problems) == 20 and info.value.truncated


def test_broken_file_in_a_real_subprocess(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD_HEAD + "prompts:\n  - prompt: x\n    temprature: 1\n")
    proc = run_cli("run", str(path), cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{path}:6: prompts[0].temprature: unknown key" in proc.stderr
    assert not (tmp_path / "outputs").exists()
