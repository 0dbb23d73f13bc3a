"""A run's record of the job it validated, so an unchanged job is not validated again.

Every run validates its whole job before it writes anything: ~25 µs a
prompt, so a resumed 1,000,000-prompt job waited ~25 s before it did
anything, on every resume. A run therefore keeps, in its store's meta, what
validating found (:class:`~batchgen.jobs.schema.JobInfo`) under a key of
everything validation depends on:

- the bytes of every source (the job file's text, each JSONL file read
  whole), hashed as they are at load time — a JSONL file whose size or mtime
  moved while it was read gives no key at all;
- what the job and the command line's flags resolve to: the endpoint's id,
  the defaults (``--model`` among them), the shard, the files' paths;
- the code that validates: every module of this package, and the versions
  of Python, pydantic-core, PyYAML and orjson.

The next run of the same job with the same key takes that record instead of
walking the prompts. Anything else in the key differing is a miss, and the
job is validated as always. Only ``batchgen run`` reuses a record;
``validate`` and ``--dry-run`` always read the whole job.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchgen.jobs.records import JobInfo
from batchgen.jobs.sources import Source, file_stat
from batchgen.jobs.spec import dump
from batchgen.store.runstore import peek_meta

if TYPE_CHECKING:
    from batchgen.jobs.load import Job

META_KEY = "validated"
_READ = 1 << 20


@functools.cache
def _code_key() -> bytes:
    """What validates: this package's modules and the libraries it validates with."""
    digest = hashlib.sha256(sys.version.encode())
    for name in ("pydantic_core", "yaml", "orjson"):  # all loaded by now
        version = getattr(importlib.import_module(name), "__version__", "-")
        digest.update(f"\0{name}={version}".encode())
    package = Path(__file__).resolve().parents[1]  # all of batchgen
    for module in sorted(package.rglob("*.py")):
        name = module.relative_to(package).as_posix()
        digest.update(b"\0" + name.encode() + b"\0" + module.read_bytes())
    return digest.digest()


def key_of(job: Job) -> str | None:
    """The key of ``job``'s inputs as they are now; ``None`` if a file is moving.

    Flags count by what they resolve to: ``--model`` by the defaults,
    ``--base-url`` and ``--local`` by the endpoint's id, ``--shard`` by the
    shard; the rest (concurrency, budget, ...) change no request.
    """
    digest = hashlib.sha256(_code_key())
    defaults = json.dumps(dump(job.defaults), sort_keys=True)
    settings = [job.endpoint_id, defaults, job.shard, str(job.path),
                [str(src.file) for src in job.sources]]
    digest.update(json.dumps(settings).encode())
    for src in job.sources:
        digest.update(b"\0source\0")
        if src.text is not None:
            digest.update(src.text.encode("utf-8", "surrogatepass"))
        # files matching a pattern: which ones is known only by walking them
        elif not src.watched or not _hash_file(src, digest):
            return None
    return digest.hexdigest()


def _hash_file(src: Source, digest: Any) -> bool:
    try:
        if file_stat(src.file) != src.stat:
            return False
        with src.file.open("rb") as fh:
            while piece := fh.read(_READ):
                digest.update(piece)
        return file_stat(src.file) == src.stat
    except OSError:
        return False


def still_valid(job: Job) -> bool:
    """Whether no JSONL source moved since it was first looked at (size, mtime)."""
    try:
        return all(file_stat(s.file) == s.stat for s in job.sources if s.watched)
    except OSError:
        return False


def recall(run_dir: Path, key: str) -> JobInfo | None:
    """What the last run in ``run_dir`` found validating inputs of this ``key``."""
    kept = peek_meta(run_dir, META_KEY)
    if kept is None:
        return None
    try:
        record = json.loads(kept)
        if record.get("key") != key:
            return None
        info = record["info"]
        return JobInfo(requests=int(info["requests"]), models=tuple(info["models"]),
                       files=tuple(info["files"]), plan_digest=str(info["plan_digest"]),
                       job_digest=str(info["job_digest"]),
                       job_requests=int(info["job_requests"]),
                       schema_modes=tuple((str(m), str(k)) for m, k in
                                          info.get("schema_modes", ())),
                       media_files=int(info.get("media_files", 0)),
                       columns=tuple(str(c) for c in info.get("columns", ())),
                       speech=bool(info.get("speech", False)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # an unreadable record is no record: validate


def record(key: str, info: JobInfo) -> str:
    """The meta value a run stores for the next one."""
    return json.dumps({"key": key, "info": asdict(info)}, ensure_ascii=False)
