"""The ``texts/`` files of finished answers, written while the run goes on.

A finished answer is committed to the store first; its files follow on a
thread of their own (:class:`TextFiles`), so the event loop never waits for a
disk. Each batch of files is made durable with one ``syncfs`` before it is
renamed into place (:func:`~batchgen.outputs.files.write_many_atomic`); that
sync is what a batch costs, about 1–3 ms of CPU on the machines we measured,
whatever its size. So syncs are spaced ``SYNC_EVERY`` apart and what finishes
in between is written together, rather than a sync for every commit of
finished answers (up to one every 10 ms).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from batchgen.outputs.files import text_files, write_many_atomic
from batchgen.store.attempts import Ended

SYNC_EVERY = 0.1  # seconds between two syncs of texts/
MAX_PENDING_TEXT = 8 * 1024 * 1024  # bytes of finished results waiting for their files
ENDED_OVERHEAD = 2048  # bytes a finished result holds besides its text


class TextFiles:
    """Writes ``texts/`` for finished answers, a batch per sync; ``on_error``
    gets (on the event loop) the error of a batch the disk refused."""

    def __init__(self, run_dir: Path, on_error: Callable[[BaseException], None]) -> None:
        self.run_dir = run_dir
        self.on_error = on_error
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchgen-texts")
        self._lock = threading.Lock()
        self._queued: list[tuple[Ended, int]] = []  # shared with the writer thread
        self._hurry = threading.Event()  # closing: no more waiting between syncs
        self._last_sync = 0.0  # the writer thread's own
        self._drain: asyncio.Future[None] | None = None
        self._pending_bytes = 0
        self._room = asyncio.Event()

    def submit(self, finished: list[Ended]) -> None:
        """Files for ``finished`` answers (already committed), soon."""
        sized = [(d, len(d.content) + len(d.reasoning) + ENDED_OVERHEAD) for d in finished]
        self._pending_bytes += sum(size for _, size in sized)
        with self._lock:
            self._queued += sized
        if self._drain is None:
            self._start()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._drain = loop.run_in_executor(self._executor, self._work, loop)
        self._drain.add_done_callback(self._drained)

    def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the writer thread: batches until none is left."""
        while True:
            wait = self._last_sync + SYNC_EVERY - time.monotonic()
            if wait > 0:
                self._hurry.wait(wait)
            with self._lock:
                batch, self._queued = self._queued, []
            if not batch:
                return
            files: list[tuple[Path, bytes]] = []
            for done, _ in batch:
                assert done.request_id is not None  # noqa: S101 - an invariant, for the type checker
                files += text_files(self.run_dir, done.request_id, done.content, done.reasoning,
                                    done.value_json)
            write_many_atomic(files)
            self._last_sync = time.monotonic()
            loop.call_soon_threadsafe(self._written, sum(size for _, size in batch))

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
        """Every queued file written; the writer thread ends."""
        self._hurry.set()
        try:
            while self._drain is not None:
                await asyncio.wait([self._drain])
        finally:
            self._executor.shutdown(wait=True)
