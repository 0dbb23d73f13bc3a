"""The ``texts/`` files of finished answers, written while the run goes on.

A finished answer is committed to the store first; its files follow on a
thread of their own (:class:`TextFiles`), so the event loop never waits for a
disk. Each batch of files is made durable with one ``syncfs`` before it is
renamed into place (:func:`~batchgen.outputs.files.write_many_atomic`); that
sync is what a batch costs, about 1–3 ms of CPU on the machines we measured,
whatever its size. So syncs are spaced ``SYNC_EVERY`` apart and what finishes
in between is written together, rather than a sync for every commit of
finished answers (up to one every 10 ms).

An answer's file is created while it streams (:meth:`TextFiles.reserve`,
empty, under the temporary name the batch writes through; its reasoning's
file from the first reasoning text on): creating a file
is most of what writing a small one costs on some file systems, and when
hundreds of answers finish together, the last of them would otherwise wait
for all those creations after their text is in. A request that ends
without an answer has its temporary file removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from batchgen.outputs.files import (
    REASONING,
    reserve_temp,
    temp_of,
    text_files,
    text_name,
    write_many_atomic,
)
from batchgen.store.attempts import Ended

SYNC_EVERY = 0.1  # seconds between two syncs of texts/
MAX_PENDING_TEXT = 8 * 1024 * 1024  # bytes of finished results waiting for their files
ENDED_OVERHEAD = 2048  # bytes a finished result holds besides its text

File = tuple[str, bool]  # an answer's file: its request's id, whether it is the reasoning


class TextFiles:
    """Writes ``texts/`` for finished answers, a batch per sync; ``on_error``
    gets (on the event loop) the error of a batch the disk refused."""

    def __init__(self, run_dir: Path, on_error: Callable[[BaseException], None]) -> None:
        self.run_dir = run_dir
        self._texts = os.path.join(run_dir, "texts")  # a string: paths built per answer
        self.on_error = on_error
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchgen-texts")
        self._lock = threading.Lock()
        self._queued: list[tuple[Ended, int]] = []  # shared with the writer thread
        # Shared: files to create, an ordered set. A file answered or released
        # before the writer took it leaves it, so it never holds more than
        # what streams (a run whose every request fails makes no file at all).
        self._to_reserve: dict[File, None] = {}
        self._to_release: list[File] = []  # shared: files to remove
        self._reserved: set[File] = set()  # the loop's: asked for, not yet answered
        self._made: set[File] = set()  # the writer thread's: created, not yet filled
        self._hurry = threading.Event()  # closing: no more waiting between syncs
        self._last_sync = 0.0  # the writer thread's own
        self._drain: asyncio.Future[None] | None = None
        self._pending_bytes = 0
        self._room = asyncio.Event()

    def reserve(self, request_id: str, reasoning: bool = False) -> None:
        """Have the file of ``request_id``'s answer (or of its reasoning)
        created while it streams."""
        file = (request_id, reasoning)
        if file in self._reserved:  # a retry: made for its first attempt
            return
        self._reserved.add(file)
        with self._lock:
            self._to_reserve[file] = None
        # No thread is started for this alone (a hand-over costs ~20 µs of CPU a
        # request): the writer makes the files it finds asked for whenever it
        # runs, which it does while answers finish.

    def release(self, request_id: str) -> None:
        """``request_id`` ended without an answer: its files are not needed."""
        for file in ((request_id, False), (request_id, True)):
            if file in self._reserved:
                self._reserved.discard(file)
                with self._lock:
                    if file in self._to_reserve:  # not made yet: now it never is
                        del self._to_reserve[file]
                    else:
                        self._to_release.append(file)

    def submit(self, finished: list[Ended]) -> None:
        """Files for ``finished`` answers (already committed), soon."""
        files = [(d.request_id or "", reasoning) for d in finished for reasoning in (False, True)]
        self._reserved.difference_update(files)
        sized = [(d, len(d.content) + len(d.reasoning) + ENDED_OVERHEAD) for d in finished]
        self._pending_bytes += sum(size for _, size in sized)
        with self._lock:
            self._queued += sized
            for file in files:  # the batch creates these itself
                self._to_reserve.pop(file, None)
        if self._drain is None:
            self._start()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._drain = loop.run_in_executor(self._executor, self._work, loop)
        self._drain.add_done_callback(self._drained)

    def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer thread: the files asked for, and batches until none is left."""
        while True:
            with self._lock:
                reserve, self._to_reserve = list(self._to_reserve), {}
                more = bool(self._queued)
            self._prepare(reserve, set())
            if not more:
                return
            wait = self._last_sync + SYNC_EVERY - time.monotonic()
            if wait > 0:
                self._hurry.wait(wait)
            with self._lock:
                batch, self._queued = self._queued, []
                reserve, self._to_reserve = list(self._to_reserve), {}
            if not batch:  # pragma: no cover - only this thread takes the batch
                return
            answered = {(done.request_id or "", reasoning) for done, _ in batch
                        for reasoning in ((False, True) if done.reasoning else (False,))}
            self._prepare(reserve, answered)
            files: list[tuple[str, bytes]] = []
            for done, _ in batch:
                assert done.request_id is not None  # noqa: S101 - an invariant, for the type checker
                files += text_files(self.run_dir, done.request_id, done.content, done.reasoning,
                                    done.value_json)
            write_many_atomic(files)
            self._made -= answered
            self._last_sync = time.monotonic()
            loop.call_soon_threadsafe(self._written, sum(size for _, size in batch))

    def _prepare(self, reserve: list[File], answered: set[File]) -> None:
        """On the writer thread: create the files of answers that stream (not
        those ``answered`` in the batch at hand), then remove those released
        (in this order: one released while it was being made goes too)."""
        for file in reserve:
            if file in answered or file in self._made:
                continue
            try:
                reserve_temp(self._path(file))
            except OSError:  # a head start only: the batch creates it, or reports the disk
                continue
            self._made.add(file)
        with self._lock:
            release, self._to_release = self._to_release, []
        for file in release:
            self._remove(file)

    def _remove(self, file: File) -> None:
        if file in self._made:
            self._made.discard(file)
            with contextlib.suppress(OSError):
                os.unlink(temp_of(self._path(file)))

    def _path(self, file: File) -> str:
        request_id, reasoning = file
        return os.path.join(self._texts, text_name(request_id, REASONING if reasoning else ".md"))

    def _written(self, size: int) -> None:
        self._pending_bytes -= size
        self._room.set()

    def _drained(self, future: asyncio.Future[None]) -> None:
        self._drain = None
        self._room.set()
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            # The store has the text (the export at the end writes the files
            # again), but a disk that refuses files refuses the store next.
            self.on_error(exc)
            return
        with self._lock:
            more = bool(self._queued)
        if more:  # queued after the thread found none left
            self._start()

    async def room(self) -> None:
        """Hold launches while too much finished text waits for its files."""
        while self._pending_bytes > MAX_PENDING_TEXT and self._drain is not None:
            self._room.clear()
            await self._room.wait()

    async def close(self) -> None:
        """Every queued file written, the files of requests left unanswered
        removed; the writer thread ends."""
        self._hurry.set()
        try:
            while self._drain is not None:
                await asyncio.wait([self._drain])
        finally:
            self._executor.shutdown(wait=True)
            # the thread is gone: what it made is this thread's to remove
            with self._lock:
                self._to_reserve.clear()
                self._to_release.clear()
            for file in list(self._made):
                self._remove(file)
            self._reserved.clear()
