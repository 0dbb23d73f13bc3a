"""The rows a run plans into its store, kept from the pass that validated them.

A job is resolved once to validate it (nothing may be written before the
whole file is known good) and, on a first run, once more to plan it into the
store: at ~25 µs a prompt, the second pass alone kept a 1,000,000-prompt job
from its first request for ~25 s. The validating pass therefore writes each
planned row to a spool — an unlinked temporary file, so memory stays flat and
nothing is left behind however the process ends — and the store reads it back.

The spool is only ever a shortcut: when it cannot be written (a full or
read-only temporary directory) it gives up and the caller resolves the job
again, as before. Its rows are exactly those the validating pass counted
into the plan's digest.
"""

from __future__ import annotations

import logging
import marshal
import struct
import tempfile
from collections.abc import Iterator
from typing import IO

from batchgen.store.records import PlanRow

log = logging.getLogger(__name__)

BATCH = 2_000  # rows per marshalled list at most
BATCH_CHARS = 1 << 20  # and bodies of about this much text (long prompts)
_SIZE = struct.Struct("<Q")  # each list's length in bytes, before it


class Spool:
    """Rows written once in order, then read back once in the same order."""

    def __init__(self) -> None:
        self._file: IO[bytes] | None = None
        self._batch: list[PlanRow] = []
        self._chars = 0
        self.count = 0
        try:
            self._file = tempfile.TemporaryFile(prefix="batchgen-plan-")  # noqa: SIM115 - lives on
        except OSError as exc:
            self._give_up(exc)

    def add(self, row: PlanRow) -> None:
        if self._file is None:
            return
        self._batch.append(row)
        self.count += 1
        self._chars += len(row[4])
        if len(self._batch) >= BATCH or self._chars >= BATCH_CHARS:
            self._flush()

    def take(self) -> Iterator[PlanRow] | None:
        """Every row added, in order, read once; ``None`` where the spool gave up.

        The spool closes once its rows are read. A read error after this
        returned is the disk's and propagates.
        """
        self._flush()
        if self._file is not None:
            try:
                self._file.seek(0)  # writes what the file's buffer still holds
            except OSError as exc:
                self._give_up(exc)
        if self._file is None:
            return None
        return self._read(self._file, self.count)

    def _read(self, file: IO[bytes], left: int) -> Iterator[PlanRow]:
        try:
            while left:
                (size,) = _SIZE.unpack(file.read(_SIZE.size))
                # whole lists: marshal.load would read a file in many small pieces
                batch: list[PlanRow] = marshal.loads(file.read(size))  # noqa: S302 - our own file
                left -= len(batch)
                yield from batch
        finally:
            self.close()

    def close(self) -> None:
        self._batch = []
        if self._file is not None:
            self._file.close()
            self._file = None

    def _flush(self) -> None:
        if self._file is None or not self._batch:
            return
        try:
            data = marshal.dumps(self._batch)
            self._file.write(_SIZE.pack(len(data)))
            self._file.write(data)
        except OSError as exc:
            self._give_up(exc)
        self._batch = []
        self._chars = 0

    def _give_up(self, exc: OSError) -> None:
        log.info("the plan spool gave up (%s); the job will be resolved again", exc)
        self.close()
