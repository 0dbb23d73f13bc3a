"""Clashing ids found at any size: in memory, and spilled to disk in buckets."""

from __future__ import annotations

import pytest

from batchgen.jobs import ids
from batchgen.jobs.ids import ClashFinder


@pytest.mark.parametrize("spill", [1 << 13, 64, 2])
def test_repeats_and_case_variants_are_found_wherever_they_stand(
        monkeypatch: pytest.MonkeyPatch, spill: int) -> None:
    monkeypatch.setattr(ids, "SPILL", spill)
    finder = ClashFinder()
    names = [f"r{i}" for i in range(5_000)]
    names[4_321] = "r17"  # the same id far apart
    names[999] = "R2500"  # equal to r2500 but for case
    for name in names:
        finder.add(name)
    assert finder.repeated() == {ids.fold_key("r17"), ids.fold_key("r2500")}


def test_no_clash_no_position() -> None:
    finder = ClashFinder()
    for i in range(1_000):
        finder.add(f"id-{i}")
    assert finder.repeated() == set()
