"""Resume from the text on disk: an interrupted answer goes on, it is not bought again."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from batchgen import load_job, run_job
from batchgen.engine.continuation import EchoFilter, continue_body, refusal, resumable
from batchgen.engine.runner import RunOptions
from batchgen.jobs.endpoints import detect
from batchgen.testing.fakeserver import Config, FakeServer, plan_for
from tests.helpers import no_sleep, read_results, write_job


def run(tmp_path: Path, fake: FakeServer, prompts: list[dict[str, Any]], form: str,
        **run_settings: Any) -> list[dict[str, Any]]:
    job = write_job(tmp_path / "job.yaml", fake, prompts, endpoint={"continuation": form},
                    run=run_settings)
    run_job(load_job(job), RunOptions(sleep=no_sleep, flush_interval=0.05))
    return read_results(tmp_path / "out" / "t")


def whole(prompt: str, model: str = "qwen-plus", **params: Any) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], **params}
    return "".join(plan_for(body, 1, Config()).tokens)


def bodies(fake: FakeServer) -> list[dict[str, Any]]:
    return [e["body"] for e in fake.ledger.entries]


WIRE = {
    "partial": ({"partial": True}, {}),
    "prefix": ({"prefix": True}, {}),
    "continue_final_message": ({}, {"continue_final_message": True,
                                    "add_generation_prompt": False}),
    "prefill": ({}, {}),
}


@pytest.mark.parametrize("form", list(WIRE))
def test_a_dropped_stream_goes_on_from_its_text_in_each_wire_form(
    tmp_path: Path, fake: FakeServer, form: str
) -> None:
    prompt = "[[len=40]] [[faults=cut@15]] an essay"
    (result,) = run(tmp_path, fake, [{"id": "a", "prompt": prompt}], form)
    assert result["content"] == whole(prompt)  # whole, byte for byte; the seam invisible
    assert result["continuations"] == 1 and result["attempts"] == 2
    assert (tmp_path / "out" / "t" / "texts" / "a.md").read_text() == result["content"]
    first, second = bodies(fake)
    sent = second["messages"][-1]
    message_fields, body_fields = WIRE[form]
    assert sent == {"role": "assistant", "content": whole(prompt)[:len(sent["content"])],
                    **message_fields}
    assert 0 < len(sent["content"]) < len(result["content"])
    assert second["messages"][:-1] == first["messages"]
    for key, value in body_fields.items():
        assert second[key] == value
    # only the rest was generated: 15 tokens sent once, then 25
    assert [e["completion_tokens"] for e in fake.ledger.entries] == [15, 25]


def test_many_continuations_chain(tmp_path: Path, fake: FakeServer) -> None:
    prompt = "[[len=60]] [[faults=cut@10,cut@12,stall@5:2,ok]] long"
    (result,) = run(tmp_path, fake, [{"id": "a", "prompt": prompt}], "partial",
                    idle_timeout=0.5)
    assert result["content"] == whole(prompt)
    assert result["continuations"] == 3
    assert sum(e["completion_tokens"] for e in fake.ledger.entries) == 60  # nothing twice


def test_max_tokens_stays_the_limit_of_the_whole_answer(tmp_path: Path,
                                                        fake: FakeServer) -> None:
    prompt = "[[len=80]] [[faults=cut@12]] capped"
    (result,) = run(tmp_path, fake, [{"id": "a", "prompt": prompt, "max_tokens": 30}],
                    "partial")
    first_tokens = sqlite3.connect(tmp_path / "out" / "t" / "run.db").execute(
        "SELECT u.completion_tokens FROM attempts a JOIN usage u ON u.attempt_id = a.id "
        "WHERE a.n = 1").fetchone()[0]
    assert bodies(fake)[1]["max_tokens"] == 30 - first_tokens >= 1
    assert result["finish_reason"] == "length"
    assert whole(prompt).startswith(result["content"])


def test_a_thinking_request_starts_fresh(tmp_path: Path, fake: FakeServer) -> None:
    prompt = "[[len=30]] [[faults=cut@20]] think first"
    (result,) = run(tmp_path, fake, [{"id": "q", "model": "qwq-plus", "prompt": prompt}],
                    "partial")
    second = bodies(fake)[1]
    assert second["messages"][-1]["role"] == "user"  # fresh: no answer sent back
    assert "continuations" not in result and result["reasoning_content"]


def test_a_refused_continuation_falls_back_to_one_fresh_attempt(tmp_path: Path,
                                                                 fake: FakeServer) -> None:
    prompt = "[[len=30]] [[faults=cut@10]] [[nocontinue=1]] refused"
    (result,) = run(tmp_path, fake, [{"id": "a", "prompt": prompt}], "partial")
    assert result["content"] == whole(prompt) and "continuations" not in result
    db = sqlite3.connect(tmp_path / "out" / "t" / "run.db")
    assert db.execute("SELECT status, error_class, mode FROM attempts ORDER BY n").fetchall() == [
        ("error", "connection", "fresh"), ("error", "continuation_refused", "continue"),
        ("done", None, "fresh")]


def test_resume_fresh_starts_over(tmp_path: Path, fake: FakeServer) -> None:
    prompt = "[[len=30]] [[faults=cut@10]] again"
    (result,) = run(tmp_path, fake, [{"id": "a", "prompt": prompt}], "partial",
                    resume="fresh")
    assert result["content"] == whole(prompt) and "continuations" not in result
    assert [e["completion_tokens"] for e in fake.ledger.entries] == [10, 30]


class Chain:
    """The two reads :func:`resumable` makes of a run store, over fixed rows:
    (id, continues, continuations, status, error_class, completion_tokens,
    completion_method, estimated)."""

    def __init__(self, rows: list[tuple[Any, ...]], texts: dict[int, str]) -> None:
        self.rows, self.texts = rows, texts

    def attempt_chain(self, request_id: str, fingerprint: str) -> list[tuple[Any, ...]]:
        return self.rows

    def attempt_text(self, attempt_id: int) -> tuple[str, str]:
        return self.texts[attempt_id], ""


def test_the_tokens_so_far_keep_the_endpoints_figures_apart() -> None:
    """Two segments the endpoint reported, then an attempt killed mid-stream
    whose usage was estimated: only that one's text is left to a tokenizer."""
    chain = Chain([(1, None, 0, "aborted", "length", 30, "exact", 0),
                   (2, 1, 0, "aborted", "length", 30, "derived", 0),
                   (3, 2, 1, "aborted", "interrupted", 7, "static", 1)],
                  {1: "one ", 2: "two ", 3: "three"})
    resume = resumable(chain, "doc", "f", len)  # type: ignore[arg-type]
    assert resume is not None
    assert (resume.text, resume.tokens, resume.reported, resume.estimated_text) == (
        "one two three", 67, 60, "three")
    # a store from before schema 2: no method, its `estimated` flag says; no usage: counted
    old = Chain([(1, None, 0, "aborted", "length", 30, None, 0),
                 (2, 1, 1, "aborted", "interrupted", None, None, None)], {1: "ab", 2: "cde"})
    resume = resumable(old, "doc", "f", len)  # type: ignore[arg-type]
    assert resume is not None
    assert (resume.tokens, resume.reported, resume.estimated_text) == (33, 30, "cde")


def test_detected_forms() -> None:
    assert detect("https://dashscope.aliyuncs.com/compatible-mode/v1", False) == "partial"
    assert detect("https://dashscope-intl.aliyuncs.com/compatible-mode/v1", False) == "partial"
    assert detect("https://api.deepseek.com/beta", False) == "prefix"
    assert detect("https://api.deepseek.com/v1", False) == "none"
    assert detect("http://127.0.0.1:8080/v1", True) == "prefill"
    assert detect("https://api.openai.com/v1", False) == "none"


@pytest.mark.parametrize(("body", "why"), [
    ({"model": "qwen-plus", "extra_body": {"enable_thinking": True}}, "thinking"),
    ({"model": "qwq-plus"}, "thinking"),
    ({"model": "qwen3-32b"}, "thinking"),
    ({"model": "qwen3.5-plus"}, "thinking"),  # thinks unless told not to
    ({"model": "qwen-plus", "tools": [{"type": "function"}]}, "tools"),
    ({"model": "qwen-plus", "n": 2}, "n > 1"),
    ({"model": "qwen-plus", "messages": [{"role": "assistant", "content": "x"}]},
     "its messages end with an assistant message"),
])
def test_what_is_never_continued(body: dict[str, Any], why: str) -> None:
    assert refusal(body) == why
    assert refusal({"model": "qwen3-32b", "extra_body": {"enable_thinking": False}}) is None
    assert refusal({"model": "qwen3.5-flash", "extra_body": {"enable_thinking": False}}) is None
    # Qwen3's 2507 instruct models never think: their answers continue
    assert refusal({"model": "qwen3-235b-a22b-instruct-2507"}) is None
    assert refusal({"model": "qwen3-30b-a3b-thinking-2507"}) == "thinking"


def test_continue_body_keeps_the_request_and_asks_for_the_rest() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "u"}], "max_tokens": 100,
            "extra_body": {"top_k": 5}}
    out = continue_body(body, "so far", "continue_final_message", 40)
    assert out["messages"][-1] == {"role": "assistant", "content": "so far"}
    assert out["max_tokens"] == 60 and body["max_tokens"] == 100
    assert out["extra_body"] == {"top_k": 5, "continue_final_message": True,
                                 "add_generation_prompt": False}
    assert continue_body(body, "x", "partial", 500)["max_tokens"] == 1


@pytest.mark.parametrize(("pieces", "expected"), [
    (["Sure! Here goes: uno, dos, t", "res"], " tres"),  # llama-server: prefix + more
    (["Sure! Here", " goes: uno, dos,", " tres"], " tres"),  # echo spread over deltas
    ([" tres", " cuatro"], " tres cuatro"),  # no echo
    (["Sure! No"], "Sure! No"),  # starts like the prefix, then not: nothing cut
])
def test_echo_filter(pieces: list[str], expected: str) -> None:
    got: list[str] = []
    echo = EchoFilter("Sure! Here goes: uno, dos,", lambda c, r: got.append(c))
    for piece in pieces:
        echo(piece, "")
    assert "".join(got) == expected
