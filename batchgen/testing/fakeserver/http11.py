"""HTTP/1.1 framing for the fake API: a request read off a connection, a
response head and body written, chunked transfer encoding both ways.

What the server answers is decided elsewhere (``server.py``, ``hostile.py``);
this module only puts it on the wire.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any


async def read_request(reader: asyncio.StreamReader
                       ) -> tuple[str, str, dict[str, str], bytes] | None:
    """The next request on a kept-alive connection: method, path, headers
    (lower-case names) and body; ``None`` once the client closed it."""
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        raw = await read_chunked(reader)
    else:
        length = int(headers.get("content-length", "0"))
        raw = await reader.readexactly(length) if length else b""
    return method, path, headers, raw


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A request body in chunked transfer encoding (as aiohttp sends uploads)."""
    body = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readline()


def chunked(data: bytes) -> bytes:
    """One chunk of a chunked response body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def head(status: int, headers: dict[str, str]) -> bytes:
    """A response's status line and headers, up to the blank line."""
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send(writer: asyncio.StreamWriter, status: int, data: bytes, ctype: str,
               extra_headers: dict[str, str] | None = None) -> None:
    """A whole response with a content length (and a request id, as providers send)."""
    writer.write(head(status, {"content-type": ctype, "content-length": str(len(data)),
                               "x-request-id": str(uuid.uuid4()), **(extra_headers or {})})
                 + data)
    await writer.drain()


async def send_json(writer: asyncio.StreamWriter, status: int, payload: Any,
                    extra_headers: dict[str, str] | None = None) -> None:
    await send(writer, status, json.dumps(payload).encode(), "application/json",
               extra_headers)


async def send_error(writer: asyncio.StreamWriter, status: int, code: str, message: str,
                     kind: str, extra_headers: dict[str, str] | None = None) -> None:
    """An error body shaped as OpenAI-compatible providers shape it."""
    payload = {"error": {"message": message, "type": kind, "param": None, "code": code},
               "request_id": str(uuid.uuid4())}
    await send_json(writer, status, payload, extra_headers)
