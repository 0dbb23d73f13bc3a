"""Job files: what they resolve to; the CLI's validate; problems named at their lines
(every kind of broken file: tests/jobs/test_broken.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchgen.cli import main
from batchgen.errors import JobFileError
from batchgen.jobs.load import Overrides, load_job
from tests.helpers import ROOT, run_cli

GOOD_HEAD = "name: t\nendpoint: {base_url: 'https://example.com/v1'}\ndefaults: {model: m}\n"


@pytest.mark.parametrize("indent", [None, 2])
def test_a_json_file_holding_a_job_is_a_job_file(tmp_path: Path, indent: int | None) -> None:
    """json.dump of a job (one line, or pretty-printed): read as the YAML it also
    is, with its lines; a .json of prompt lines, or of Batch API lines, stays JSONL."""
    prompts: list[dict[str, object]] = [{"id": "a", "prompt": "x"},
                                        {"id": "b", "prompt": "y", "temprature": 1}]
    job = {"name": "dumped", "defaults": {"model": "m"}, "prompts": prompts}
    path = tmp_path / "job.json"
    text = json.dumps(job, indent=indent)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(JobFileError) as caught:
        load_job(path)
    (problem,) = caught.value.problems
    assert problem.key == "prompts[1].temprature" and "did you mean 'temperature'" in \
        problem.message
    assert problem.line == 1 + text[:text.index("temprature")].count("\n")
    del prompts[1]["temprature"]
    path.write_text(json.dumps(job, indent=indent), encoding="utf-8")
    loaded = load_job(path)
    assert (loaded.name, loaded.info.requests) == ("dumped", 2)
    lines = tmp_path / "prompts.json"
    lines.write_text('{"id": "a", "prompt": "x"}\n{"custom_id": "b", "method": "POST", '
                     '"url": "/v1/chat/completions", "body": {"model": "m", "messages": '
                     '[{"role": "user", "content": "y"}]}}\n', encoding="utf-8")
    assert load_job(lines, Overrides(model="m")).info.requests == 2


def test_every_example_job_validates() -> None:
    # beside the jobs: their data (.csv, a folder of documents) and schemas (.schema.json)
    jobs = sorted(p for p in (ROOT / "jobs").iterdir() if p.is_file()
                  and p.suffix != ".csv" and not p.name.endswith(".schema.json"))
    assert {p.suffix for p in jobs} >= {".yaml", ".jsonl"}
    for path in jobs:
        job = load_job(path, Overrides(model="qwen-plus"))
        assert job.info.requests > 0, path


def test_a_prompt_may_be_its_text_alone(tmp_path: Path) -> None:
    """``- Write about cats`` is ``- {prompt: Write about cats}`` (it was refused
    as "not a mapping"); its id comes from its content, as any id-less prompt's."""
    path = tmp_path / "job.yaml"
    path.write_text("defaults: {model: qwen-plus}\nprompts:\n  - Write about cats\n"
                    "  - |\n    Two\n    lines\n  - {prompt: Write about cats}\n",
                    encoding="utf-8")
    reqs = list(load_job(path).requests())
    assert [r.body["messages"] for r in reqs] == [
        [{"role": "user", "content": "Write about cats"}],
        [{"role": "user", "content": "Two\nlines\n"}],
        [{"role": "user", "content": "Write about cats"}]]
    assert reqs[0].id.startswith("p-") and reqs[2].id == reqs[0].id + "-2"
    # a JSONL line may be the text alone too, as a JSON string, with the same id
    lines = tmp_path / "p.jsonl"
    lines.write_text('"Write about cats"\n{"prompt": "dogs", "id": "d"}\n', encoding="utf-8")
    jsonl = list(load_job(lines, Overrides(model="qwen-plus")).requests())
    assert [r.body["messages"][0]["content"] for r in jsonl] == ["Write about cats", "dogs"]
    assert jsonl[0].id == reqs[0].id


def test_defaults_merge_system_and_extra_body(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "defaults:\n  model: qwen-plus\n  system: Be brief.\n  temperature: 0.7\n"
        "  max_tokens: 100\n  extra_body: {enable_thinking: false, top_k: 5}\n"
        "prompts:\n"
        "  - {id: a, prompt: hi, temperature: 0.1, extra_body: {enable_thinking: true}}\n"
        "  - {id: b, prompt: hi, system: Be long., max_tokens: null}\n"
        "  - id: c\n    messages: [{role: system, content: own}, {role: user, content: x}]\n",
        encoding="utf-8")
    reqs = {r.id: r for r in load_job(path).requests()}
    assert reqs["a"].body == {
        "model": "qwen-plus",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "temperature": 0.1, "max_tokens": 100,
        "extra_body": {"enable_thinking": True, "top_k": 5},
    }
    assert reqs["b"].body["messages"][0] == {"role": "system", "content": "Be long."}
    assert "max_tokens" not in reqs["b"].body
    assert reqs["c"].body["messages"][0] == {"role": "system", "content": "own"}
    assert load_job(path).run_dir == Path("outputs") / "job"


def test_ids_are_stable_and_fingerprints_follow_the_request(tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    path.write_text('{"prompt": "x"}\n{"prompt": "y"}\n{"prompt": "x"}\n', encoding="utf-8")
    first = [(r.id, r.fingerprint) for r in load_job(path, Overrides(model="m")).requests()]
    again = [(r.id, r.fingerprint) for r in load_job(path, Overrides(model="m")).requests()]
    assert first == again
    assert first[2][0] == first[0][0] + "-2" and first[2][1] == first[0][1]
    other = [r.fingerprint for r in load_job(path, Overrides(model="m2")).requests()]
    assert other[0] != first[0][1]
    moved = [r.fingerprint for r in load_job(
        path, Overrides(model="m", base_url="https://other.example/v1")).requests()]
    assert moved[0] != first[0][1]
    # the same endpoint written with capitals or a final slash: the same requests (a
    # job's answers are not bought again for it)
    same = {next(load_job(path, Overrides(model="m", base_url=url)).requests()).fingerprint
            for url in ("https://other.example/v1", "HTTPS://Other.Example/v1/")}
    assert same == {moved[0]}
    assert load_job(path, Overrides(model="m", base_url="HTTPS://Other.Example/v1/")
                    ).endpoint.base_url == "https://other.example/v1"


def test_batch_api_lines_keep_provider_keys(tmp_path: Path) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_text(json.dumps({"custom_id": "r1", "method": "POST",
                                "url": "/v1/chat/completions",
                                "body": {"model": "qwen-plus", "stream": False,
                                         "messages": [{"role": "user", "content": "hi"}],
                                         "enable_thinking": False, "top_p": 0.5}}) + "\n")
    (req,) = load_job(path).requests()
    assert req.id == "r1"
    assert req.body == {"model": "qwen-plus", "messages": [{"role": "user", "content": "hi"}],
                        "top_p": 0.5, "extra_body": {"enable_thinking": False}}


def test_prompts_file_joins_inline_prompts(tmp_path: Path) -> None:
    (tmp_path / "more.jsonl").write_text('{"id": "m1", "prompt": "x"}\n', encoding="utf-8")
    path = tmp_path / "job.yaml"
    path.write_text(GOOD_HEAD + "prompts: [{id: a, prompt: y}]\nprompts_file: more.jsonl\n")
    assert [r.id for r in load_job(path).requests()] == ["a", "m1"]


def test_validate_prints_the_plan(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD_HEAD + "prompts: [{prompt: x}, {prompt: y, model: other}]\n")
    result = CliRunner().invoke(main, ["validate", str(path), "--out", "somewhere"])
    assert result.exit_code == 0, result.output
    assert "requests: 2" in result.output
    assert "m, other" in result.output
    assert str(Path("somewhere") / "t") in result.output


def test_validate_json_says_what_is_wrong_on_stdout(tmp_path: Path) -> None:
    """--format json is for scripts: a broken job printed nothing on stdout
    (the problems went to stderr only). It prints ``"ok": false`` with each
    problem's file, line, key and message; stderr and the exit code are as ever."""
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD_HEAD + "prompts:\n  - prompt: x\n    temprature: 1\n")
    proc = run_cli("validate", str(path), "--format", "json", cwd=tmp_path)
    assert proc.returncode == 2 and "temprature: unknown key" in proc.stderr
    said = json.loads(proc.stdout)
    assert said["ok"] is False and said["file"] == str(path)
    (problem,) = said["problems"]
    assert (problem["file"], problem["line"], problem["key"]) == \
        (str(path), 6, "prompts[0].temprature")
    assert "did you mean 'temperature'" in problem["message"]
    lines = tmp_path / "p.jsonl"
    lines.write_text('{"prompt": "x"}\n', encoding="utf-8")
    proc = run_cli("validate", str(lines), "--format", "json", "--model", "m", "--base-url",
                   "http://10.0.0.7/v1", cwd=tmp_path)
    assert proc.returncode == 2 and json.loads(proc.stdout) == {
        "file": str(lines), "ok": False, "error": proc.stderr.strip().removeprefix(
            "batchgen: ")}


def test_validate_json_carries_the_notes_the_text_says(tmp_path: Path) -> None:
    """A key that is not set, or one kept back from the job's host: the text
    said so and --format json did not."""
    path = tmp_path / "job.yaml"
    path.write_text(GOOD_HEAD + "prompts: [{prompt: x}]\n")  # https://example.com/v1
    unset = {"DASHSCOPE_API_KEY": "", "EXAMPLE_API_KEY": ""}
    proc = run_cli("validate", str(path), "--format", "json", cwd=tmp_path, env=unset)
    assert proc.returncode == 0, proc.stderr
    (note,) = json.loads(proc.stdout)["notes"]
    assert note.startswith("DASHSCOPE_API_KEY holds a Model Studio key and the job file sends "
                           "its requests to example.com")
    path.write_text(path.read_text().replace("base_url: 'https://example.com/v1'",
                                             "base_url: 'https://example.com/v1', "
                                             "api_key_env: EXAMPLE_API_KEY"))
    proc = run_cli("validate", str(path), "--format", "json", cwd=tmp_path, env=unset)
    assert json.loads(proc.stdout)["notes"] == ["EXAMPLE_API_KEY is not set; `batchgen run` "
                                                "needs it"]


def test_prompts_may_use_anchors_from_anywhere_before_them(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "name: &sys brief\ndefaults: {model: m}\nprompts:\n"
        "  - &first {id: a, prompt: hi, system: *sys}\n"
        "  - {<<: *first, id: b}\n"
        "  - {id: c, messages: [{role: user, content: *sys}]}\n",
        encoding="utf-8")
    reqs = {r.id: r for r in load_job(path).requests()}
    assert reqs["a"].body["messages"][0] == {"role": "system", "content": "brief"}
    assert reqs["b"].body["messages"] == reqs["a"].body["messages"]
    assert reqs["c"].body["messages"] == [{"role": "user", "content": "brief"}]


def test_top_level_x_keys_hold_anchors_and_are_otherwise_ignored(tmp_path: Path) -> None:
    """x-common: &common ... (as in compose files): a place for what prompts
    share; any other unknown key is still refused."""
    path = tmp_path / "job.yaml"
    path.write_text(
        "x-common: &common\n  model: m\n  max_tokens: 50\nx-note: [anything]\n"
        "prompts:\n  - {<<: *common, id: a, prompt: hi}\n"
        "  - {<<: *common, id: b, prompt: yo, max_tokens: 20}\n", encoding="utf-8")
    reqs = {r.id: r for r in load_job(path).requests()}
    assert (reqs["a"].model, reqs["a"].body["max_tokens"]) == ("m", 50)
    assert reqs["b"].body["max_tokens"] == 20
    path.write_text(path.read_text().replace("x-note", "xnote"), encoding="utf-8")
    with pytest.raises(JobFileError) as caught:
        load_job(path)
    assert [(p.line, p.message[:17]) for p in caught.value.problems] == [
        (4, "unknown key 'xnot")]


def test_problems_in_prompts_name_their_lines_in_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    items = "".join(f"  - {{prompt: p{i}}}\n" for i in range(50))
    path.write_text(GOOD_HEAD + "prompts:\n" + items + "  - prompt: x\n    temperature: hot\n",
                    encoding="utf-8")
    with pytest.raises(JobFileError) as info:
        load_job(path)
    (problem,) = info.value.problems
    assert problem.line == 3 + 1 + 50 + 2 and problem.key == "prompts[50].temperature"


def test_a_yaml_job_holds_no_tree_of_its_prompts(tmp_path: Path) -> None:
    """Prompts are read an item at a time: the memory a walk needs does not grow
    with the job beyond the text itself (and the ids that find clashes)."""
    import gc
    import tracemalloc

    def peak(n: int) -> tuple[int, int]:
        path = tmp_path / f"job{n}.yaml"
        path.write_text(GOOD_HEAD + "prompts:\n" + "".join(
            f"  - id: p{i}\n    prompt: Write line {i} of a long report\n    temperature: 0.5\n"
            for i in range(n)), encoding="utf-8")
        gc.collect()
        tracemalloc.start()
        job = load_job(path)
        assert sum(1 for _ in job.requests()) == n
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return used, path.stat().st_size

    small, small_size = peak(200)
    big, big_size = peak(2_000)
    # a document tree costs ~2 KB a prompt; the text ~70 bytes, the id set ~150
    assert big - small < 4 * (big_size - small_size), (small, big)


def test_aliases_may_not_expand_a_job_much_but_plain_text_may_be_long(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchgen.jobs import yamlmarks as yamlload

    monkeypatch.setattr(yamlload, "MAX_EXPANDED_NODES", 500)
    path = tmp_path / "job.yaml"
    path.write_text(GOOD_HEAD + "prompts:\n" + "".join(
        f"  - {{id: p{i}, prompt: x, stop: [a, b, c]}}\n" for i in range(200)),
        encoding="utf-8")
    assert load_job(path).info.requests == 200  # 2,000 values written out: fine
    path.write_text(GOOD_HEAD + "prompts:\n  - {id: a, prompt: x, stop: &s [a, b, c, d, e]}\n"
                    + "".join(f"  - {{id: p{i}, prompt: x, stop: *s}}\n" for i in range(100)),
                    encoding="utf-8")
    with pytest.raises(JobFileError) as info:
        load_job(path)
    assert "alias" in info.value.problems[0].message


def test_a_lone_surrogate_is_a_problem_with_its_line_and_key(tmp_path: Path) -> None:
    """JSON can escape half a UTF-16 pair; UTF-8 (the wire, the store) cannot
    carry it. Refused like any broken value, not a traceback."""
    path = tmp_path / "job.jsonl"
    path.write_text('{"prompt": "fine \\ud83d\\ude00"}\n'
                    '{"prompt": "half \\ud800 a pair"}\n'
                    '{"id": "t", "prompt": "ok", "tags": ["a\\udc00"]}\n'
                    '{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", '
                    '"body": {"model": "m", "messages": [{"role": "user", "content": "x"}], '
                    '"extra\\ud800": 1}}\n', encoding="utf-8")
    with pytest.raises(JobFileError) as info:
        load_job(path, Overrides(model="m"))
    where = [(p.line, p.key) for p in info.value.problems]
    assert where == [(2, "prompt"), (3, "tags[0]"), (4, "body.extra\ud800")]
    assert all("lone UTF-16 surrogate" in p.message for p in info.value.problems)
    result = CliRunner().invoke(main, ["validate", str(path), "--model", "m"])
    assert result.exit_code == 2 and "job.jsonl:2: prompt" in result.output


def test_a_batch_line_whose_extra_body_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    path.write_text('{"custom_id": "b1", "method": "POST", "url": "/v1/chat/completions", '
                    '"body": {"model": "m", "messages": [{"role": "user", "content": "x"}], '
                    '"extra_body": ["top_k", 3]}}\n', encoding="utf-8")
    with pytest.raises(JobFileError) as info:
        load_job(path)
    (problem,) = info.value.problems
    assert (problem.line, problem.key) == (1, "body.extra_body")


def test_plain_http_beyond_loopback_needs_allow_http(tmp_path: Path) -> None:
    """A cluster's vLLM on http://vllm:8000/v1: refused with the way out named
    (the key would cross the network unencrypted), taken with
    ``endpoint.allow_http: true`` or ``--allow-http``; loopback needs neither."""
    head = "endpoint:\n  base_url: http://vllm.svc:8000/v1\n"
    path = tmp_path / "j.yaml"
    path.write_text(head + "defaults: {model: m}\nprompts: [x]\n", encoding="utf-8")
    with pytest.raises(JobFileError) as caught:
        load_job(path)
    (problem,) = caught.value.problems
    assert (problem.line, problem.key) == (2, "endpoint.base_url")
    assert "unencrypted" in problem.message and "endpoint.allow_http: true" in \
        problem.message and "--allow-http" in problem.message
    assert load_job(path, Overrides(allow_http=True)).endpoint.base_url == \
        "http://vllm.svc:8000/v1"
    path.write_text(head + "  allow_http: true\ndefaults: {model: m}\nprompts: [x]\n",
                    encoding="utf-8")
    assert load_job(path).endpoint.base_url == "http://vllm.svc:8000/v1"

    lines = tmp_path / "p.jsonl"  # a JSONL job has no endpoint block: the flag it is
    lines.write_text('{"prompt": "x", "model": "m"}\n', encoding="utf-8")
    flag = ["validate", str(lines), "--base-url", "http://10.0.0.7:8000/v1"]
    refused = CliRunner().invoke(main, flag)
    assert refused.exit_code == 2 and "--base-url:" in refused.output
    assert "--allow-http" in refused.output
    assert CliRunner().invoke(main, [*flag, "--allow-http"]).exit_code == 0
    for local in ("http://127.0.0.1:8000/v1", "http://localhost:8000/v1", "http://[::1]:8/v1"):
        assert load_job(lines, Overrides(base_url=local)).endpoint.base_url == local


def test_a_file_name_that_cannot_name_the_run_gets_a_name_to_use(tmp_path: Path) -> None:
    """The run is named after the file: "essay job.yaml" was refused with "set
    `name:`"; the message now names one that works, and where to put it."""
    from batchgen.errors import UsageError

    (tmp_path / "essay job.yaml").write_text("defaults: {model: m}\nprompts: [{prompt: x}]\n")
    with pytest.raises(UsageError, match=r"run name 'essay job' cannot name a directory .*; "
                       r"set `name: essay-job` in the job file, or pass --name essay-job$"):
        load_job(tmp_path / "essay job.yaml")
    (tmp_path / "散文.yaml").write_text("defaults: {model: m}\nprompts: [{prompt: x}]\n")
    with pytest.raises(UsageError, match=r"set `name: my-job` in the job file, or pass "
                                         r"--name my-job$"):
        load_job(tmp_path / "散文.yaml")
    (tmp_path / "x y.jsonl").write_text('{"prompt": "x"}\n')  # a JSONL file has no name:
    with pytest.raises(UsageError, match=r"cannot name a directory .*; pass --name x-y$"):
        load_job(tmp_path / "x y.jsonl", Overrides(model="m"))
    assert load_job(tmp_path / "essay job.yaml", Overrides(name="essay-job")).name == "essay-job"


def test_an_empty_prompt_and_the_stream_keys_are_refused_naming_their_lines(
        tmp_path: Path) -> None:
    # an empty prompt was sent (a script's JSONL with a missing field), to fail at the
    # provider one request at a time; `stream: false` was told "did you mean 'store'?"
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in (
        {"id": "a", "prompt": ""}, {"id": "b", "prompt": " \n"},
        {"id": "c", "messages": [{"role": "user", "content": ""}]},
        {"id": "d", "prompt": "x", "stream": False},
        {"id": "e", "prompt": "x", "stream_options": {"include_usage": False}},
        {"id": "ok", "messages": [{"role": "assistant", "content": ""},
                                  {"role": "user", "content": "go on"}]})))
    with pytest.raises(JobFileError) as info:
        load_job(path, Overrides(model="m"))
    said = {(p.line, p.message) for p in info.value.problems}
    empty = "the prompt is empty: write its text, or leave this prompt out"
    streamed = ("is batchgen's to set: every request is streamed, with its usage (stream: "
                "true, stream_options.include_usage); leave it out")
    assert said == {(1, empty), (2, empty),
                    (3, "messages[0]: the user message is empty: write its text, or leave the "
                        "message out"),
                    (4, f"'stream' {streamed}"), (5, f"'stream_options' {streamed}")}
