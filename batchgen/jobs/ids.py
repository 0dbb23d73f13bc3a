"""Request ids that clash: found over millions of ids in a few MB, whatever the count.

Two ids clash when they are equal, or equal but for case: on macOS and
Windows file systems ``texts/Foo.md`` and ``texts/foo.md`` are one file, so
one answer would silently overwrite the other.

Holding every id in a set costs ~100 bytes an id (100 MB at a million). This
keeps an 8-byte digest of each case-folded id instead, split as it comes by
its low bits into :data:`BUCKETS` buckets; a bucket that holds :data:`SPILL`
digests writes them to an unlinked temporary file (as the plan's spool
does), so memory stays at a few MB at any size. At the end each bucket is
sorted and its repeated digests found; the caller reads the job again only
to name the ids that have one.
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

BUCKETS = 64
SPILL = 1 << 13  # digests a bucket holds before they are written out (64 KB)


def fold_key(request_id: str) -> int:
    """A stable 64-bit digest of the case-folded id."""
    digest = hashlib.blake2b(request_id.casefold().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class ClashFinder:
    """``add(id)`` for each id, then ``repeated()``: the digests that occur twice."""

    def __init__(self) -> None:
        self.held = [array("q") for _ in range(BUCKETS)]
        self.spilled: list[list[tuple[int, int]]] = [[] for _ in range(BUCKETS)]
        self._file: IO[bytes] | None = None

    def add(self, request_id: str) -> None:
        key = fold_key(request_id)
        bucket = self.held[key & (BUCKETS - 1)]
        bucket.append(key)
        if len(bucket) >= SPILL:
            self._spill(key & (BUCKETS - 1))

    def _spill(self, b: int) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="batchgen-ids-")  # noqa: SIM115
        self._file.seek(0, 2)
        self.spilled[b].append((self._file.tell(), len(self.held[b])))
        self.held[b].tofile(self._file)
        del self.held[b][:]

    def repeated(self) -> set[int]:
        """The digests of case-folded ids that occur more than once."""
        try:
            found: set[int] = set()
            for b in range(BUCKETS):
                keys = self.held[b]
                for offset, n in self.spilled[b]:
                    assert self._file is not None  # noqa: S101 - spilled implies a file
                    self._file.seek(offset)
                    keys.fromfile(self._file, n)
                ordered = sorted(keys)
                found.update(a for a, c in itertools.pairwise(ordered) if a == c)
                self.held[b] = array("q")
            return found
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None


def clash_problems(requests: Iterable[Request], repeated: set[int]) -> Iterator[Problem]:
    """Read the requests again and name each clash with both its lines (only
    ids whose digest is among ``repeated`` are looked at)."""
    first: dict[str, Request] = {}
    for req in requests:
        if fold_key(req.id) not in repeated:
            continue
        folded = req.id.casefold()
        earlier = first.setdefault(folded, req)
        if earlier is req:
            continue
        where = f"line {line_of_source(earlier.source)}" if earlier.source.rsplit(":", 1)[0] == \
            req.source.rsplit(":", 1)[0] else earlier.source
        if earlier.id == req.id:
            message = f"duplicate id {req.id!r} (first on {where}): ids must be unique in a job"
        else:
            message = (f"id {req.id!r} differs from {earlier.id!r} ({where}) only in case: on "
                       "macOS and Windows both name the same file in texts/; rename one")
        yield Problem(req.source.rsplit(":", 1)[0], line_of_source(req.source), "id", message)


def line_of_source(source: str) -> int | None:
    tail = source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None
