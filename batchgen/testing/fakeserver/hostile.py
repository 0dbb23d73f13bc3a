"""Faults of a server that misbehaves on purpose (issue 12's campaign).

Each is a fault name for ``[[faults=...]]``:

- ``redirect:CODE``   a 301/302/307/308 to another origin (``location`` header)
- ``ansi``            a 400 whose message holds terminal escape sequences
- ``badcontent@N:K``  after N chunks, ``delta.content`` that is a number (K=num),
                      a list of numbers (K=list) or an object (K=obj)
- ``badusage``        a whole answer, then ``"usage": "lots"``
- ``bigline:MB``      one ``data:`` line of MB MiB, sent in 64 KiB writes
- ``gzipbomb:MB``     ``content-encoding: gzip``: one event of MB MiB, compressed
                      to a few KB on the wire
- ``keepalive@N``     after N chunks, a ``: ping`` comment every 50 ms, forever
- ``whole:KIND``      a 200 that is no event stream (a server or gateway that
                      ignores ``stream``): KIND ``json``, the whole
                      ``chat.completion`` (reasoning, content, usage) as one
                      ``application/json`` body; ``bare``, the same without
                      finish reason or usage; ``error``, a moderation error
                      object; ``html``, a login page

``[[header=Name:Value|Name2:Value2]]`` adds response headers to any reply
(``Retry-After: 1.5s``, ``x-ratelimit-reset-requests: 1.2.3s``).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from typing import Any

from batchgen.testing.fakeserver.http11 import chunked, head

FAULTS = frozenset({"redirect", "ansi", "badcontent", "badusage", "bigline", "gzipbomb",
                    "keepalive", "whole"})


def content_chunk(content: Any, finish: str | None = None) -> bytes:
    obj = {"choices": [{"delta": {"content": content}, "finish_reason": finish, "index": 0}],
           "object": "chat.completion.chunk", "model": "qwen-plus", "id": "chatcmpl-hostile"}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


STREAM = {"content-type": "text/event-stream", "transfer-encoding": "chunked",
          "x-request-id": "hostile"}
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


async def reply(fault: str, tokens: list[str], extra: dict[str, str],
                writer: asyncio.StreamWriter, entry: dict[str, Any]) -> bool:
    """Answer with ``fault``; True to keep the connection."""
    name, _, arg = fault.partition("@")
    name, _, opt = name.partition(":")
    if name == "redirect":
        entry["status"] = int(opt)
        writer.write(head(int(opt), {**extra, "location": "http://127.0.0.2:9/steal/v1/chat",
                                     "content-length": "0"}))
        await writer.drain()
        return True
    if name == "ansi":
        entry["status"] = 400
        body = json.dumps({"error": {"code": "bad", "type": "bad", "message":
                                     "refused \x1b[31m\x1b]0;owned\x07red\x1b[0m text"}}).encode()
        writer.write(head(400, {**extra, "content-type": "application/json",
                                "content-length": str(len(body))}) + body)
        await writer.drain()
        return True
    if name == "whole":
        kind, body = _whole(opt, tokens)
        writer.write(head(200, {**extra, "content-type": kind, "x-request-id": "hostile",
                                "content-length": str(len(body))}) + body)
        await writer.drain()
        return True
    writer.write(head(200, {**STREAM, **extra, **(
        {"content-encoding": "gzip"} if name == "gzipbomb" else {})}))
    if name == "gzipbomb":
        size = int(float(opt) * 1024 * 1024)
        event = b'data: {"choices":[{"delta":{"content":"' + b"a" * size + b'"},"index":0}]}\n\n'
        body = gzip.compress(event, compresslevel=9)
        entry["wire_bytes"] = len(body)
        for i in range(0, len(body), 16384):
            writer.write(chunked(body[i:i + 16384]))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return False
    if name == "bigline":
        size = int(float(opt) * 1024 * 1024)
        writer.write(chunked(b'data: {"choices":[{"delta":{"content":"'))
        filler = b"b" * 65536
        for _ in range(size // len(filler)):
            writer.write(chunked(filler))
            await writer.drain()
        writer.write(chunked(b'"},"index":0}]}\n\n') + b"0\r\n\r\n")
        await writer.drain()
        return False
    n = int(arg.split(":")[0]) if arg else 0
    for piece in tokens[:n]:
        writer.write(chunked(content_chunk(piece)))
    await writer.drain()
    if name == "badcontent":
        bad: Any = {"num": 42, "list": [1, 2], "obj": {"text": "x"}}[arg.split(":")[1]]
        writer.write(chunked(content_chunk(bad)))
    elif name == "badusage":
        writer.write(chunked(content_chunk("".join(tokens[n:]), finish="stop")))
        usage = {"choices": [], "usage": "lots", "id": f"chatcmpl-{uuid.uuid4()}"}
        writer.write(chunked(b"data: " + json.dumps(usage).encode() + b"\n\n"))
        writer.write(chunked(b"data: [DONE]\n\n"))
    elif name == "keepalive":
        while True:
            writer.write(chunked(b": ping\n\n"))
            await writer.drain()
            await asyncio.sleep(0.05)
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


def _whole(kind: str, tokens: list[str]) -> tuple[str, bytes]:
    """A non-streamed reply: its content type and body."""
    if kind == "html":
        return "text/html; charset=utf-8", b"<!DOCTYPE html><html><body>Sign in</body></html>"
    if kind == "error":
        error = {"code": "data_inspection_failed", "type": "data_inspection_failed",
                 "message": "Output data may contain inappropriate content."}
        return "application/json", json.dumps({"error": error}).encode()
    if kind == "bare":
        answer: dict[str, Any] = {
            "choices": [{"message": {"content": "".join(tokens)}, "finish_reason": None}]}
        return "application/json", json.dumps(answer).encode()
    message = {"role": "assistant", "content": "".join(tokens), "reasoning_content": "thought"}
    answer = {"id": "chatcmpl-whole", "object": "chat.completion", "model": "qwen-plus",
              "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": len(tokens) + 1,
                        "total_tokens": len(tokens) + 6}}
    return "application/json", json.dumps(answer).encode()
