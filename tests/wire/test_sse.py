"""Properties of the SSE reader, for inputs nobody wrote by hand (hypothesis)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen.errors import AttemptError
from batchgen.wire.sse import EventTooLarge, SSEDecoder
from batchgen.wire.stream import StreamResult, _consume
from tests.helpers import Body

# event payloads: JSON-ish text with the characters framing cares about
payload = st.text(alphabet=st.characters(blacklist_categories=["Cs"],
                                         blacklist_characters="\r\n"), max_size=40)
events = st.lists(st.tuples(st.sampled_from(["", "completion", "error"]), payload),
                  min_size=1, max_size=12)
endings = st.sampled_from(["\n", "\r", "\r\n"])


def encode(evs: list[tuple[str, str]], eol: str) -> bytes:
    out = []
    for name, data in evs:
        if name:
            out.append(f"event: {name}{eol}")
        out.append(f": keep-alive{eol}")
        out.append(f"data: {data}{eol}{eol}")
    return "".join(out).encode()


def decode(raw: bytes, cuts: list[int]) -> list[tuple[bytes, bytes]]:
    decoder = SSEDecoder()
    got: list[tuple[bytes, bytes]] = []
    start = 0
    for cut in [*sorted(c % (len(raw) + 1) for c in cuts), len(raw)]:
        got += decoder.feed(raw[start:cut])
        start = max(start, cut)
    return got + decoder.close()


def expected(evs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), data.encode()) for name, data in evs if data]


@given(evs=events, eol=endings, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_split_into_reads_yields_the_same_events(
    evs: list[tuple[str, str]], eol: str, cuts: list[int]
) -> None:
    raw = encode(evs, eol)
    assert decode(raw, cuts) == expected(evs)


@given(evs=events)
def test_cr_lf_and_crlf_read_alike(evs: list[tuple[str, str]]) -> None:
    byte_by_byte = list(range(10_000))
    results = [decode(encode(evs, eol), byte_by_byte) for eol in ("\n", "\r", "\r\n")]
    assert results[0] == results[1] == results[2] == expected(evs)


def test_an_event_over_the_limit_is_refused_before_it_is_held() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    decoder.feed(b"data: " + b"x" * 500)
    try:
        for _ in range(10):
            decoder.feed(b"x" * 200)  # no line end: it would only grow
    except EventTooLarge as exc:
        assert exc.limit == 1000
    else:
        raise AssertionError("an unbounded line was held")
    split_lines = SSEDecoder(max_event_bytes=1000)
    try:
        for _ in range(10):  # many short data lines of one event
            split_lines.feed(b"data: " + b"y" * 190 + b"\n")
    except EventTooLarge:
        pass
    else:
        raise AssertionError("an unbounded event was held")



chunk_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["choices", "delta", "content", "reasoning", "reasoning_content",
                         "reasoning_details", "tool_calls", "finish_reason", "usage", "error",
                         "index", "function", "arguments", "type", "text", "x_groq"]),
        inner, max_size=4),
    max_leaves=12)


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.lists(chunk_json.map(json.dumps) | st.binary(max_size=30), max_size=8),
       cuts=st.lists(st.integers(min_value=1, max_value=50), max_size=5))
def test_no_input_raises_anything_but_a_classified_attempt_error(
    data: list[str | bytes], cuts: list[int]
) -> None:
    raw = b"".join((d if isinstance(d, bytes) else b"data: " + d.encode() + b"\n\n")
                   for d in data)
    pieces, start = [], 0
    for n in cuts:
        pieces.append(raw[start:start + n])
        start += n
    pieces.append(raw[start:])
    texts: list[tuple[str, str]] = []

    def on_text(content: str, reasoning: str) -> None:
        assert isinstance(content, str) and isinstance(reasoning, str)
        texts.append((content, reasoning))

    # an AttemptError is classified: the engine records it, retries or fails the request
    with contextlib.suppress(AttemptError):
        asyncio.run(_consume(Body(pieces), on_text, StreamResult(), lambda s: s))


def plain(evs: list[tuple[str, str]]) -> bytes:
    """Events as most servers send them: one `data: ` line each, an event
    name now and then, no comments — the decoder's fast path."""
    return "".join((f"event: {name}\n" if name else "") + f"data: {data}\n\n"
                   for name, data in evs).encode()


@given(evs=events, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_plain_streams_split_anywhere_read_alike(evs: list[tuple[str, str]],
                                                 cuts: list[int]) -> None:
    raw = plain(evs)
    assert decode(raw, cuts) == expected(evs)
    assert SSEDecoder().feed(raw) == expected(evs)  # all in one read
