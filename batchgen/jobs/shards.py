"""Shards: one job run as N processes on as many machines, pods or array tasks.

``--shard K/N`` runs the requests whose id hashes to shard K: membership is
a stable hash of the id alone, so appending prompts to a job moves no request
that was already there to another shard. Each shard has its own run
directory, ``<output_dir>/<name>/shard-K-of-N/`` (its own run.db and lock),
and ``batchgen merge <output_dir>/<name>`` puts the shards back together.

``--shard index/N`` takes the 0-based index from ``JOB_COMPLETION_INDEX``
(Kubernetes Indexed Jobs) or ``BATCHGEN_SHARD_INDEX`` (set it from
``SLURM_ARRAY_TASK_ID`` in a Slurm array).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from batchgen.errors import UsageError

INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "BATCHGEN_SHARD_INDEX")
_DIR = re.compile(r"^shard-(\d+)-of-(\d+)$")


def parse_shard(text: str, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``"K/N"`` (1-based) or ``"index/N"`` (0-based index from the environment)."""
    env = os.environ if environ is None else environ
    left, slash, right = text.partition("/")
    if not slash or not right.strip().isdigit() or int(right) < 1:
        raise UsageError(f"--shard {text!r}: write K/N (1 <= K <= N), or index/N")
    n = int(right)
    if left.strip() == "index":
        found = next(((v, env[v]) for v in INDEX_VARIABLES if env.get(v, "").strip()), None)
        if found is None:
            raise UsageError(
                f"--shard index/{n}: set JOB_COMPLETION_INDEX (a Kubernetes Indexed Job sets "
                "it) or BATCHGEN_SHARD_INDEX to the 0-based shard index")
        variable, value = found
        if not value.strip().isdigit() or int(value) >= n:
            raise UsageError(f"--shard index/{n}: {variable}={value!r} is not an index "
                             f"from 0 to {n - 1}")
        return int(value) + 1, n
    if not left.strip().isdigit() or not 1 <= int(left) <= n:
        raise UsageError(f"--shard {text!r}: K must be from 1 to {n}")
    return int(left), n


def shard_of(request_id: str, n: int) -> int:
    """The 1-based shard of a request: a stable hash of its id, nothing else."""
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def shard_dir(job_dir: Path, k: int, n: int) -> Path:
    return job_dir / f"shard-{k}-of-{n}"


def find_shards(job_dir: Path) -> dict[tuple[int, int], Path]:
    """The shard directories under a job's directory, by (K, N)."""
    found = {}
    if job_dir.is_dir():
        for child in job_dir.iterdir():
            match = _DIR.match(child.name)
            if match and child.is_dir():
                found[(int(match[1]), int(match[2]))] = child
    return dict(sorted(found.items()))
