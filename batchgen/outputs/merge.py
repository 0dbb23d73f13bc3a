"""``batchgen merge <output_dir>/<name>``: shard directories back into one job.

Every shard's finished requests, in job order (positions are the whole job's,
so the shards' results interleave back exactly), become the job directory's
``results.jsonl`` and ``texts/``; their failed requests its ``failed.jsonl``;
one report over all shards its ``report.md``, ``report.json`` and
``report.html``; for a job with ``data:``, the table of every row, in data
order, at ``output.table`` or ``table.<ext>``. The outputs are byte for byte
those of the same job run unsharded.

Shards made from different versions of the job — a prompt changed, or
prompts appended, between one shard's run and another's; or a different N —
are refused: their outputs do not belong together. A set with shards missing,
still running, or with requests left to do is merged as far as it is done,
and the summary names what is incomplete.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.cost.pricing import PriceBook, StoreCosts, overrides_from_json
from batchgen.errors import StoreError, UsageError
from batchgen.jobs.shards import find_shards
from batchgen.outputs.audio import seconds_of, wav_path
from batchgen.outputs.files import (
    failed_entry,
    jsonl,
    pretty_json,
    result_line,
    text_files,
    write_atomic,
    write_many_atomic,
    write_reports_for,
)
from batchgen.outputs.table import settings_of, write_merged
from batchgen.store.lock import RunLock
from batchgen.store.runstore import RunStore

TEXT_BATCH = 500  # texts/ files written (and synced) together


@dataclass
class MergeSummary:
    job_dir: Path
    shards: int
    expected: int
    done: int = 0
    failed: int = 0
    incomplete: list[str] = field(default_factory=list)  # why each incomplete shard is
    table: Path | None = None  # a job with data: its table, every shard's rows in data order


def merge(job_dir: Path) -> MergeSummary:
    shards = find_shards(job_dir)
    if not shards:
        raise UsageError(f"{job_dir} holds no shard directories (shard-K-of-N); run with "
                         "--shard K/N first")
    if (job_dir / "run.db").exists():
        raise UsageError(f"{job_dir} holds an unsharded run (run.db): merging shards there "
                         "would overwrite its outputs")
    sizes = {n for _, n in shards}
    if len(sizes) > 1:
        raise UsageError(f"{job_dir} holds shards of different splits ({_names(shards)}): "
                         "merge the shards of one N (remove the others)")
    (n,) = sizes
    for path in shards.values():
        if not (path / "run.db").exists():
            raise StoreError(f"{path} holds no run.db")
    with contextlib.ExitStack() as opened:
        stores = {key: opened.enter_context(contextlib.closing(RunStore.open_readonly(path)))
                  for key, path in shards.items()}
        _check_versions(stores, shards)
        summary = MergeSummary(job_dir, len(shards), n)
        summary.incomplete = [f"shard-{k}-of-{n}: missing" for k in range(1, n + 1)
                              if (k, n) not in shards]
        for (k, _), path in shards.items():
            counts = stores[(k, n)].counts()
            if RunLock.is_held(path):
                summary.incomplete.append(f"{path.name}: still running")
            elif counts["pending"]:
                n = counts["pending"]
                summary.incomplete.append(f"{path.name}: {n} request{'s' if n != 1 else ''} "
                                          "not done")
        with RunLock(job_dir):
            _write(job_dir, shards, stores, summary)
        return summary


def _names(shards: dict[tuple[int, int], Path]) -> str:
    return ", ".join(p.name for p in shards.values())


def _check_versions(stores: dict[tuple[int, int], RunStore],
                    shards: dict[tuple[int, int], Path]) -> None:
    """All shards from one version of the job, and no request in two of them."""
    versions: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for key, store in stores.items():
        job = json.loads(store.meta("job") or "{}")
        digest = job.get("digest") or "unknown"
        versions.setdefault(digest, []).append(shards[key].name)
        sizes[digest] = job.get("requests", 0)
    if len(versions) > 1:
        groups = "; ".join(f"{', '.join(names)} from a version with {sizes[d]} requests"
                           for d, names in versions.items())
        raise UsageError(
            f"the shards were made from different versions of the job ({groups}): a prompt "
            "changed or was added between their runs. Run every shard again with the same "
            "job file, then merge")
    seen: dict[str, tuple[str, str]] = {}
    for key, store in stores.items():
        for rid, fingerprint in store.planned():
            if rid in seen:
                other, _ = seen[rid]
                raise UsageError(f"request {rid!r} is in {other} and in {shards[key].name}: "
                                 "these shards do not come from one split of one job")
            seen[rid] = (shards[key].name, fingerprint)


def _write(job_dir: Path, shards: dict[tuple[int, int], Path],
           stores: dict[tuple[int, int], RunStore], summary: MergeSummary) -> None:
    (job_dir / "texts").mkdir(parents=True, exist_ok=True)
    for store in stores.values():
        StoreCosts(store, PriceBook(overrides_from_json(store.meta("pricing"))))

    def results() -> Iterator[bytes]:
        pending: list[tuple[str, bytes]] = []
        streams = [_done(store, shards[key]) for key, store in stores.items()]
        for _, rid, line, content, reasoning, value, wav in heapq.merge(*streams):
            summary.done += 1
            pending += text_files(job_dir, rid, content, reasoning, value)
            if wav is not None:
                _copy_atomic(wav, job_dir / "audio" / wav.name)
            if len(pending) >= TEXT_BATCH:
                write_many_atomic(pending)
                pending = []
            yield line
        write_many_atomic(pending)

    def failed() -> Iterator[bytes]:
        streams = [_failed(store, shards[key]) for key, store in stores.items()]
        for _, _, line, partial in heapq.merge(*streams):
            summary.failed += 1
            if partial is not None:  # a loop's text, kept when the guard stopped it
                _copy_atomic(partial, job_dir / "texts" / partial.name)
            yield line

    try:
        write_atomic(job_dir / "results.jsonl", results())
        write_atomic(job_dir / "failed.jsonl", failed())
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"a shard's run.db cannot be read ({exc})") from None
    write_reports_for(job_dir, list(shards.values()))
    if any(settings_of(store) is not None for store in stores.values()):  # a job with data:
        summary.table = write_merged(list(stores.values()), job_dir)


def _done(store: RunStore, shard: Path
          ) -> Iterator[tuple[int, str, bytes, str, str, str | None, Path | None]]:
    """A shard's answers in job order, as the unsharded run exports them: the
    result line, the texts (with the JSON value of an answer to a schema) and
    the speech file (positions are unique: the tuples never compare further)."""
    speech = (shard / "audio").is_dir()
    for row in store.done_in_order(with_cost=True):
        line = result_line(row, True)
        wav = wav_path(shard, row["id"]) if speech else None
        if wav is not None and wav.exists():
            line["audio"] = f"audio/{wav.name}"
            line["audio_seconds"] = seconds_of(wav)
        else:
            wav = None
        value = pretty_json(line["json"]) if "json" in line else None
        yield (row["position"], row["id"], jsonl(line), line["content"],
               line.get("reasoning_content", ""), value, wav)


def _copy_atomic(source: Path, dest: Path) -> None:
    """``dest`` becomes a copy of ``source``, whole or not at all."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, dest)


def _failed(store: RunStore, shard: Path) -> Iterator[tuple[int, str, bytes, Path | None]]:
    for row in store.failed_in_order():
        partial = shard / "texts" / f"{row['id']}.partial.md"
        yield (row["position"], row["id"], jsonl(failed_entry(row)),
               partial if partial.exists() else None)
