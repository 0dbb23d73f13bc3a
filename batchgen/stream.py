"""One streamed attempt: send through the openai SDK, read raw SSE, emit text.

The SDK builds a pydantic object per chunk when iterated the usual way, which
is most of a client's CPU. Instead this module opens the request with
``with_streaming_response`` (the SDK's raw streaming-response API), reads the
body's bytes, splits SSE lines itself and parses each ``data:`` payload with
:func:`json.loads`. It captures ``delta.content``, ``delta.reasoning_content``
(DashScope, DeepSeek, llama.cpp) and ``delta.reasoning`` (vLLM), the
``finish_reason``, and usage from the final ``choices: []`` chunk or from any
chunk that carries it.

This module is the only one that imports ``openai``, and it does so lazily:
a fully skipped re-run never pays for the import.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import TransientError
from .retry import Redact, from_payload

if TYPE_CHECKING:
    from openai import AsyncOpenAI

# Streams older than COALESCE_AFTER seconds read at most every COALESCE_FOR s.
COALESCE_AFTER = 1.0
COALESCE_FOR = 0.05

_decode = json.JSONDecoder().raw_decode  # half the cost of json.loads(bytes) per chunk

# After the finish_reason and usage have arrived, wait this long for [DONE]:
# nothing that matters can follow, and a server that goes quiet instead of
# closing must not hold a finished request.
DONE_GRACE = 1.0
RATELIMIT_HEADERS = (
    "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
)

OnText = Callable[[str, str], None]


@dataclass
class StreamResult:
    """What one attempt received. Complete when ``finish_reason`` is set."""

    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    done_marker: bool = False
    chunks: int = 0
    response_id: str | None = None
    request_id: str | None = None
    ratelimit: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.finish_reason is not None


def make_client(
    base_url: str,
    api_key: str,
    *,
    connect_timeout: float,
    idle_timeout: float,
    max_connections: int,
) -> AsyncOpenAI:
    """An async client with the SDK's retries off and an idle (read) timeout.

    The transport is aiohttp where the SDK supports it (``DefaultAioHttpClient``):
    it costs about 40% less CPU per chunk and per request than httpx here
    (``python -m bench``). ``BATCHGEN_HTTP=httpx`` picks httpx.
    """
    import openai

    limits_type = type(openai.DEFAULT_CONNECTION_LIMITS)
    limits = limits_type(
        max_connections=max(max_connections, 16),
        max_keepalive_connections=max(max_connections, 16),
        keepalive_expiry=30.0,
    )
    timeout = openai.Timeout(connect=connect_timeout, read=idle_timeout, write=60.0, pool=None)
    http_client: Any = None
    if os.environ.get("BATCHGEN_HTTP", "aiohttp") == "aiohttp":
        try:
            http_client = openai.DefaultAioHttpClient(limits=limits, timeout=timeout)
        except (AttributeError, ImportError, RuntimeError):
            http_client = None  # an SDK without aiohttp support, or aiohttp missing
    if http_client is None:
        http_client = openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=timeout,
        http_client=http_client,
    )


def request_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """SDK keyword arguments for a stored body.

    Everything but the model travels in ``extra_body``, which the SDK sends
    as given and lets take precedence over its own arguments: any parameter
    passes through unchanged, and the SDK skips its per-request walk over the
    typed message structure (about a millisecond of CPU a request). The
    ``messages`` argument is still given — empty — because ``create`` requires it.
    """
    extra: dict[str, Any] = {k: v for k, v in body.items() if k != "model"}
    extra.update(extra.pop("extra_body", None) or {})
    extra["stream"] = True
    extra["stream_options"] = {"include_usage": True}
    return {
        "model": body["model"],
        "messages": [],
        "stream": True,
        "stream_options": {"include_usage": True},
        "extra_body": extra,
    }


async def stream_attempt(
    client: AsyncOpenAI,
    body: dict[str, Any],
    on_text: OnText,
    result: StreamResult,
    *,
    redact: Redact,
    on_open: Callable[[], None] | None = None,
) -> StreamResult:
    """Run one streamed request to its end, feeding text to ``on_text``.

    Raises whatever the transport raises (``retry.classify`` sorts it out),
    or a :class:`TransientError` for protocol failures seen here. When the
    ``finish_reason`` already arrived, a later failure does not matter: the
    generation is complete and retrying it would pay for it twice.
    """
    try:
        async with client.chat.completions.with_streaming_response.create(
            **request_kwargs(body)
        ) as response:
            headers = response.http_response.headers
            result.request_id = headers.get("x-request-id")
            result.ratelimit = {k: headers[k] for k in RATELIMIT_HEADERS if k in headers}
            if on_open is not None:
                on_open()
            await _consume(response.http_response, on_text, result, redact)
    except Exception:
        if result.complete:
            return result
        raise
    if not result.complete:
        raise TransientError(
            f"the stream ended after {result.chunks} chunks without a finish_reason",
            error_class="incomplete_stream",
            provider_request_id=result.request_id,
        )
    return result


async def _consume(http: Any, on_text: OnText, result: StreamResult, redact: Redact) -> None:
    buffer = b""
    data: list[bytes] = []
    event = b""
    chunks = http.aiter_bytes().__aiter__()
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        try:
            if result.complete and result.usage is not None:
                chunk = await asyncio.wait_for(chunks.__anext__(), DONE_GRACE)
            else:
                chunk = await chunks.__anext__()
        except (StopAsyncIteration, TimeoutError):
            break
        if loop.time() - started > COALESCE_AFTER:
            # A long generation: let a few chunks gather in the socket buffer
            # between reads. Each wake-up of a stream costs more CPU than parsing
            # a chunk, and nothing here needs text sooner than the journal does.
            await asyncio.sleep(COALESCE_FOR)
        buffer += chunk
        if b"\n" not in chunk:
            continue
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    if _dispatch(payload, event, on_text, result, redact):
                        return
                    data = []
                event = b""
            elif line.startswith(b"data:"):
                payload = line[5:]
                data.append(payload[1:] if payload.startswith(b" ") else payload)
            elif line.startswith(b"event:"):
                event = line[6:].strip()
            # ':' comments (keep-alives), id: and retry: lines carry nothing we need
    if buffer.strip().startswith(b"data:"):
        payload = buffer.strip()[5:]
        data.append(payload[1:] if payload.startswith(b" ") else payload)
    if data:
        _dispatch(b"\n".join(data), event, on_text, result, redact)


def _dispatch(payload: bytes, event: bytes, on_text: OnText, result: StreamResult,
              redact: Redact) -> bool:
    """Handle one SSE event; True once ``[DONE]`` arrived."""
    if payload == b"[DONE]":
        result.done_marker = True
        return True
    try:
        text = payload.decode()
        obj, end = _decode(text)
        if end != len(text) and text[end:].strip():
            raise ValueError("trailing data")
    except ValueError:
        shown = redact(payload[:80].decode("utf-8", "replace"))
        raise TransientError(
            f"chunk {result.chunks + 1} is not valid JSON: {shown!r}",
            error_class="malformed_chunk",
            provider_request_id=result.request_id,
        ) from None
    if not isinstance(obj, dict):
        raise TransientError(f"chunk {result.chunks + 1} is not a JSON object",
                             error_class="malformed_chunk", provider_request_id=result.request_id)
    result.chunks += 1
    if event == b"error" or ("error" in obj and not obj.get("choices")):
        raise from_payload(None, obj, request_id=result.request_id or obj.get("request_id"),
                           redact=redact)
    choices = obj.get("choices")
    if choices:
        choice = choices[0]
        delta = choice.get("delta")
        if delta:
            content = delta.get("content")
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if content or reasoning:
                on_text(content or "", reasoning or "")
        finish = choice.get("finish_reason")
        if finish:
            result.finish_reason = finish
    usage = obj.get("usage")
    if usage:
        result.usage = usage
    if result.response_id is None:
        result.response_id = obj.get("id")
    return False
