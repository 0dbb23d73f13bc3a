"""Guards that watch an answer while it streams: a degenerate loop is stopped
before it is paid for to ``max_tokens``.

A model that falls into repeating itself streams the same sentence until its
output cap, and every token of it is billed. :class:`RepetitionGuard` watches
the end of the content as it arrives and fires when **the same span of at
least ``min_span`` characters repeats back to back, at least ``min_copies``
times, over at least ``min_chars`` characters** (defaults 10, 10, 1,000:
``run.guard``). What counts:

- back to back only: the span's copies follow each other with nothing in
  between (a refrain between verses, a table's distinct rows, a numbered
  list, code lines that differ by a name never repeat exactly);
- the span is the loop's period, its shortest repeating unit: a sentence said
  over and over is one; a run of one character, "okokok…" or a ruler of
  dashes (a unit shorter than ``min_span``) is not;
- only the content is watched (reasoning is left alone), in characters, so
  Chinese and Japanese text count as any other.

The guard is a pure function of the text: it keeps a window of the last
``window`` characters (enough for ``min_copies`` copies of the longest span it
looks for, :data:`MAX_SPAN`) and looks again every :data:`CHECK_EVERY`
characters, so its CPU per chunk is a few searches in C over that window.
When it fires it says where the first copy of the loop ends: the text worth
keeping.
"""

from __future__ import annotations

from collections.abc import Callable

from batchgen.jobs.records import GuardSettings

MAX_SPAN = 1000  # the longest loop period looked for (a long sentence, a short paragraph)
CHECK_EVERY = 64  # characters between looks
CANDIDATES = 16  # earlier occurrences of the tail tried as a period, nearest first


class RepetitionStop(Exception):
    """Raised from the text callback when the guard fires: the stream is left
    at once (no more tokens bought). ``keep`` is how much of this attempt's
    content is worth keeping."""

    def __init__(self, keep: int) -> None:
        super().__init__(f"a degenerate loop: kept {keep} characters")
        self.keep = keep


def guarded(on_text: Callable[[str, str], None], settings: GuardSettings
            ) -> Callable[[str, str], None]:
    """``on_text`` watched by a :class:`RepetitionGuard` (the text is passed
    on first, so what streamed is journaled before the stream is left)."""
    guard = RepetitionGuard(settings)

    def watched(content: str, reasoning: str) -> None:
        on_text(content, reasoning)
        if content:
            keep = guard.feed(content)
            if keep is not None:
                raise RepetitionStop(keep)

    return watched


class RepetitionGuard:
    """``feed(text)`` each piece of content; a return that is not ``None`` is
    the length of the text worth keeping (up to the end of the loop's first
    copy): the loop was found."""

    def __init__(self, settings: GuardSettings | None = None) -> None:
        self.s = settings or GuardSettings()
        self.window = max(self.s.min_chars, self.s.min_copies * MAX_SPAN) + MAX_SPAN
        self.buf = ""
        self.dropped = 0  # characters before the window
        self.unchecked = 0

    def feed(self, text: str) -> int | None:
        if not text:
            return None
        self.buf += text
        self.unchecked += len(text)
        if len(self.buf) > 2 * self.window:
            cut = len(self.buf) - self.window
            self.buf = self.buf[cut:]
            self.dropped += cut
        if self.unchecked < CHECK_EVERY or len(self.buf) < self.s.min_chars:
            return None
        self.unchecked = 0
        return self._look()

    def _look(self) -> int | None:
        buf, s = self.buf, self.s
        size, m = len(buf), self.s.min_span
        tail, pos = buf[-m:], size - m
        low, high = max(0, pos - MAX_SPAN), size - 1  # earlier occurrences of the tail
        for _ in range(CANDIDATES):
            at = buf.rfind(tail, low, high)
            if at < 0:
                return None
            period = pos - at
            high = at + m - 1  # the next candidate lies further back
            span = period
            need = max(s.min_chars, s.min_copies * span)
            if period < m:  # a unit shorter than a span ("ok", "-"): if that is what
                if need <= size and buf[size - need:size - period] == \
                        buf[size - need + period:]:  # repeats, it is no loop of text
                    return None
                continue
            if need > size or buf[size - need:size - period] != buf[size - need + period:]:
                continue
            start = size - need  # the loop may go back further: find where it begins
            while start > 0 and buf[start - 1] == buf[start - 1 + period]:
                start -= 1
            return self.dropped + start + span
        return None


def loop_found(text: str, settings: GuardSettings | None = None) -> int | None:
    """The guard over a whole text as it would have streamed (in 64-character
    pieces): where its kept part ends, or ``None``."""
    guard = RepetitionGuard(settings)
    for i in range(0, len(text), CHECK_EVERY):
        hit = guard.feed(text[i:i + CHECK_EVERY])
        if hit is not None:
            return hit
    return None
