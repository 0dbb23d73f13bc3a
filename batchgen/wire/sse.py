"""Server-sent events, decoded incrementally by the rules of the SSE standard.

Bytes go in as the network delivers them, split anywhere; complete events
come out as ``(event type, data)``. What the standard says, and what real
providers rely on:

- lines end in CR, LF or CRLF — also when the CR and the LF arrive in
  different reads (a CR at the end of a read is a line end; an LF that starts
  the next read is then the second half of that CRLF, not an empty line);
- ``data:`` lines accumulate, joined by ``\\n``; one space after the colon is
  dropped; an event is dispatched at the empty line that ends it, and not at
  all when it has no data (``event: ping`` alone);
- ``:`` comments (keep-alives), ``id:``, ``retry:`` and unknown fields carry
  nothing a chat stream needs;
- the body may end inside an event: :meth:`SSEDecoder.close` hands over such
  an unterminated last event if it has data (a usage chunk sent without its
  final newline is still real billing data).

One event, or one line still waiting for its end, may hold at most
``max_event_bytes``; past that the decoder raises :class:`EventTooLarge`
before buffering more, so a hostile or broken server cannot make batchgen
hold an unbounded event in memory.

The work per read is linear in its size: a partial line waits as a list of
pieces and is joined once, when its end arrives. A read that is only whole
one-line ``data:`` events (nearly every read of a chat stream) is split
without walking it line by line.
"""

from __future__ import annotations

MAX_EVENT_BYTES = 8 * 1024 * 1024  # far beyond any real chunk (the largest seen: 2 MiB)

Event = tuple[bytes, bytes]  # (event type, data); type b"" when the event names none


class EventTooLarge(Exception):
    """One event (or one line of it) passed ``max_event_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"an event of over {size:,} bytes (the limit is {limit:,})")
        self.size = size
        self.limit = limit


def _simple(chunk: bytes) -> list[Event] | None:
    """The shape nearly every read of a chat stream has — whole events of one
    ``data: `` line each, nothing pending — read without the line-by-line walk;
    ``None`` when any part of the read is not that simple."""
    events: list[Event] = []
    for block in chunk[:-2].split(b"\n\n"):
        if block[:6] != b"data: " or len(block) == 6 or b"\n" in block:
            return None
        events.append((b"", block[6:]))
    return events


class SSEDecoder:
    """``feed(bytes) -> [events]`` as bytes arrive; ``close() -> [events]`` at the end."""

    __slots__ = ("_cr", "_data", "_data_len", "_event", "_partial", "_partial_len", "limit")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.limit = max_event_bytes
        self._cr = False  # the last read ended in CR: a leading LF completes that CRLF
        self._partial: list[bytes] = []  # the line still waiting for its end
        self._partial_len = 0
        self._data: list[bytes] = []  # data lines of the event being read
        self._data_len = 0
        self._event = b""

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if (chunk.endswith(b"\n\n") and not (self._cr or self._partial or self._data
                                             or self._event)
                and len(chunk) <= self.limit and b"\r" not in chunk):
            # one whole `data: ` event, the usual read: no split, one copy
            if chunk.find(b"\n") == len(chunk) - 2 and chunk.startswith(b"data: ") \
                    and len(chunk) > 8:
                return [(b"", chunk[6:-2])]
            events = _simple(chunk)
            if events is not None:
                return events
        if self._cr:
            self._cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\r" in chunk:
            self._cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = chunk.rfind(b"\n")
        if end < 0:
            self._hold(chunk)
            return []
        if self._partial:
            head = b"".join(self._partial) + chunk[:end]
            self._partial.clear()
            self._partial_len = 0
        else:
            head = chunk[:end]
        tail = chunk[end + 1:]
        events = self._lines(head.split(b"\n"))
        if tail:
            self._hold(tail)
        return events

    def close(self) -> list[Event]:
        """The body ended: a last line without its line end still counts, and
        an event cut off before its empty line is handed over if it has data."""
        events: list[Event] = []
        if self._partial:
            line = b"".join(self._partial)
            self._partial.clear()
            self._partial_len = 0
            events = self._lines([line])
        if self._data:
            event = self._take()
            if event[1]:
                events.append(event)
        return events

    # ------------------------------------------------------------ internal

    def _hold(self, piece: bytes) -> None:
        self._partial.append(piece)
        self._partial_len += len(piece)
        if self._partial_len + self._data_len > self.limit:
            raise EventTooLarge(self._partial_len + self._data_len, self.limit)

    def _take(self) -> Event:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = (self._event, data)
        self._data = []
        self._data_len = 0
        self._event = b""
        return event

    def _lines(self, lines: list[bytes]) -> list[Event]:
        events: list[Event] = []
        for line in lines:
            if not line:
                if self._data:
                    event = self._take()
                    if event[1]:  # data that is only empty lines is no event
                        events.append(event)
                else:
                    self._event = b""
                continue
            if line[:5] == b"data:":
                value = line[5:]
                if value[:1] == b" ":
                    value = value[1:]
            else:
                if line[:1] == b":":
                    continue  # a comment: keep-alive
                name, colon, value = line.partition(b":")
                if colon and value[:1] == b" ":
                    value = value[1:]
                if name == b"event":
                    self._event = value
                    continue
                if name != b"data":
                    continue  # id:, retry:, unknown fields
            self._data.append(value)
            self._data_len += len(value) + 1
            if self._data_len > self.limit:
                raise EventTooLarge(self._data_len, self.limit)
        return events
