"""What one chat-completion chunk says, in every shape real providers send.

:class:`ChunkReader` takes the data of one SSE event at a time and keeps what
an attempt needs: text, reasoning, tool calls, the ``finish_reason``, usage.

- ``delta.content`` is a string, or (Mistral's thinking models) a list of
  parts: ``text`` parts are content, ``thinking`` parts are reasoning.
- Reasoning comes as ``delta.reasoning_content`` (DashScope, DeepSeek, xAI,
  Z.AI, llama.cpp), ``delta.reasoning`` (vLLM, Groq, OpenRouter) or only as
  ``delta.reasoning_details`` text / summary items (OpenRouter, Snowflake);
  one of them, never two copies of the same text. Encrypted details carry no
  text.
- ``delta.tool_calls`` fragments are assembled by ``index``: the id, type and
  name arrive once, the arguments in pieces.
- Usage arrives in a ``choices: []`` chunk or beside the choices; Groq's
  compound systems send it only as ``x_groq.usage``, which is used when the
  chunk has none at the top. A usage field that is not an object is ignored.
- An ``error`` field in any event, or an event named ``error``, is an error,
  whatever else the event holds and whatever came before it. Its usage, when
  it carries one, is kept: that attempt was billed.

Anything else that does not fit — a chunk that is not JSON, content that is a
number — raises a :class:`TransientError` (``malformed_chunk``): it fails this
attempt, which is recorded and retried like any other; it never reaches the
journal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchgen.errors import TransientError
from batchgen.jsonfast import (
    fast_loads as _fast_loads,  # a third of the standard library's cost per chunk
)
from batchgen.wire.retry import Redact, from_payload

_decode = json.JSONDecoder().raw_decode  # the careful path, for what orjson refuses
_SPACE = frozenset(" \t\n\r")


@dataclass
class StreamResult:
    """What one attempt received. Complete at its ``finish_reason`` or ``[DONE]``."""

    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    done_marker: bool = False
    chunks: int = 0
    response_id: str | None = None
    request_id: str | None = None
    ratelimit: dict[str, str] = field(default_factory=dict)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    # a speech answer's audio pieces (delta.audio.data, base64), given as they arrive
    on_audio: Callable[[str], None] | None = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        """The server said the answer is whole: a ``finish_reason``, or the
        ``[DONE]`` marker (Snowflake Cortex sends no ``finish_reason``)."""
        return self.finish_reason is not None or self.done_marker

    def tool_call_list(self) -> list[dict[str, Any]]:
        return [self.tool_calls[i] for i in sorted(self.tool_calls)]


def _malformed(result: StreamResult, what: str) -> TransientError:
    return TransientError(f"chunk {result.chunks + 1} {what}", error_class="malformed_chunk",
                          provider_request_id=result.request_id)


def _parts(parts: list[Any], result: StreamResult) -> tuple[str, str]:
    """Mistral-style content parts -> (content, reasoning)."""
    content: list[str] = []
    reasoning: list[str] = []
    for part in parts:
        if isinstance(part, str):
            content.append(part)
            continue
        if not isinstance(part, dict):
            raise _malformed(result, "has a content part that is not an object")
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if isinstance(text, str):
                content.append(text)
        elif kind == "thinking":
            thinking = part.get("thinking")
            if isinstance(thinking, str):
                reasoning.append(thinking)
            elif isinstance(thinking, list):
                reasoning += [t["text"] for t in thinking
                              if isinstance(t, dict) and isinstance(t.get("text"), str)]
    return "".join(content), "".join(reasoning)


def _details(details: Any) -> str:
    """Readable text of ``reasoning_details`` (encrypted items have none)."""
    if not isinstance(details, list):
        return ""
    out = []
    for item in details:
        if isinstance(item, dict):
            text = item.get("text") if item.get("type") != "reasoning.summary" else item.get(
                "summary")
            if isinstance(text, str):
                out.append(text)
    return "".join(out)


def _merge_tool_calls(result: StreamResult, calls: Any) -> None:
    if not isinstance(calls, list):
        raise _malformed(result, "has tool_calls that are not a list")
    for call in calls:
        if not isinstance(call, dict):
            raise _malformed(result, "has a tool call that is not an object")
        index = call.get("index", len(result.tool_calls))
        if not isinstance(index, int):
            raise _malformed(result, "has a tool call without an integer index")
        slot = result.tool_calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if isinstance(call.get("id"), str):
            slot["id"] = call["id"]
        if isinstance(call.get("type"), str):
            slot["type"] = call["type"]
        function = call.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                slot["function"]["name"] += function["name"]
            if isinstance(function.get("arguments"), str):
                slot["function"]["arguments"] += function["arguments"]


def read_event(data: bytes, event: bytes, result: StreamResult, redact: Redact
               ) -> tuple[str, str] | None:
    """Interpret one SSE event. Returns (content, reasoning) when it carried text,
    ``None`` otherwise; sets ``result.done_marker`` at ``[DONE]``; raises an
    :class:`~batchgen.errors.AttemptError` for error events (``in_stream``
    set) and malformed chunks."""
    if data[:6] == b"[DONE]":
        result.done_marker = True
        return None
    try:
        obj: Any = _fast_loads(data)
    except ValueError:  # not JSON to orjson: the careful path decides (NaN, lone surrogates)
        obj = None
    if obj is None:
        obj = _careful(data, result, redact)
        if obj is None:
            return None
    if not isinstance(obj, dict):
        raise _malformed(result, "is not a JSON object")
    return _read_object(obj, event, result, redact)


def _careful(data: bytes, result: StreamResult, redact: Redact) -> Any:
    """The standard library's reading: whatever it accepts is read as the SDK
    reads it; ``None`` for an event that holds only whitespace."""
    try:
        text = data.decode()
        start = 0
        if text[:1] in _SPACE:  # an empty first `data:` line: the JSON follows a newline
            start = len(text) - len(text.lstrip())
            if start == len(text):
                return None  # only whitespace: nothing was said
        obj, end = _decode(text, start)
        if end != len(text) and text[end:].strip():
            raise ValueError("trailing data")
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        shown = redact(data.decode("utf-8", "replace"))[:80]  # no half key left by the cut
        raise _malformed(result, f"is not valid JSON: {shown!r}") from None
    if obj is None:  # JSON null: not an object
        raise _malformed(result, "is not a JSON object")
    return obj


def _read_object(obj: dict[str, Any], event: bytes, result: StreamResult, redact: Redact
                 ) -> tuple[str, str] | None:
    result.chunks += 1
    if result.response_id is None and isinstance(obj.get("id"), str):
        result.response_id = obj["id"]
    usage = obj.get("usage")
    if usage and isinstance(usage, dict):
        result.usage = usage
    elif "x_groq" in obj:
        groq = obj["x_groq"]
        if isinstance(groq, dict) and isinstance(groq.get("usage"), dict) and groq["usage"]:
            result.usage = groq["usage"]
    if obj.get("error") or event == b"error":
        err = from_payload(None, obj if obj.get("error") else {"error": obj},
                           request_id=result.request_id or _str(obj.get("request_id")),
                           redact=redact)
        err.in_stream = True
        raise err
    choices = obj.get("choices")
    if not choices:
        return None
    if not isinstance(choices, list):
        raise _malformed(result, "has choices that are not a list")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise _malformed(result, "has a choice that is not an object")
    finish = choice.get("finish_reason")
    if finish and isinstance(finish, str):
        result.finish_reason = finish
    delta = choice.get("delta")
    if not delta:
        return None
    if not isinstance(delta, dict):
        raise _malformed(result, "has a delta that is not an object")
    content = delta.get("content")
    reasoning: Any = delta.get("reasoning_content") or delta.get("reasoning")
    if content is None:
        content = ""
    elif not isinstance(content, str):
        if not isinstance(content, list):
            raise _malformed(result, f"has delta.content that is a {type(content).__name__}")
        content, thought = _parts(content, result)
        reasoning = (reasoning or "") + thought if isinstance(reasoning or "", str) else reasoning
    if reasoning:
        if not isinstance(reasoning, str):
            raise _malformed(result, f"has reasoning that is a {type(reasoning).__name__}")
    elif "reasoning_details" in delta:
        reasoning = _details(delta["reasoning_details"])
    calls = delta.get("tool_calls")
    if calls:
        _merge_tool_calls(result, calls)
    audio = delta.get("audio")
    if isinstance(audio, dict):  # a speech answer (Qwen-Omni, gpt-4o-audio)
        data = audio.get("data")
        if isinstance(data, str) and data and result.on_audio is not None:
            result.on_audio(data)
        transcript = audio.get("transcript")
        if not content and isinstance(transcript, str):
            content = transcript  # the text of OpenAI's audio answers comes only so
    if content or reasoning:
        return content, reasoning or ""
    return None


def read_whole(body: bytes, result: StreamResult, redact: Redact) -> tuple[str, str] | None:
    """A body that held no event at all: a server (or a gateway before it) that
    ignored ``stream`` and answered with one ``chat.completion`` object, or with
    one error object. Its answer is read as one chunk holding the whole
    message, so it is kept (it was paid for) instead of being asked for again;
    its error is raised as an error event would be. Returns ``None`` when the
    body is neither (the attempt then ends as a stream cut short)."""
    try:
        obj: Any = _fast_loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    if obj.get("error"):
        return _read_object(obj, b"", result, redact)  # raises, as an error event does
    choices = obj.get("choices")
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)
            and isinstance(choices[0].get("message"), dict)):
        return None
    choice = choices[0]
    chunk = {**obj, "choices": [{"index": 0, "delta": choice["message"],
                                 "finish_reason": choice.get("finish_reason")}]}
    text = _read_object(chunk, b"", result, redact)
    result.done_marker = True  # a body that ended whole holds the whole answer
    return text


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
