"""One streamed attempt: send through batchgen's own transport, read raw SSE, emit text.

:class:`batchgen.wire.transport.Transport` sends the request (aiohttp, with the
auth header, the JSON body, redirects refused, errors mapped to batchgen's
own); this module reads the body's bytes as they come and hands them to
:class:`batchgen.wire.sse.SSEDecoder` (framing) and
:func:`batchgen.wire.chunks.read_event` (what each chunk says). Every shape real
providers send is read as the openai SDK reads it (tests/wire/test_replay.py
replays recordings from 14 providers against the SDK's reading); where the SDK
drops data the server sent — thinking parts in a content list,
``reasoning_details``, tool-call deltas, Groq's ``x_groq.usage`` — batchgen
keeps it. A streamed run does not import the openai SDK at all.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from batchgen.errors import TransientError
from batchgen.wire.chunks import StreamResult, read_event, read_whole
from batchgen.wire.retry import Redact, one_line
from batchgen.wire.sse import EventTooLarge, SSEDecoder
from batchgen.wire.transport import Read, Response, Transport
from batchgen.wire.watchdog import Watch

__all__ = ["StreamResult", "Transport", "make_client", "stream_attempt", "wire_body"]

log = logging.getLogger(__name__)

# A stream older than COALESCE_AFTER seconds is read at most every
# COALESCE_SHARE of its age, up to COALESCE_FOR seconds (reached at 2 s): its
# end is seen at most that share of its duration late, while a long generation
# wakes its task, and the event loop, once for several chunks. Not after a read
# of COALESCE_BYTES or more (the data is coming fast), and only where a read
# takes all that arrived (the transport's reader). Only a stream whose
# chunks have come at least COALESCE_CHUNKS a window is paused: a pause costs a
# timer and two changes to the loop's poller, more than the wake-ups it saves
# on a slower stream (python -m bench: P8 at 10–20 ms a chunk needs 1.5× the
# CPU without the pauses; 40 ms apart, the pauses cost 7–15% more).
COALESCE_AFTER = 0.4
COALESCE_SHARE = 0.05
COALESCE_FOR = 0.1
COALESCE_BYTES = 16 * 1024
COALESCE_CHUNKS = 4
INFLATE_PIECE = 256 * 1024  # bytes a compressed body inflates to at a time

# After the finish_reason and usage have arrived, wait this long for [DONE]:
# nothing that matters can follow, and a server that goes quiet instead of
# closing must not hold a finished request. After a finish_reason without
# usage, wait this long for the usage chunk (it follows at once where it comes
# at all); then the answer is kept with its usage estimated.
DONE_GRACE = 1.0
USAGE_GRACE = 10.0
RATELIMIT_HEADERS = (
    "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
)

OnText = Callable[[str, str], None]

def make_client(base_url: str, api_key: str, *, connect_timeout: float,
                max_connections: int, redact: Redact = lambda text: text,
                headers: Mapping[str, str] | None = None) -> Transport:
    """The transport a run streams through (see :class:`Transport`); made on the
    running event loop, closed with ``await client.close()``."""
    return Transport(base_url, api_key, connect_timeout=connect_timeout,
                     max_connections=max_connections, redact=redact, headers=headers)


def wire_body(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON sent for a stored body: every parameter as given (``extra_body``
    merged in, winning), streamed, with usage in the last chunk."""
    wire: dict[str, Any] = {k: v for k, v in body.items() if k != "extra_body"}
    wire.update(body.get("extra_body") or {})
    wire["stream"] = True
    wire["stream_options"] = {"include_usage": True}
    return wire


async def stream_attempt(
    client: Transport,
    body: dict[str, Any],
    on_text: OnText,
    result: StreamResult,
    *,
    redact: Redact,
    on_open: Callable[[], None] | None = None,
    watch: Watch | None = None,
) -> StreamResult:
    """Run one streamed request to its end, feeding text to ``on_text``.

    Raises whatever the transport raises (``retry.classify`` sorts it out), or
    an :class:`AttemptError` for what the stream itself said: an error event,
    a malformed chunk, an end before the answer was whole. Once the answer is
    whole (``result.complete``), a transport failure does not matter: retrying
    would pay for it twice. An error event does: the server said the answer
    is not good, whatever it sent before.
    """
    try:
        response = await client.stream(wire_body(body))
        try:
            headers = response.headers
            result.request_id = headers.get("x-request-id")
            result.ratelimit = {k: headers[k] for k in RATELIMIT_HEADERS if k in headers}
            if on_open is not None:
                on_open()
            await _consume(response, on_text, result, redact, watch)
        finally:
            response.close()
    except asyncio.CancelledError:
        if watch is None or watch.fired is None:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()  # the watchdog's cancel, not the user's: a failed attempt
        if result.complete:  # ... unless the answer was already whole: asking again buys it twice
            log.debug("%s after a whole answer: kept", watch.fired)
            return result
        what = ("no data arrived for the idle timeout" if watch.fired == "idle_timeout"
                else "the attempt ran longer than run.max_duration")
        raise TransientError(what, error_class=watch.fired,
                             provider_request_id=result.request_id) from None
    except Exception as exc:
        if result.complete and not getattr(exc, "in_stream", False):
            log.debug("ignored after a complete answer: %r", exc)
            return result
        raise
    if not result.complete:
        raise TransientError(
            f"the stream ended after {result.chunks} chunks without a finish_reason or [DONE]",
            error_class="incomplete_stream",
            provider_request_id=result.request_id,
        )
    return result


def _encoding(http: Response) -> str:
    return str(http.headers.get("content-encoding", "")).strip().lower()


def _reader(http: Response, result: StreamResult) -> Read:
    """The body's bytes as sent; inflated here when a server compressed it anyway."""
    encoding = _encoding(http)
    if encoding in ("", "identity"):
        return http.read
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _pieces(_inflate(_raw(http.read), encoding))
    raise TransientError(f"the server sent a body in {encoding!r}, which batchgen does not read",
                         error_class="unsupported_encoding", provider_request_id=result.request_id)


async def _raw(read: Read) -> AsyncIterator[bytes]:
    while piece := await read():
        yield piece


def _holder(http: Response) -> asyncio.BaseTransport | None:
    """The connection to pause between gathered reads: where one read takes all
    that arrived (see :func:`_gather`); ``None`` for a compressed body (its
    reads come inflated a piece at a time)."""
    return http.transport if _encoding(http) in ("", "identity") else None


async def _gather(transport: Any, seconds: float) -> None:
    """Sleep while the kernel gathers what arrives.

    With the socket's reading paused the event loop does not wake for each
    chunk either (one socket read, one parse of the HTTP framing, for all that
    came in the pause), which is most of a paced stream's CPU. Only asyncio's
    public transport methods are used, and only while the transport is reading:
    a pause of the HTTP library's own flow control (a full buffer) is left to it.
    """
    if transport is None or not all(callable(getattr(transport, name, None))
                                    for name in _FLOW) \
            or transport.is_closing() or not transport.is_reading():
        await asyncio.sleep(seconds)
        return
    transport.pause_reading()
    try:
        await asyncio.sleep(seconds)
    finally:
        if not transport.is_closing():
            transport.resume_reading()


_FLOW = ("pause_reading", "resume_reading", "is_reading", "is_closing")


def _pieces(iterator: AsyncIterator[bytes]) -> Read:
    async def read() -> bytes:
        async for piece in iterator:
            if piece:
                return piece
        return b""

    return read


async def _inflate(raw: AsyncIterator[bytes], encoding: str) -> AsyncIterator[bytes]:
    """Decompress a little at a time: a small body that inflates to gigabytes (a
    "zip bomb") never sits in memory; the SSE decoder's event cap stops it."""
    inflater = zlib.decompressobj(31 if "gzip" in encoding else 15)
    async for piece in raw:
        data = inflater.decompress(piece, INFLATE_PIECE)
        while True:
            if data:
                yield data
            if not inflater.unconsumed_tail:
                break
            data = inflater.decompress(inflater.unconsumed_tail, INFLATE_PIECE)


def _keep(whole: bytearray, chunk: bytes, events: list[Any], limit: int) -> bytearray | None:
    """The body so far while it has held no event; ``None`` once it has (the
    stream is a stream) or once it is longer than any one answer could be."""
    if events:
        return None
    whole += chunk
    return whole if len(whole) <= limit else None


def _not_a_stream(http: Response, body: bytes, on_text: OnText, result: StreamResult,
                  redact: Redact) -> None:
    """The body ended without one event. A whole ``chat.completion`` (a server
    or gateway that does not stream) is the answer, taken once; an error object
    is that error; anything else fails the attempt saying what came instead."""
    text = read_whole(body, result, redact)
    if text is not None:
        on_text(*text)
    if result.complete:
        _warn_once("the server answered with one JSON body instead of an event stream "
                   "(it does not stream): read as a whole answer")
        return
    kind = str(http.headers.get("content-type", "")).split(";")[0].strip().lower()
    if kind == "text/event-stream":
        return  # an event stream that ended before its first event: cut short
    kind = kind or "no content-type"
    # the key out of the whole text first: a key cut in two by [:160] would get through
    shown = one_line(redact(body.decode("utf-8", "replace")))[:160]
    raise TransientError(f"the server's answer is not an event stream ({kind}): {shown!r}",
                         error_class="incomplete_stream", provider_request_id=result.request_id)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


async def _consume(http: Response, on_text: OnText, result: StreamResult, redact: Redact,
                   watch: Watch | None = None) -> None:
    decoder = SSEDecoder()
    read = _reader(http, result)
    hold = _holder(http)
    loop = asyncio.get_running_loop()
    began = loop.time()
    first = 0.0  # when the first bytes came
    # the body, while it has held no event: a server that ignored `stream` and
    # sent one JSON object (see _not_a_stream)
    whole: bytearray | None = bytearray()
    try:
        while True:
            if result.complete:
                try:
                    chunk = await asyncio.wait_for(
                        read(), DONE_GRACE if result.usage is not None else USAGE_GRACE)
                except TimeoutError:
                    break
            else:
                chunk = await read()
            if not chunk:
                break
            if watch is not None:
                watch.seen = True
            events = decoder.feed(chunk)
            if whole is not None:
                whole = _keep(whole, chunk, events, decoder.limit)
            for event, data in events:
                text = read_event(data, event, result, redact)
                if text is not None:
                    on_text(*text)
                elif result.done_marker:
                    return
            now = loop.time()
            first = first or now
            age = now - began
            if hold is not None and len(chunk) < COALESCE_BYTES and age > COALESCE_AFTER \
                    and not result.complete:
                # A long generation: let a few chunks gather in the socket buffer
                # before the next read. Each wake-up of a stream costs more CPU than
                # parsing a chunk, and nothing needs text sooner than the journal does.
                window = min(COALESCE_FOR, age * COALESCE_SHARE)
                if (result.chunks - 1) * window >= COALESCE_CHUNKS * max(now - first, window):
                    await _gather(hold, window)
        for event, data in decoder.close():
            text = read_event(data, event, result, redact)
            if text is not None:
                on_text(*text)
        if whole and not result.chunks and not result.done_marker:
            _not_a_stream(http, bytes(whole), on_text, result, redact)
    except EventTooLarge as exc:
        raise TransientError(f"the server sent {exc}", error_class="oversized_event",
                             provider_request_id=result.request_id) from None
