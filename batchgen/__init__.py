"""batchgen: streamed, journaled, resumable batch runs against OpenAI-compatible chat APIs.

Public API::

    from batchgen import load_job, run_job
    job = load_job("jobs/essays.yaml")
    summary = run_job(job)
    print(summary.done, summary.failed, summary.exit_code)
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
    "RunSummary",
    "__version__",
    "load_job",
    "run_job",
]

if TYPE_CHECKING:
    from batchgen.engine.runner import RunOptions, RunSummary, run_job
    from batchgen.errors import BatchgenError, JobFileError
    from batchgen.jobs.load import Job, Overrides, load_job

_LAZY = {
    "BatchgenError": "errors",
    "JobFileError": "errors",
    "Job": "jobs.load",
    "Overrides": "jobs.load",
    "load_job": "jobs.load",
    "RunOptions": "engine.runner",
    "RunSummary": "engine.runner",
    "run_job": "engine.runner",
}


def __getattr__(name: str) -> Any:
    # Imported on first use so that `batchgen --help` starts fast.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'batchgen' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
