"""batchgen: streamed, journaled, resumable batch runs against OpenAI-compatible chat APIs.

Public API::

    import batchgen
    result = batchgen.run("jobs/translate.yaml")       # or a dict; rows= a DataFrame
    print(result.counts, result.cost)                   # {"done": 3, ...} {"CNY": 0.01}
    table = result.rows()                                # the table, in data order
    result = await batchgen.arun("jobs/essays.yaml")    # in async code

Lower level: ``load_job`` (a validated :class:`Job`) and ``run_job`` (its
:class:`RunSummary`). Errors come from :class:`BatchgenError`'s tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "BatchgenError",
    "Job",
    "JobFileError",
    "Overrides",
    "RunOptions",
    "RunResult",
    "RunSummary",
    "UsageError",
    "__version__",
    "arun",
    "load_job",
    "run",
    "run_job",
]

if TYPE_CHECKING:
    from batchgen.api import RunResult, arun, run
    from batchgen.engine.runner import RunOptions, run_job
    from batchgen.engine.summary import RunSummary
    from batchgen.errors import BatchgenError, JobFileError, UsageError
    from batchgen.jobs.load import Job, Overrides, load_job

_LAZY = {
    "run": "api",
    "arun": "api",
    "RunResult": "api",
    "BatchgenError": "errors",
    "JobFileError": "errors",
    "UsageError": "errors",
    "Job": "jobs.load",
    "Overrides": "jobs.load",
    "load_job": "jobs.load",
    "RunOptions": "engine.runner",
    "RunSummary": "engine.summary",
    "run_job": "engine.runner",
}


def __getattr__(name: str) -> Any:
    # Imported on first use so that `batchgen --help` starts fast.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchgen' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
