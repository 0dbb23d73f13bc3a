"""Request ids that clash: found over millions of ids in a few bytes per id.

Two ids clash when they are equal, or equal but for case: on macOS and
Windows file systems ``texts/Foo.md`` and ``texts/foo.md`` are one file, so
one answer would silently overwrite the other.

Holding every id in a set costs ~100 bytes an id (100 MB at a million). This
keeps an 8-byte digest of each case-folded id in an array instead, finds the
digests that occur twice with a bitmap of 64 bits per id (a first filter) and
a dict of the few candidates, and leaves the positions to look at again; the
caller re-reads only those to name the clashing lines.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator

from batchgen.errors import Problem
from batchgen.jobs.records import Request


def fold_key(request_id: str) -> int:
    """A stable 64-bit digest of the case-folded id."""
    digest = hashlib.blake2b(request_id.casefold().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class ClashFinder:
    """``add(id)`` in job order, then ``positions()``: where clashes may be."""

    def __init__(self) -> None:
        self.keys = array("q")

    def add(self, request_id: str) -> None:
        self.keys.append(fold_key(request_id))

    def positions(self) -> set[int]:
        """Positions whose case-folded id digest occurs more than once."""
        n = len(self.keys)
        if n < 2:
            return set()
        bits = max(1 << 16, 1 << (n * 64 - 1).bit_length())
        mask = bits - 1
        seen = bytearray(bits // 8)
        maybe: set[int] = set()
        for key in self.keys:
            slot = key & mask
            byte, bit = slot >> 3, 1 << (slot & 7)
            if seen[byte] & bit:
                maybe.add(slot)
            else:
                seen[byte] |= bit
        if not maybe:
            return set()
        counts: dict[int, int] = {}
        for key in self.keys:
            if key & mask in maybe:
                counts[key] = counts.get(key, 0) + 1
        twice = {key for key, count in counts.items() if count > 1}
        return {i for i, key in enumerate(self.keys) if key in twice}


def clash_problems(requests: Iterable[Request], positions: set[int]) -> Iterator[Problem]:
    """Read the suspect requests again and name each clash with both its lines."""
    first: dict[str, Request] = {}
    for req in requests:
        if req.position not in positions:
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
