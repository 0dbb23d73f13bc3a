"""One streamed attempt: send through the openai SDK, read raw SSE, emit text.

The SDK builds a pydantic object per chunk when iterated the usual way, which
is most of a client's CPU. Instead this module sends the request with the
SDK's ``client.post`` (its method for any path, with its auth, base URL,
headers and error types), asks for the response unread (the switch behind
``with_streaming_response``), reads the body's bytes — from aiohttp's reader
directly when the SDK's aiohttp transport carries them — and hands them to
:class:`batchgen.wire.sse.SSEDecoder` (framing) and
:func:`batchgen.wire.chunks.read_event` (what each chunk says). Every shape real
providers send is read as the SDK reads it (tests/wire/test_replay.py replays
recordings from 14 providers); where the SDK drops data the server sent —
thinking parts in a content list, ``reasoning_details``, tool-call deltas,
Groq's ``x_groq.usage`` — batchgen keeps it.

The SDK is imported when the first client is made (:mod:`batchgen.wire.sdk`, its
client without its ~450 type modules): a fully skipped re-run never pays for
the import.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import urllib.request
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from batchgen.errors import TransientError
from batchgen.wire.chunks import StreamResult, read_event, read_whole
from batchgen.wire.retry import Redact
from batchgen.wire.sdk import sdk
from batchgen.wire.sse import EventTooLarge, SSEDecoder
from batchgen.wire.watchdog import Watch

if TYPE_CHECKING:
    from openai import AsyncOpenAI

__all__ = ["StreamResult", "make_client", "stream_attempt", "tls_context", "wire_body"]

log = logging.getLogger(__name__)

# A stream older than COALESCE_AFTER seconds is read at most every
# COALESCE_SHARE of its age, up to COALESCE_FOR seconds (reached at 2 s): its
# end is seen at most that share of its duration late, while a long generation
# wakes its task, and the event loop, once for several chunks. Not after a read
# of COALESCE_BYTES or more (the data is coming fast), and only where a read
# takes all that arrived (aiohttp's reader, read directly). Only a stream whose
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

REQUEST_HEADERS = {
    # The SDK's own switch for "hand over the response unread" (what its
    # with_streaming_response sets): batchgen reads the event stream itself.
    "X-Stainless-Raw-Response": "stream",
    # an event stream gains little from compression, and a compressed body is
    # where a hostile server hides a bomb: ask for none (see _inflate)
    "Accept-Encoding": "identity",
}


def make_client(
    base_url: str,
    api_key: str,
    *,
    connect_timeout: float,
    idle_timeout: float | None,
    max_connections: int,
) -> AsyncOpenAI:
    """An async client with the SDK's retries off.

    ``idle_timeout`` is the transport's read timeout; a run passes ``None``
    and leaves idleness to its :class:`~batchgen.wire.watchdog.Watchdog`, which
    does not count time the process was stopped.

    The transport is aiohttp where the SDK supports it (``DefaultAioHttpClient``):
    it costs about 40% less CPU per chunk and per request than httpx here
    (``python -m bench``). ``BATCHGEN_HTTP=httpx`` picks httpx.
    """
    openai = sdk()
    verify = tls_context(base_url)
    limits_type = type(openai.DEFAULT_CONNECTION_LIMITS)
    limits = limits_type(
        max_connections=max(max_connections, 16),
        max_keepalive_connections=max(max_connections, 16),
        keepalive_expiry=30.0,
    )
    timeout = openai.Timeout(connect=connect_timeout, read=idle_timeout, write=60.0, pool=None)
    http_client: Any = None
    # Redirects are not followed: a 307/308 would re-send the prompt (and the
    # key's request) to another origin, a 301/302 turn the POST into a GET
    # whose reply looks like an answer. They fail the request, naming the target.
    if os.environ.get("BATCHGEN_HTTP", "aiohttp") == "aiohttp":
        try:
            http_client = openai.DefaultAioHttpClient(limits=limits, timeout=timeout,
                                                      follow_redirects=False, verify=verify)
        except (AttributeError, ImportError, RuntimeError):
            http_client = None  # an SDK without aiohttp support, or aiohttp missing
    if http_client is None:
        http_client = openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout,
                                                     follow_redirects=False, verify=verify)
    client: AsyncOpenAI = openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=0,
        timeout=timeout,
        http_client=http_client,
    )
    return client


def tls_context(base_url: str) -> ssl.SSLContext | bool:
    """What the client verifies TLS peers with: ``True`` (the SDK's default
    context, the system's CA certificates) wherever a TLS connection can be made.

    Loading those certificates takes 50–130 ms of a run's start-up. A plain-HTTP
    endpoint (a local llama-server, a cluster's own vLLM) reached without a proxy
    makes no TLS connection — redirects are not followed — so it gets a context
    that trusts no one: it still requires a verified certificate and the host's
    name, so if it were ever used it would refuse the connection, never accept
    an unverified one.
    """
    if urlsplit(base_url).scheme.lower() != "http" or urllib.request.getproxies():
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname, no CAs


def wire_body(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON sent for a stored body: every parameter as given (``extra_body``
    merged in, winning), streamed, with usage in the last chunk."""
    wire: dict[str, Any] = {k: v for k, v in body.items() if k != "extra_body"}
    wire.update(body.get("extra_body") or {})
    wire["stream"] = True
    wire["stream_options"] = {"include_usage": True}
    return wire


async def stream_attempt(
    client: AsyncOpenAI,
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
        # the SDK's request method for any path: no per-request walk over the
        # typed parameters (~0.5 ms of CPU a request through create())
        response: Any = await client.post("/chat/completions", cast_to=object,
                                          body=wire_body(body),
                                          options={"headers": REQUEST_HEADERS})
        try:
            headers = response.http_response.headers
            result.request_id = headers.get("x-request-id")
            result.ratelimit = {k: headers[k] for k in RATELIMIT_HEADERS if k in headers}
            if on_open is not None:
                on_open()
            await _consume(response.http_response, on_text, result, redact, watch)
        finally:
            await response.http_response.aclose()
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


Read = Callable[[], Awaitable[bytes]]  # the next piece of the body; b"" at its end


def _reader(http: Any, result: StreamResult) -> Read:
    """The body's bytes as sent; inflated here when a server compressed it anyway."""
    encoding = str(http.headers.get("content-encoding", "")).strip().lower()
    if encoding in ("", "identity"):
        direct = _aiohttp_content(http)
        if direct is not None:
            return cast(Read, direct.readany)
        return _pieces(cast(AsyncIterator[bytes], http.aiter_raw()))
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _pieces(_inflate(http.aiter_raw(), encoding))
    raise TransientError(f"the server sent a body in {encoding!r}, which batchgen does not read",
                         error_class="unsupported_encoding", provider_request_id=result.request_id)


def _aiohttp_content(http: Any) -> Any | None:
    """aiohttp's own reader of the body, when the SDK's aiohttp transport carries it.

    Read directly, each read skips three async-generator layers (httpx's
    response, its bound stream, the transport's stream) and the transport's
    16 KiB re-chunking; any other transport, or a layout this does not know,
    is read through httpx's ``aiter_raw``. Errors then arrive as aiohttp's own
    (``ClientPayloadError``, ``ServerDisconnectedError``), which
    :func:`batchgen.wire.retry.classify` knows.
    """
    stream = getattr(http, "stream", None)
    inner = getattr(stream, "_stream", stream)
    content = getattr(getattr(inner, "_aiohttp_response", None), "content", None)
    if content is None or not callable(getattr(content, "readany", None)):
        return None
    return content


def _holder(http: Any) -> Any | None:
    """aiohttp's protocol under the body's reader, when the body is read from
    it directly (one read takes all that arrived: see :func:`_gather`);
    ``None`` for any other transport, whose reads come a network read at a
    time however long the wait between them, and for a compressed body (read
    through httpx's iterator to be inflated)."""
    if str(http.headers.get("content-encoding", "")).strip().lower() not in ("", "identity"):
        return None
    protocol = getattr(_aiohttp_content(http), "_protocol", None)
    return protocol if hasattr(protocol, "transport") else None


async def _gather(hold: Any, seconds: float) -> None:
    """Sleep while the kernel gathers what arrives.

    With the socket's reading paused the event loop does not wake for each
    chunk either (one socket read, one parse of the HTTP framing, for all
    that came in the pause), which is most of a paced stream's CPU. Only the
    transport is paused, and only when aiohttp holds no pause of its own (its
    flow control, its parser's state stay as they are).
    """
    transport = hold.transport
    if transport is None or getattr(hold, "_reading_paused", True) \
            or getattr(hold, "_buffer_paused", True) \
            or not all(callable(getattr(transport, name, None)) for name in _FLOW) \
            or not transport.is_reading():
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


def _not_a_stream(http: Any, body: bytes, on_text: OnText, result: StreamResult,
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
    shown = redact(body[:80].decode("utf-8", "replace"))
    raise TransientError(f"the server's answer is not an event stream ({kind}): {shown!r}",
                         error_class="incomplete_stream", provider_request_id=result.request_id)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


async def _consume(http: Any, on_text: OnText, result: StreamResult, redact: Redact,
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
