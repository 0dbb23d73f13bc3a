"""Request ids that clash: found over millions of ids in a few MB, whatever the count.

Two ids clash when they are equal, or equal but for case: on macOS and
Windows file systems ``texts/Foo.md`` and ``texts/foo.md`` are one file, so
one answer would silently overwrite the other. And ``x.reasoning`` clashes
with ``x``: ``texts/x.reasoning.md`` is the answer of one and the reasoning
of the other.

Holding every id in a set costs ~100 bytes an id (100 MB at a million). This
keeps an 8-byte digest of each case-folded id instead, in memory up to
:data:`CHUNK` of them and beyond that in an unlinked temporary file (as the
plan's spool does). At the end the digests are split by their low bits into
buckets of about :data:`CHUNK` each, each bucket is sorted and its repeats
found; the positions holding a repeated digest are what the caller reads
again to name the clashing lines. Memory stays at a few MB at any size (it
was 16 bytes an id, 16 MB at a million, in the bitmap this replaced).
"""

from __future__ import annotations

import hashlib
import itertools
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from typing import IO

from batchgen.errors import Problem
from batchgen.jobs.records import Request

CHUNK = 1 << 16  # digests held in memory at once (512 KB), and about a bucket's size
_SPILL = 1 << 13  # digests a bucket gathers before they are written out


REASONING = ".reasoning"  # texts/<id>.reasoning.md holds an answer's reasoning


def file_stem(request_id: str) -> str:
    """What an id's files in texts/ are named by, as a case-blind file system
    sees it: case-folded, without ``.reasoning`` at its end."""
    folded = request_id.casefold()
    while folded.endswith(REASONING):
        folded = folded[:-len(REASONING)]
    return folded


def fold_key(request_id: str) -> int:
    """A stable 64-bit digest of the id's :func:`file_stem`."""
    folded = request_id.casefold()
    if folded.endswith(REASONING):  # rare: the call only then (millions of ids)
        folded = file_stem(folded)
    digest = hashlib.blake2b(folded.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class ClashFinder:
    """``add(id)`` in job order, then ``positions()``: where clashes may be."""

    def __init__(self) -> None:
        self.keys = array("q")  # the digests not yet written out
        self.count = 0
        self._file: IO[bytes] | None = None

    def add(self, request_id: str) -> None:
        self.keys.append(fold_key(request_id))
        self.count += 1
        if len(self.keys) >= CHUNK:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="batchgen-ids-")  # noqa: SIM115
            self.keys.tofile(self._file)
            del self.keys[:]

    def positions(self) -> set[int]:
        """Positions whose case-folded id digest occurs more than once."""
        try:
            if self._file is None:
                return _repeated_at(self.keys, _repeats(self.keys))
            self.keys.tofile(self._file)
            del self.keys[:]
            repeats = self._repeats_by_bucket(self._file)
            return _repeated_at(self._read(self._file), repeats) if repeats else set()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _read(self, file: IO[bytes]) -> Iterator[int]:
        file.seek(0)
        while True:
            chunk = array("q")
            chunk.frombytes(file.read(CHUNK * 8))
            if not chunk:
                return
            yield from chunk

    def _repeats_by_bucket(self, file: IO[bytes]) -> set[int]:
        buckets = 1 << max(0, (self.count // CHUNK).bit_length())
        mask = buckets - 1
        with tempfile.TemporaryFile(prefix="batchgen-ids-") as split:
            where: list[list[tuple[int, int]]] = [[] for _ in range(buckets)]
            held = [array("q") for _ in range(buckets)]

            def spill(b: int) -> None:
                where[b].append((split.tell(), len(held[b])))
                held[b].tofile(split)
                del held[b][:]

            for key in self._read(file):
                bucket = held[key & mask]
                bucket.append(key)
                if len(bucket) >= _SPILL:
                    spill(key & mask)
            repeats: set[int] = set()
            for b in range(buckets):
                keys = array("q", held[b])
                del held[b][:]
                for offset, n in where[b]:
                    split.seek(offset)
                    keys.fromfile(split, n)
                repeats |= _repeats(keys)
            return repeats


def _repeats(keys: array[int]) -> set[int]:
    ordered = sorted(keys)
    return {a for a, b in itertools.pairwise(ordered) if a == b}


def _repeated_at(keys: Iterable[int], repeats: set[int]) -> set[int]:
    return {i for i, key in enumerate(keys) if key in repeats} if repeats else set()


def clash_problems(requests: Iterable[Request], positions: set[int]) -> Iterator[Problem]:
    """Read the suspect requests again and name each clash with both its lines."""
    first: dict[str, Request] = {}
    for req in requests:
        if req.position not in positions:
            continue
        earlier = first.setdefault(file_stem(req.id), req)
        if earlier is req:
            continue
        where = f"line {line_of_source(earlier.source)}" if earlier.source.rsplit(":", 1)[0] == \
            req.source.rsplit(":", 1)[0] else earlier.source
        if earlier.id == req.id:
            message = f"duplicate id {req.id!r} (first on {where}): ids must be unique in a job"
        elif earlier.id.casefold() == req.id.casefold():
            message = (f"id {req.id!r} differs from {earlier.id!r} ({where}) only in case: on "
                       "macOS and Windows both name the same file in texts/; rename one")
        else:
            shorter, longer = sorted((earlier.id, req.id), key=len)
            message = (f"id {req.id!r} clashes with {earlier.id!r} ({where}): "
                       f"texts/{longer}.md would be both the answer of {longer!r} and the "
                       f"reasoning of {shorter!r} (texts/<id>.reasoning.md); rename one")
        yield Problem(req.source.rsplit(":", 1)[0], line_of_source(req.source), "id", message)


def line_of_source(source: str) -> int | None:
    tail = source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None
