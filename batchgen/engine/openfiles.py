"""How many streams the process may hold open: its open-file limit.

Every stream holds a socket, and a socket is an open file. Where the soft
limit (``ulimit -n``, 1024 by default on many systems) is below what
``run.concurrency`` needs, a run used to fail part-way: sockets, the answer
files and even Python's imports got ``EMFILE``, requests failed as
"unexpected error" and the run stopped as if the disk were broken. A run now
raises its soft limit as far as the hard limit allows (the soft limit is the
process's own to raise), and where even that is short it runs as many streams
at once as fit, and says so.
"""

from __future__ import annotations

# the run store and its WAL, the lock, the answer files being written, logs,
# imports, the reports: what the process holds open beside its streams
SPARE = 64


def fit_concurrency(concurrency: int) -> tuple[int, str | None]:
    """The concurrency the open-file limit allows (raising the soft limit
    toward ``concurrency + SPARE`` first), and a note when it is lower than asked."""
    try:
        import resource
    except ImportError:  # not a POSIX system: no limit to read
        return concurrency, None
    need = concurrency + SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return concurrency, None
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    except (ValueError, OSError):
        pass  # the limit stands as it was
    if soft >= need:
        return concurrency, None
    fits = max(1, soft - SPARE)
    return fits, (f"run.concurrency {concurrency} lowered to {fits}: this process may open "
                  f"{soft} files (ulimit -n) and each stream holds one; raise the limit "
                  f"(ulimit -n {need}) to run {concurrency} at once")
