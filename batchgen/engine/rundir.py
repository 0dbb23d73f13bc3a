"""Checks of a run directory before a run opens it: a file where its folder
has to be, a lost store beside finished answers, and answers that sit in the
job's other layout (shards, or none) where this run would not see them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from batchgen.errors import UsageError
from batchgen.jobs.shards import find_shards

if TYPE_CHECKING:
    from batchgen.jobs.load import Job


def check_answers_seen(job: Job, force: bool) -> None:
    """What a run (or its dry run) refuses so as not to buy answers again that
    it cannot see: another layout's (:func:`check_layout`), a lost store's
    (:func:`check_store_not_lost`)."""
    if job.job_dir is not None:
        check_layout(job.job_dir, job.shard, force)
    check_store_not_lost(job.run_dir, force)


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
        lost = not _has_store(run_dir) and _has_answers(run_dir)
    except OSError:
        return  # unreadable: the open below says what is wrong
    if lost and not force:
        state = "is empty" if db.exists() else "is missing"
        raise UsageError(
            f"{db} {state}, but {texts} holds finished answers: a run would buy every one "
            "of them again. Restore run.db from a backup, or run again with --force to "
            "start over (the texts are kept until overwritten)"
        )


def _has_store(run_dir: Path) -> bool:
    db = run_dir / "run.db"
    return db.exists() and db.stat().st_size > 0


def _has_answers(run_dir: Path) -> bool:
    texts = run_dir / "texts"
    return texts.is_dir() and any(p.suffix == ".md" for p in texts.iterdir())


def check_layout(job_dir: Path, shard: tuple[int, int] | None, force: bool) -> None:
    """Refuse a run that would buy again what the job's other layout answered.

    Each layout keeps its own store: the run without ``--shard`` in the job's
    directory, each shard of N in ``shard-K-of-N/``. A run started in a layout
    that has no store yet, while another one holds finished answers, sees none
    of them, and every request would be bought again: a cluster's shards, then
    one run without ``--shard`` to finish what is left; shards of 4 after
    shards of 2. Said before anything is written; ``--force`` goes on.
    """
    if force:
        return
    try:
        shards = find_shards(job_dir)
        if shard is None:
            if _has_store(job_dir):
                return
            answered = {kn: d for kn, d in shards.items() if _has_answers(d)}
            unsharded = False
        else:
            if any(_has_store(d) for (_, n), d in shards.items() if n == shard[1]):
                return  # shards of this N were started: that choice is made
            answered = {kn: d for kn, d in shards.items()
                        if kn[1] != shard[1] and _has_answers(d)}
            unsharded = _has_store(job_dir) and _has_answers(job_dir)
    except OSError:
        return  # unreadable: opening the store says what is wrong
    if not answered and not unsharded:
        return
    sizes = sorted({n for _, n in answered})
    names = [d.name for d in answered.values()]
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    there = " and ".join((["a run without --shard"] if unsharded else [])
                         + ([f"its shards {listed}"] if names else []))
    here = "without --shard" if shard is None else f"with --shard {shard[0]}/{shard[1]}"
    go_on = ("run without --shard" if unsharded else
             f"run as they ran, --shard K/{sizes[0]} for each K from 1 to {sizes[0]} (a shard "
             f"skips what it has done), then `batchgen merge {job_dir}`")
    raise UsageError(
        f"{job_dir} holds answers of this job from {there}; a run {here} does not see them "
        f"and would buy them again. To go on from them, {go_on}; or run again with --force "
        "to run it this way anyway")
