"""Clashing ids found at any size: in memory, and spilled to disk in buckets."""

from __future__ import annotations

import pytest

from batchgen.jobs import ids
from batchgen.jobs.ids import ClashFinder


@pytest.mark.parametrize("chunk", [1 << 16, 64, 7])
def test_repeats_and_case_variants_are_found_wherever_they_stand(
        monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(ids, "CHUNK", chunk)
    monkeypatch.setattr(ids, "_SPILL", max(2, chunk // 8))
    finder = ClashFinder()
    names = [f"r{i}" for i in range(5_000)]
    names[4_321] = "r17"  # the same id far apart
    names[999] = "R2500"  # equal to r2500 but for case
    for name in names:
        finder.add(name)
    assert finder.positions() == {17, 4_321, 999, 2_500}


def test_no_clash_no_position() -> None:
    finder = ClashFinder()
    for i in range(1_000):
        finder.add(f"id-{i}")
    assert finder.positions() == set()
