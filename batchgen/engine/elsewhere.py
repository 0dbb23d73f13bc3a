"""Provider batches a run left at another endpoint.

A batch can be looked up, collected or cancelled only at the endpoint it was
submitted to. Were the endpoint moved while one ran (``--base-url``, the job
file's ``endpoint``), the next run would buy its requests again at the new
endpoint and ask the new endpoint for the old batch, which it does not know.
So such a run is refused before anything is written (exit 2), naming the
batch and where it went; ``--force`` leaves the batch instead: its requests are
bought at the new endpoint, and what it answers is not collected.
"""

from __future__ import annotations

from pathlib import Path

from batchgen.errors import UsageError
from batchgen.store.batches import BatchRow, endpoint_of
from batchgen.store.runstore import RunStore

LISTED = 3  # batches named in the refusal; the rest are counted


def check_batches_here(run_dir: Path, base_url: str, force: bool) -> None:
    """Refuse a run at ``base_url`` while batches of ``run_dir`` it cannot look up
    are open elsewhere (unless ``force``). Reads the store; writes nothing."""
    if force or not (run_dir / "run.db").is_file():
        return
    with RunStore.reading(run_dir) as store:
        batches = store.batches(readonly=True)
        away = batches.elsewhere(base_url) if batches.exists() else []
    if not away:
        return
    named = "; ".join(f"batch {b.name} ({_requests(b)} of {b.model}) was submitted to "
                      f"{b.base_url}" for b in away[:LISTED])
    more = f" (and {len(away) - LISTED} more)" if len(away) > LISTED else ""
    one = len(away) == 1
    it, they = ("it", "it") if one else ("them", "they")
    targets = sorted({b.base_url or "" for b in away})
    raise UsageError(
        f"{named}{more}: not collected yet. This run's endpoint is {endpoint_of(base_url)}, "
        f"where {they} cannot be looked up. Collect {it} first: run with --base-url "
        f"{targets[0]} (or that endpoint in the job file) and --via batch"
        + (" at each of " + ", ".join(targets) if len(targets) > 1 else "")
        + f"; or run with --force to leave {it} (what {they} answer"
        f"{'s' if one else ''} is not collected, and {'its' if one else 'their'} requests "
        "are bought again here)")


def leave_batches_elsewhere(store: RunStore, base_url: str) -> list[str]:
    """With ``--force``: leave the batches open at other endpoints; a note each."""
    if not store.batches(readonly=True).exists():
        return []
    batches = store.batches()
    notes = []
    for b in batches.elsewhere(base_url):
        batches.leave(b, base_url)
        notes.append(f"left batch {b.name} ({_requests(b)} of {b.model}) at {b.base_url}: "
                     "what it answers is not collected, and its requests are bought here "
                     "(--force)")
    return notes


def _requests(b: BatchRow) -> str:
    return f"{b.requests} request{'s' if b.requests != 1 else ''}"
