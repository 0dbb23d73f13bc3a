"""Every recorded provider stream, replayed byte for byte into a real run.

The streams in ``../shared/replay`` come from 14 providers and from the openai
SDK's own SSE decoder tests; each sidecar says what the SDK reads from those
bytes. batchgen must end up with the same text, reasoning, finish_reason and
usage — and treat the SDK's errors as failures — except where the SDK drops
data the server sent, which batchgen keeps (checked here case by case).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batchgen import load_job, run_job
from batchgen.engine.runner import RunOptions
from batchgen.testing import replay
from batchgen.testing.fakeserver import FakeServer
from tests.helpers import no_sleep, read_results, write_job

if not (replay.REPLAY_DIR / "streams").is_dir():
    if os.environ.get("BATCHGEN_REQUIRE_LOCAL") == "1":
        raise RuntimeError(f"the recorded streams are missing: {replay.REPLAY_DIR}")
    pytest.skip(f"no recorded streams at {replay.REPLAY_DIR}", allow_module_level=True)

CASES = replay.cases()
SAME_PAYLOADS = "decoder-no-space"  # the decoder cases all carry this stream's chunks


def run_cases(tmp_path: Path, fake: FakeServer, cases: list[str], name: str = "t"
              ) -> dict[str, dict[str, Any]]:
    """One job with one request per case; returns each case's outcome."""
    prompts = [{"id": case, "prompt": f"[[replay={case}]]"} for case in cases]
    job = write_job(tmp_path / f"{name}.yaml", fake, prompts, name=name,
                    run={"max_attempts": 2, "concurrency": 4})
    run_job(load_job(job), RunOptions(sleep=no_sleep, flush_interval=0.05))
    run_dir = tmp_path / "out" / name
    out: dict[str, dict[str, Any]] = {c: {"state": None} for c in cases}
    for result in read_results(run_dir):
        texts = run_dir / "texts"
        reasoning_file = texts / f"{result['id']}.reasoning.md"
        out[result["id"]] = {
            "state": "done", **result,
            "text": (texts / f"{result['id']}.md").read_text(encoding="utf-8"),
            "reasoning_text": reasoning_file.read_text(encoding="utf-8")
            if reasoning_file.exists() else "",
        }
    db = sqlite3.connect(run_dir / "run.db")
    for rid, state, error_class, code in db.execute(
        "SELECT r.id, r.state, a.error_class, a.error_code FROM requests r "
        "JOIN attempts a ON a.request_id = r.id WHERE r.state = 'failed'"
    ):
        out[rid].update(state=state, error_class=error_class, code=code,
                        attempts=db.execute("SELECT COUNT(*) FROM attempts WHERE request_id=?",
                                            (rid,)).fetchone()[0])
    return out


def sse_lines(case: str) -> list[str]:
    """The body's lines, split at CR, LF, CRLF only (not at U+2028, as splitlines does)."""
    return re.split(r"\r\n|\r|\n", replay.body(case).decode())


def data_objects(case: str) -> list[dict[str, Any]]:
    """Every one-line ``data:`` JSON object of a recording (enough for the cases
    that need it; the decoder cases spread theirs over lines)."""
    out = []
    for line in sse_lines(case):
        if line.startswith("data:"):
            try:
                obj = json.loads(line[5:])
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def details_text(case: str) -> str:
    """Readable reasoning_details text, read independently of batchgen."""
    out = []
    for obj in data_objects(case):
        for choice in obj.get("choices") or []:
            for item in (choice.get("delta") or {}).get("reasoning_details") or []:
                out.append(item.get("text") or "")
    return "".join(out)


def groq_usage(case: str) -> dict[str, Any]:
    usage: dict[str, Any] = {}
    for obj in data_objects(case):
        usage = (obj.get("x_groq") or {}).get("usage") or usage
    return usage


def check(case: str, got: dict[str, Any]) -> None:
    meta = replay.sidecar(case)
    want = meta["expected"]
    if want["sdk_error"] and meta.get("score", True):
        # the SDK raised: the request must fail, with the server's message, not be "done"
        assert got["state"] == "failed", (case, got)
        assert got["error_class"] == "http_400", (case, got)  # a 400, said in the stream
        assert got["attempts"] == 1, "a 4xx said in the stream is not retried"
        return
    if case == "decoder-event-without-data":
        # not counted: the SDK cannot read `event: ping` without data; the SSE rules
        # skip such events, so batchgen reads the stream whole
        want = replay.sidecar(SAME_PAYLOADS)["expected"]
    assert got["state"] == "done", (case, got)
    assert got["content"] == want["content"], case
    assert got["text"] == got["content"]  # texts/<id>.md is the content, byte for byte
    reasoning = want["reasoning"]
    if want["nonstring_content"]:  # Mistral: thinking parts inside a content list
        reasoning = want["nonstring_content_text"]
    elif not reasoning and details_text(case):  # Snowflake: reasoning_details only
        reasoning = details_text(case)
    assert got.get("reasoning_content", "") == reasoning, case
    assert got["reasoning_text"] == reasoning
    assert got["finish_reason"] == want["finish_reason"], case
    assert got["attempts"] == 1, case  # complete at the first attempt: never paid twice
    usage = {k: v for k, v in got["usage"].items() if k != "estimated"}
    if want["usage_fields"] is not None:
        assert usage == want["usage_fields"], case
        assert "estimated" not in got["usage"]
    elif case.startswith("groq-"):  # usage only in x_groq: real figures, kept
        reported = groq_usage(case)
        assert usage["prompt_tokens"] == reported["prompt_tokens"]
        assert usage["completion_tokens"] == reported["completion_tokens"]
        assert "estimated" not in got["usage"]
    elif case == "decoder-unterminated-last-event":
        # not counted: the usage event ends without its final newline; batchgen keeps it
        assert usage == replay.sidecar(SAME_PAYLOADS)["expected"]["usage_fields"]
    else:
        assert got["usage"]["estimated"] is True, case  # no usage sent: estimated, flagged


def test_every_recorded_stream_in_one_job(tmp_path: Path, fake: FakeServer) -> None:
    assert len(CASES) >= 37, CASES
    got = run_cases(tmp_path, fake, CASES)
    for case in CASES:
        check(case, got[case])


@pytest.mark.parametrize("case", CASES)
def test_each_recorded_stream_alone(tmp_path: Path, fake: FakeServer, case: str) -> None:
    check(case, run_cases(tmp_path, fake, [case])[case])


def test_tool_call_deltas_are_assembled(tmp_path: Path, fake: FakeServer) -> None:
    cases = ["openai-gpt4o-mini-toolcall", "groq-gpt-oss-reasoning"]
    got = run_cases(tmp_path, fake, cases)
    for case in cases:
        (call,) = got[case]["tool_calls"]
        assert call["type"] == "function" and call["id"]
        assert call["function"]["name"]
        assert isinstance(json.loads(call["function"]["arguments"]), dict)
    assert got["openai-gpt4o-mini-toolcall"]["tool_calls"][0]["function"]["name"] == "get_capital"
