"""Progress: a tqdm bar on a terminal, a plain line every few seconds elsewhere.

Cron and CI logs get one readable line per interval instead of carriage-return
noise; ``quiet`` prints nothing until the final summary (printed by the CLI).
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    def start(self, total: int, skipped: int) -> None: ...
    def update(self, *, done: int = 0, failed: int = 0, tokens: int = 0,
               in_flight: int = 0) -> None: ...
    def close(self) -> None: ...
    def note(self, text: str) -> None: ...


class NullProgress:
    def note(self, text: str) -> None:
        pass

    def start(self, total: int, skipped: int) -> None:
        pass

    def update(self, *, done: int = 0, failed: int = 0, tokens: int = 0,
               in_flight: int = 0) -> None:
        pass

    def close(self) -> None:
        pass


class _Rate:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tokens = 0

    def per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.tokens / elapsed if elapsed > 0 else 0.0


class BarProgress:
    """tqdm bar: requests done / total, output tokens per second, failures."""

    def __init__(self, name: str, stream: TextIO, widget: bool = False) -> None:
        self.name = name
        self.stream = stream
        self.widget = widget  # tqdm.auto: a widget in a notebook, else the text bar
        self.bar: object | None = None
        self.failed = 0
        self.rate = _Rate()
        self._last_postfix = 0.0

    def start(self, total: int, skipped: int) -> None:
        import tqdm
        import tqdm.auto

        bar = tqdm.auto.tqdm if self.widget else tqdm.tqdm
        self.bar = bar(total=total, desc=self.name, unit="req", file=self.stream,
                        dynamic_ncols=True, smoothing=0.1)
        if skipped:
            self.stream.write(f"{self.name}: {skipped} already done, skipped\n")

    def update(self, *, done: int = 0, failed: int = 0, tokens: int = 0,
               in_flight: int = 0) -> None:
        self.rate.tokens += tokens
        self.failed += failed
        bar = self.bar
        if bar is None:
            return
        if done or failed:
            bar.update(done + failed)  # type: ignore[attr-defined]
        now = time.monotonic()
        if now - self._last_postfix >= 0.5:
            self._last_postfix = now
            bar.set_postfix_str(  # type: ignore[attr-defined]
                f"{self.rate.per_second():,.0f} tok/s, {self.failed} failed, {in_flight} streaming",
                refresh=False,
            )

    def note(self, text: str) -> None:
        """A line above the bar (an outage, say), the bar redrawn below it."""
        if self.bar is not None:
            self.bar.write(f"{self.name}: {text}", file=self.stream)  # type: ignore[attr-defined]
        else:
            self.stream.write(f"{self.name}: {text}\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # type: ignore[attr-defined]


class LineProgress:
    """One plain line every ``interval`` seconds, for logs."""

    def __init__(self, name: str, stream: TextIO, interval: float = 5.0) -> None:
        self.name = name
        self.stream = stream
        self.interval = interval
        self.total = 0
        self.done = 0
        self.failed = 0
        self.in_flight = 0
        self.rate = _Rate()
        self._last = time.monotonic()

    def start(self, total: int, skipped: int) -> None:
        self.total = total
        extra = f" ({skipped} already done, skipped)" if skipped else ""
        self._write(f"{self.name}: {total} request{'s' if total != 1 else ''} to run{extra}")

    def update(self, *, done: int = 0, failed: int = 0, tokens: int = 0,
               in_flight: int = 0) -> None:
        self.done += done
        self.failed += failed
        self.rate.tokens += tokens
        self.in_flight = in_flight
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line()

    def note(self, text: str) -> None:
        self._write(f"{self.name}: {text}")

    def _line(self) -> None:
        self._write(
            f"{self.name}: {self.done}/{self.total} done, {self.failed} failed, "
            f"{self.in_flight} streaming, {self.rate.per_second():,.0f} tok/s"
        )

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.total:
            self._line()


def make_progress(name: str, mode: str = "auto", stream: TextIO | None = None) -> Progress:
    """``auto``: a bar on a terminal, lines elsewhere; ``quiet``: nothing;
    ``widget``: tqdm.auto's bar (a widget in a notebook)."""
    out = stream or sys.stderr
    if mode == "quiet":
        return NullProgress()
    if mode == "widget":
        return BarProgress(name, out, widget=True)
    if mode == "bar" or (mode == "auto" and out.isatty()):
        return BarProgress(name, out)
    return LineProgress(name, out)
