"""SSE parsing: the wire shapes real servers send, split at awkward places."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from batchgen.errors import ModerationError, RequestFatalError, TransientError
from batchgen.testing.fakeserver import FakeServer
from batchgen.tokens.usage import from_report
from batchgen.wire.chunks import read_event
from batchgen.wire.stream import StreamResult, _consume, wire_body
from batchgen.wire.transport import Read, Response
from tests.helpers import CANARY, Body


def consume(raw: bytes, split: int | None = None) -> tuple[str, str, StreamResult]:
    pieces = [raw] if split is None else [raw[i:i + split] for i in range(0, len(raw), split)]
    content: list[str] = []
    reasoning: list[str] = []

    def on_text(c: str, r: str) -> None:
        content.append(c)
        reasoning.append(r)

    result = StreamResult()
    asyncio.run(_consume(Body(pieces), on_text, result, lambda s: s))
    return "".join(content), "".join(reasoning), result


def sse(*objs: object, done: bool = True, sep: bytes = b"\n\n", prefix: bytes = b"data: ") -> bytes:
    out = b"".join(prefix + json.dumps(o, ensure_ascii=False).encode() + sep for o in objs)
    return out + (prefix + b"[DONE]" + sep if done else b"")


def chunk(content: str | None = None, reasoning: str | None = None,
          finish: str | None = None, usage: object = None, key: str = "reasoning_content"
          ) -> dict[str, object]:
    delta: dict[str, object] = {"content": content}
    if reasoning is not None:
        delta[key] = reasoning
    return {"choices": [{"delta": delta, "finish_reason": finish, "index": 0,
                         "logprobs": None}],
            "object": "chat.completion.chunk", "usage": usage, "model": "qwen-plus",
            "id": "chatcmpl-1"}


USAGE = {"prompt_tokens": 22, "completion_tokens": 17, "total_tokens": 39,
         "prompt_tokens_details": {"cached_tokens": 5}}
DASHSCOPE = sse(
    chunk("", None), chunk("你好"), chunk("！我是通义千问"), chunk("", finish="stop"),
    {"choices": [], "object": "chat.completion.chunk", "usage": USAGE, "model": "qwen-plus",
     "id": "chatcmpl-1"},
)


@pytest.mark.parametrize("split", [None, 1, 7, 64])
def test_dashscope_stream_in_any_split(split: int | None) -> None:
    content, reasoning, result = consume(DASHSCOPE, split)
    assert content == "你好！我是通义千问"
    assert reasoning == ""
    assert result.finish_reason == "stop" and result.done_marker
    assert result.usage == USAGE


def test_qwq_reasoning_then_content() -> None:
    raw = sse(chunk(None, "嗯，"), chunk(None, "让我想想"), chunk("答案", None),
              chunk("", finish="stop"),
              {"choices": [], "usage": {**USAGE, "completion_tokens_details":
                                        {"reasoning_tokens": 9}}})
    content, reasoning, result = consume(raw)
    assert (content, reasoning) == ("答案", "嗯，让我想想")
    usage = from_report(result.usage, {"messages": []}, content, reasoning)
    assert (usage.reasoning_tokens, usage.cached_tokens, usage.estimated) == (9, 5, False)


def test_vllm_reasoning_field_crlf_and_no_space_after_colon() -> None:
    raw = sse(chunk(None, "think", key="reasoning"), chunk("ok", finish="stop"),
              sep=b"\r\n\r\n", prefix=b"data:")
    content, reasoning, result = consume(raw, split=5)
    assert (content, reasoning, result.finish_reason) == ("ok", "think", "stop")


def test_usage_beside_non_empty_choices_is_kept() -> None:
    raw = sse(chunk("a"), chunk("b", finish="stop", usage={"prompt_tokens": 3,
                                                           "completion_tokens": 2,
                                                           "total_tokens": 5}))
    _, _, result = consume(raw)
    assert result.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_comments_event_ids_and_multiline_data() -> None:
    raw = (b": keep-alive\n\nid: 1\nretry: 100\ndata: {\"choices\":[{\"delta\":\n"
           b"data: {\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")
    content, _, result = consume(raw)
    assert content == "x" and result.finish_reason == "stop"


def test_missing_done_and_trailing_newline_still_complete() -> None:
    raw = sse(chunk("a"), chunk("", finish="length"), done=False).rstrip(b"\n")
    content, _, result = consume(raw)
    assert content == "a" and result.finish_reason == "length" and not result.done_marker


def test_malformed_chunk_is_transient() -> None:
    raw = sse(chunk("a"))[:-20] + b"\n\n" + sse(chunk("b"))
    with pytest.raises(TransientError) as info:
        consume(raw)
    assert info.value.error_class == "malformed_chunk"


def test_error_event_after_content() -> None:
    raw = sse(chunk("some text"), done=False) + sse(
        {"error": {"code": "data_inspection_failed", "message": "Output data may contain "
                   "inappropriate content.", "type": "data_inspection_failed"}}, done=False)
    with pytest.raises(ModerationError):
        consume(raw)
    transient = sse(chunk("x"), done=False) + sse(
        {"error": {"code": "internal_error", "message": "try again"}}, done=False)
    with pytest.raises(TransientError):
        consume(transient)
    typed = b"event: error\ndata: {\"message\": \"overloaded\"}\n\n"
    with pytest.raises(TransientError):
        consume(typed)


def test_wire_body_passes_every_parameter_through() -> None:
    body = {"model": "qwen-plus", "messages": [{"role": "user", "content": "x"}],
            "temperature": 0.2, "response_format": {"type": "json_object"},
            "stream_options": {"include_usage": False},
            "extra_body": {"enable_thinking": True, "thinking_budget": 50}}
    # extra_body is merged in as is; streaming with usage is batchgen's to set
    assert wire_body(body) == {
        "model": "qwen-plus", "messages": [{"role": "user", "content": "x"}],
        "temperature": 0.2, "response_format": {"type": "json_object"},
        "enable_thinking": True, "thinking_budget": 50, "stream": True,
        "stream_options": {"include_usage": True}}
    assert "extra_body" in body and body["stream_options"] == {"include_usage": False}


def test_the_wire_body_is_the_stored_body(tmp_path: Path, fake: FakeServer) -> None:
    from batchgen import load_job, run_job
    from tests.helpers import write_job

    messages = [{"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    job = write_job(tmp_path / "job.yaml", fake, [{"id": "a", "messages": messages,
                                                   "temperature": 0.3, "seed": 7,
                                                   "extra_body": {"top_k": 5}}])
    run_job(load_job(job))
    (entry,) = fake.ledger.entries
    assert entry["body"] == {"model": "qwen-plus", "messages": messages, "temperature": 0.3,
                             "seed": 7, "top_k": 5, "stream": True,
                             "stream_options": {"include_usage": True}}


def test_done_without_finish_reason_is_complete() -> None:
    content, _, result = consume(sse(chunk("a"), {"choices": [], "usage": USAGE}))
    assert content == "a" and result.finish_reason is None
    assert result.done_marker and result.complete


def test_an_error_beside_choices_after_the_finish_is_an_error() -> None:
    raw = sse(chunk("text", finish="length"),
              {"error": {"code": 400, "message": "Token limit reached"},
               "choices": [{"delta": {"content": ""}, "index": 0}], "usage": USAGE})
    with pytest.raises(RequestFatalError) as info:
        consume(raw)
    assert info.value.in_stream and info.value.error_class == "http_400"
    body = Body([raw])
    result = StreamResult()
    with pytest.raises(RequestFatalError):
        asyncio.run(_consume(body, lambda c, r: None, result, lambda s: s))
    assert result.usage == USAGE  # the error chunk's usage is kept: that attempt was billed


@pytest.mark.parametrize("eol", [b"\r", b"\n\r", b"\r\n"])
def test_every_line_ending_reads_every_event(eol: bytes) -> None:
    raw = b"".join(b"data: " + json.dumps(c).encode() + eol + eol
                   for c in (chunk("Hello"), chunk(" the"), chunk(" end", finish="stop")))
    for split in (None, 1, 3):
        content, _, result = consume(raw, split)
        assert content == "Hello the end" and result.finish_reason == "stop"


def test_content_parts_thinking_and_reasoning_details() -> None:
    parts = {"choices": [{"delta": {"content": [
        {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
        {"type": "text", "text": "Hi"}]}, "index": 0}]}
    details = {"choices": [{"delta": {"content": "", "reasoning_details": [
        {"type": "reasoning.text", "text": " more"},
        {"type": "reasoning.encrypted", "data": "xx"}]}, "index": 0}]}
    content, reasoning, _ = consume(sse(parts, details, chunk("", finish="stop")))
    assert (content, reasoning) == ("Hi", "hmm more")


@pytest.mark.parametrize("bad", [42, {"x": 1}, [1, 2]])
def test_content_of_the_wrong_type_is_a_malformed_chunk(bad: object) -> None:
    raw = sse({"choices": [{"delta": {"content": bad}, "index": 0}]})
    with pytest.raises(TransientError) as info:
        consume(raw)
    assert info.value.error_class == "malformed_chunk"


def test_unparseable_usage_is_ignored() -> None:
    _, _, result = consume(sse(chunk("a", finish="stop"), {"choices": [], "usage": "lots"}))
    assert result.complete and result.usage is None


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_body_is_read_though_none_was_asked_for(encoding: str) -> None:
    import gzip
    import zlib

    packed = gzip.compress(DASHSCOPE) if encoding == "gzip" else zlib.compress(DASHSCOPE)
    pieces = [packed[i:i + 7] for i in range(0, len(packed), 7)]
    got: list[str] = []
    result = StreamResult()
    asyncio.run(_consume(Body(pieces, {"content-encoding": encoding}),
                         lambda c, r: got.append(c), result, lambda s: s))
    assert "".join(got) == "你好！我是通义千问" and result.usage == USAGE


def test_an_unknown_encoding_fails_the_attempt() -> None:
    with pytest.raises(TransientError) as info:
        asyncio.run(_consume(Body([b"x"], {"content-encoding": "br"}), lambda c, r: None,
                             StreamResult(), lambda s: s))
    assert info.value.error_class == "unsupported_encoding"


def _run_and_check_plain_texts(tmp_path: Path, fake: FakeServer,
                               prompts: list[dict[str, str]]) -> None:
    """Run the prompts as a job; every answer is whole and the fake server's plan."""
    from batchgen import load_job, run_job
    from batchgen.testing.fakeserver import Config, plan_for
    from tests.helpers import read_results, write_job

    job = write_job(tmp_path / "job.yaml", fake, prompts)
    summary = run_job(load_job(job))
    assert summary.failed == 0 and summary.done == len(prompts)
    for prompt, result in zip(prompts, read_results(tmp_path / "out" / "t"), strict=True):
        body = {"model": "qwen-plus",
                "messages": [{"role": "user", "content": prompt["prompt"]}]}
        assert result["content"] == "".join(plan_for(body, 1, Config()).tokens)


def test_the_transport_reads_whole_and_cut_streams_with_a_connection_to_pause(
        tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole and cut streams read alike, and every stream has the connection
    the gathered reads pause (public asyncio methods): if aiohttp ever stops
    handing it over, the fast path would vanish silently — this fails instead."""
    from batchgen.wire import stream

    direct: list[bool] = []
    real = stream._holder

    def spy(http: Response) -> object:
        found = real(http)
        direct.append(found is not None and all(
            callable(getattr(found, name, None)) for name in stream._FLOW))
        return found

    monkeypatch.setattr(stream, "_holder", spy)
    prompts = [{"id": "whole", "prompt": "[[len=30]] plain"},
               {"id": "cut", "prompt": "[[len=30]] [[faults=cut@12]] dropped"}]
    _run_and_check_plain_texts(tmp_path, fake, prompts)
    # continuation is "none" on this URL: the cut answer is sent again from its start
    assert sorted(e["completion_tokens"] for e in fake.ledger.entries) == [12, 30, 30]
    assert direct and set(direct) == {True}


def test_paced_streams_are_read_in_gathered_pieces_and_lose_nothing(
        tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream past COALESCE_AFTER is read at most every so often (its
    socket paused in between): fewer reads than chunks, the same text."""
    from batchgen.wire import stream

    monkeypatch.setattr(stream, "COALESCE_AFTER", 0.0)
    monkeypatch.setattr(stream, "COALESCE_SHARE", 1.0)  # a window of 50 ms from the start
    monkeypatch.setattr(stream, "COALESCE_FOR", 0.05)
    reads: list[int] = []
    real = stream._reader

    def counted(http: Response, result: StreamResult) -> Read:
        read = real(http, result)

        async def count() -> bytes:
            piece = await read()
            reads.append(len(piece))
            return piece

        return count

    monkeypatch.setattr(stream, "_reader", counted)
    prompts = [{"id": f"p{i}", "prompt": f"[[len=40]][[delay=0.01]] paced {i}"} for i in range(3)]
    _run_and_check_plain_texts(tmp_path, fake, prompts)
    chunks = 3 * (40 + 3)  # role, tokens, finish, usage
    assert len(reads) < chunks / 2, (len(reads), chunks)


def test_a_stream_slower_than_the_window_is_read_as_it_comes(
        tmp_path: Path, fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pausing a stream only pays where several chunks gather in a window: one
    whose chunks come 30 ms apart (under 2 in a 50 ms window) is never paused,
    while one 5 ms apart (10 a window) is; both lose nothing."""
    from batchgen.wire import stream

    monkeypatch.setattr(stream, "COALESCE_AFTER", 0.0)
    monkeypatch.setattr(stream, "COALESCE_SHARE", 1.0)
    monkeypatch.setattr(stream, "COALESCE_FOR", 0.05)
    gathers: list[float] = []
    real = stream._gather

    async def counted(hold: object, seconds: float) -> None:
        gathers.append(seconds)
        await real(hold, seconds)

    monkeypatch.setattr(stream, "_gather", counted)
    for name in ("slow", "fast"):
        (tmp_path / name).mkdir()
    _run_and_check_plain_texts(tmp_path / "slow", fake, [
        {"id": f"s{i}", "prompt": f"[[len=20]][[delay=0.03]] slow {i}"} for i in range(2)])
    assert gathers == []
    _run_and_check_plain_texts(tmp_path / "fast", fake, [
        {"id": f"f{i}", "prompt": f"[[len=40]][[delay=0.005]] fast {i}"} for i in range(2)])
    assert gathers


class _Transport:
    def __init__(self, closing: bool = False) -> None:
        self.calls: list[str] = []
        self.reading = True
        self.closing = closing

    def pause_reading(self) -> None:
        self.calls.append("pause")
        self.reading = False

    def resume_reading(self) -> None:
        self.calls.append("resume")
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closing


def test_gather_pauses_the_socket_only_where_aiohttp_holds_no_pause_of_its_own() -> None:
    from batchgen.wire.stream import _gather

    free = _Transport()
    asyncio.run(_gather(free, 0.001))
    assert free.calls == ["pause", "resume"] and free.reading
    held = _Transport()
    held.reading = False  # aiohttp's flow control paused it (a full buffer)
    asyncio.run(_gather(held, 0.001))
    assert held.calls == []  # aiohttp's flow control owns this pause
    closing = _Transport(closing=True)
    asyncio.run(_gather(closing, 0.001))
    assert closing.calls == []  # a closing socket is left alone

    class Closes(_Transport):
        def pause_reading(self) -> None:
            super().pause_reading()
            self.closing = True  # the connection closes during the pause

    closed = Closes()
    asyncio.run(_gather(closed, 0.001))
    assert closed.calls == ["pause"]  # a closed socket is not woken again
    asyncio.run(_gather(None, 0.001))  # the connection went: a sleep, nothing else


def test_a_malformed_chunk_is_shown_without_any_part_of_the_key() -> None:
    """The message shows the chunk's first 80 characters; the key is taken out
    before that cut, so one that straddles it leaves no prefix behind."""
    data = b'{"choices": "' + b"x" * 60 + b" " + CANARY.encode() + b" broken"
    with pytest.raises(TransientError) as info:
        read_event(data, b"data: " + data, StreamResult(), lambda s: s.replace(CANARY, "***"))
    assert info.value.error_class == "malformed_chunk"
    assert CANARY[:4] not in str(info.value) and "***" in str(info.value)
