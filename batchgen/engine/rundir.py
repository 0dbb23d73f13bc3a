"""Checks of a run directory before a run opens it: a file where its folder
has to be, and a lost store beside finished answers."""

from __future__ import annotations

from pathlib import Path

from batchgen.errors import UsageError


def file_in_the_way(run_dir: Path) -> Path | None:
    """The path that is not a directory where the run directory, or one of its
    parents, has to be (a user's slip, not a disk's refusal); ``None`` if none is."""
    for path in (run_dir, *run_dir.parents):
        try:
            if path.exists() and not path.is_dir():
                return path
        except OSError:
            return None
    return None


def check_store_not_lost(run_dir: Path, force: bool) -> None:
    """An empty or missing run.db beside finished texts means the journal was
    lost: a run would buy every answer again. Say so; go on only with --force."""
    db = run_dir / "run.db"
    texts = run_dir / "texts"
    try:
        lost = not db.exists() or db.stat().st_size == 0
        finished = next((p for p in texts.iterdir() if p.suffix == ".md"), None) \
            if lost and texts.is_dir() else None
    except OSError:
        return  # unreadable: the open below says what is wrong
    if finished is not None and not force:
        state = "is empty" if db.exists() else "is missing"
        raise UsageError(
            f"{db} {state}, but {texts} holds finished answers: a run would buy every one "
            "of them again. Restore run.db from a backup, or run again with --force to "
            "start over (the texts are kept until overwritten)"
        )
