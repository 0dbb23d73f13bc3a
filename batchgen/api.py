"""batchgen from Python: :func:`run` and :func:`arun`, the same engine, run
directory, resume, lock and report as ``batchgen run``.

::

    import batchgen
    result = batchgen.run("jobs/translate.yaml", concurrency=4)
    result.counts            # {"done": 120, "failed": 0, "pending": 0}
    result.cost              # {"CNY": 0.42}
    df = result.to_pandas()  # the table, in data order

``job`` is a job-file path or a dict of the same schema; ``rows=`` (an
iterable of dicts, or a pandas DataFrame) stands in for the job's ``data:``.
Errors are the CLI's, raised from batchgen's error tree with the same
messages (:class:`~batchgen.errors.JobFileError` carries its ``problems``).

:func:`run` works in a script and where an event loop already runs (a
Jupyter cell): the run gets an event loop of its own in a worker thread, and
the calling thread waits. Ctrl-C (a notebook's interrupt) stops the run as
SIGINT stops the CLI — what streams is recorded, the outputs are written —
then raises ``KeyboardInterrupt``; the next call resumes. A second Ctrl-C
stops waiting at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from batchgen.engine.progress import make_progress
from batchgen.engine.runner import Runner, RunOptions
from batchgen.engine.summary import RunSummary
from batchgen.errors import ExitCode, JobFileError, Problem, UsageError
from batchgen.jobs.headers import check_header
from batchgen.jobs.load import DICT_JOB, Job, Overrides, load_job, load_job_dict
from batchgen.jobs.schema import MAX_CONCURRENCY
from batchgen.jobs.shards import parse_shard
from batchgen.jobs.tables import frame_types
from batchgen.outputs.report import build_report
from batchgen.outputs.table import arrow_table, settings_of, shape_of, typed_rows
from batchgen.outputs.table import rows as table_rows
from batchgen.store.runstore import RunStore

__all__ = ["RunResult", "arun", "run"]

_OVERRIDES = {f.name for f in fields(Overrides)} - {"data", "allowed_key_envs"}


@dataclass
class RunResult:
    """What a run did: where it wrote, how its requests ended, what it cost."""

    run_dir: Path
    exit_code: int
    counts: dict[str, int]  # done, failed, pending: the job's requests now
    cost: dict[str, float]  # by currency, every attempt of the run directory
    summary: RunSummary = field(repr=False)

    @property
    def ok(self) -> bool:
        """Every request of the job is done."""
        return self.exit_code == ExitCode.OK

    def rows(self) -> list[dict[str, Any]]:
        """The table as dicts, in data order (one per request for a job
        without ``data:``): the kept input columns, then ``id``, ``status``,
        ``content``, ``reasoning``, ``finish_reason``, ``prompt_tokens``,
        ``completion_tokens``, ``cost``, ``error``."""
        return list(self.iter_rows())

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """The same rows, one at a time (a million rows need not sit in memory)."""
        with RunStore.reading(self.run_dir) as store:
            yield from typed_rows(store)

    def to_pandas(self) -> Any:
        """The table as a pandas DataFrame (needs pandas). For Parquet data, as
        pandas reads ``table.parquet``: the input columns in their types."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from None
        with RunStore.reading(self.run_dir) as store:
            typed = arrow_table(store)
            if typed is not None:
                return typed.to_pandas()
            shape = shape_of(store, settings_of(store))
            return pd.DataFrame(list(table_rows(store, shape)), columns=shape.columns)


def run(job: str | os.PathLike[str] | Mapping[str, Any], *,
        rows: Iterable[Mapping[str, Any]] | Any | None = None, progress: bool = True,
        **overrides: Any) -> RunResult:
    """Run ``job`` to its end and return what it did (see the module's doc).

    ``overrides`` are the CLI's flags: ``name``, ``out``, ``model``, ``base_url``,
    ``allow_http``, ``api_key_env``, ``concurrency``, ``local``, ``max_cost``, ``currency``,
    ``shard`` (``"K/N"``, ``"index/N"`` or ``(K, N)``), ``via``, ``fallback``,
    ``no_wait``, ``media_root``, ``headers`` (``{"Name": "value"}``, each as
    ``--header``); and ``force``. They are checked as the flags are.
    """
    force = bool(overrides.pop("force", False))
    ov = _overrides(overrides)
    with _rows_file(rows) as rows_path:
        loaded = _load(job, _with_rows(ov, rows, rows_path), rows_path)
        return _in_worker_thread(loaded, progress, force)


async def arun(job: str | os.PathLike[str] | Mapping[str, Any], *,
               rows: Iterable[Mapping[str, Any]] | Any | None = None, progress: bool = True,
               **overrides: Any) -> RunResult:
    """:func:`run` for async code: the run shares the caller's event loop.
    Cancelling the awaiting task stops the run cleanly, then re-raises."""
    force = bool(overrides.pop("force", False))
    ov = _overrides(overrides)
    with _rows_file(rows) as rows_path:
        loaded = await asyncio.to_thread(_load, job, _with_rows(ov, rows, rows_path),
                                         rows_path)
        runner = Runner(loaded, _options(loaded, progress, force))
        task = asyncio.ensure_future(runner.run())
        try:
            summary = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                runner.interrupt.trigger()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            raise
        finally:
            loaded.discard_spool()
        return _result(summary)


# ------------------------------------------------------------------ helpers


def _overrides(given: dict[str, Any]) -> Overrides:
    unknown = sorted(set(given) - _OVERRIDES)
    if unknown:
        raise TypeError(f"unknown setting(s) {', '.join(unknown)}; a run takes "
                        f"{', '.join(sorted(_OVERRIDES | {'force', 'rows', 'progress'}))}")
    given = {k: v for k, v in given.items() if v is not None}
    for key, value in given.items():
        if isinstance(value, str) and not value.strip():
            raise UsageError(f"{key}={value!r} is empty (an unset variable?): give it a value, "
                             "or leave it out")
    shard = given.get("shard")
    if isinstance(shard, str):  # "K/N" or "index/N", as --shard takes it
        given["shard"] = parse_shard(shard)
    elif shard is not None:
        try:
            k, n = (int(x) for x in shard)
        except (TypeError, ValueError):
            raise UsageError(f"shard={shard!r}: give (K, N) or 'K/N'") from None
        if not 1 <= k <= n:
            raise UsageError(f"shard={shard!r}: K must be from 1 to N")
        given["shard"] = (k, n)
    concurrency = given.get("concurrency")
    if concurrency is not None and (type(concurrency) is not int
                                    or not 1 <= concurrency <= MAX_CONCURRENCY):
        raise UsageError(f"concurrency={concurrency!r}: a whole number from 1 to "
                         f"{MAX_CONCURRENCY}")
    max_cost = given.get("max_cost")
    if max_cost is not None and (isinstance(max_cost, bool)
                                 or not isinstance(max_cost, int | float) or not max_cost > 0):
        raise UsageError(f"max_cost={max_cost!r}: a number above 0")
    if "headers" in given:
        given["headers"] = _headers(given["headers"])
    for key, allowed in (("via", ("stream", "batch")), ("fallback", ("batch", "stream"))):
        if key in given and given[key] not in allowed:
            raise UsageError(f"{key}={given[key]!r}: one of {', '.join(allowed)}")
    return Overrides(**given)


def _headers(given: Any) -> tuple[tuple[str, str], ...]:
    """``headers={"Name": "value"}``, checked as ``--header`` is."""
    if not isinstance(given, Mapping):
        raise UsageError(f"headers={given!r}: a mapping of header name to value")
    out = []
    for name, text in given.items():
        if not (isinstance(name, str) and isinstance(text, str)):
            raise UsageError(f"headers: {name!r}: a header's name and value are text")
        try:
            check_header(name, text)
        except ValueError as exc:
            raise UsageError(f"headers: {exc}") from None
        out.append((name, text))
    return tuple(out)


def _load(job: str | os.PathLike[str] | Mapping[str, Any], ov: Overrides,
          rows_path: Path | None) -> Job:
    """The job, validated; problems in a dict job carry no line (the lines of
    its JSON text mean nothing to its writer), and those in ``rows=`` name
    ``rows`` and the row's number."""
    try:
        if isinstance(job, Mapping):
            return load_job_dict(dict(job), ov, for_run=True)
        return load_job(job, ov, for_run=True)
    except JobFileError as exc:
        problems = [Problem("rows" if rows_path and p.file == str(rows_path) else p.file,
                            None if p.file == DICT_JOB else p.line, p.key, p.message)
                    for p in exc.problems]
        raise JobFileError(problems, truncated=exc.truncated) from None


def _options(job: Job, progress: bool, force: bool) -> RunOptions:
    return RunOptions(progress=make_progress(job.name, "widget" if progress else "quiet"),
                      force=force, handle_signals=False)


def _in_worker_thread(job: Job, progress: bool, force: bool) -> RunResult:
    """Run in a thread with its own event loop (a caller's loop may be running,
    and signal handlers belong to the main thread); Ctrl-C here stops it."""
    runner = Runner(job, _options(job, progress, force))
    loop: asyncio.AbstractEventLoop | None = None
    outcome: dict[str, Any] = {}
    ready = threading.Event()
    finished = threading.Event()  # not Thread.join: a KeyboardInterrupt inside join()
    # can leave the thread marked as ended while it still runs (CPython 3.11)

    def work() -> None:
        nonlocal loop
        try:
            with asyncio.Runner() as aio:
                loop = aio.get_loop()
                ready.set()
                outcome["summary"] = aio.run(runner.run())
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            ready.set()
            job.discard_spool()
            finished.set()

    thread = threading.Thread(target=work, name=f"batchgen-{job.name}", daemon=True)
    thread.start()
    try:
        _wait(finished)
    except KeyboardInterrupt:
        ready.wait()
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(runner.interrupt.trigger)
        _wait(finished)  # a second Ctrl-C leaves at once: the store is consistent at every commit
        raise
    error = outcome.get("error")
    if isinstance(error, asyncio.CancelledError):
        raise KeyboardInterrupt
    if error is not None:
        raise error
    summary: RunSummary = outcome["summary"]
    if summary.stopped_by == "interrupt":
        raise KeyboardInterrupt
    return _result(summary)


def _wait(finished: threading.Event) -> None:
    while not finished.wait(0.1):
        pass


def _result(summary: RunSummary) -> RunResult:
    with RunStore.reading(summary.run_dir) as store:
        counts = store.counts()
    report = build_report([summary.run_dir])
    cost = {t["currency"]: t["cost"] for t in report.totals}
    return RunResult(run_dir=summary.run_dir, exit_code=int(summary.exit_code),
                     counts={k: counts[k] for k in ("done", "failed", "pending")},
                     cost=cost, summary=summary)


def _with_rows(ov: Overrides, given: Any, rows_path: Path | None) -> Overrides:
    """The flags, with ``rows=`` as the job's data (and a DataFrame's types)."""
    if rows_path is None:
        return ov
    return replace(ov, data=rows_path, data_types=frame_types(given))


@contextlib.contextmanager
def _rows_file(given: Any) -> Iterator[Path | None]:
    """``rows=`` written to a JSONL file the job reads as its data (a
    DataFrame's values as JSON holds them); removed after the run."""
    if given is None:
        yield None
        return
    records = given.to_dict("records") if hasattr(given, "to_dict") \
        and hasattr(given, "columns") else given
    with tempfile.TemporaryDirectory(prefix="batchgen-rows-") as tmp:
        path = Path(tmp) / "rows.jsonl"
        n = 0
        with path.open("w", encoding="utf-8") as fh:
            for n, row in enumerate(records, start=1):
                if not isinstance(row, Mapping):
                    raise TypeError(f"rows: row {n} is a {type(row).__name__}, not a dict")
                fh.write(json.dumps({str(k): _plain(v) for k, v in row.items()},
                                    ensure_ascii=False) + "\n")
        if n == 0:
            raise JobFileError([Problem("rows", None, None,
                                        "no rows: give at least one, or leave rows= out")])
        yield path


def _plain(value: Any) -> Any:
    """A DataFrame cell as JSON holds it: NumPy scalars as numbers, arrays as
    lists, times in ISO 8601, and a missing value (NaN, and with pandas NaT and
    NA) as null — not the text "NaT" or "<NA>" in a prompt."""
    pandas = sys.modules.get("pandas")  # a DataFrame was given: pandas is loaded
    if pandas is not None and pandas.api.types.is_scalar(value) and pandas.isna(value):
        return None
    tolist = getattr(value, "tolist", None)
    ndim = getattr(value, "ndim", None)
    if callable(tolist) and isinstance(ndim, int) and ndim > 0:
        return tolist()  # a NumPy array in a cell
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str | bytes):
        with contextlib.suppress(TypeError, ValueError):
            value = item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    iso = getattr(value, "isoformat", None)
    return iso() if callable(iso) else str(value)
