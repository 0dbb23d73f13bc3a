"""Files derived from the run store: texts/, results.jsonl, failed.jsonl.

Every file is written to a temporary file in the same directory, fsynced and
then renamed over the old one, so a reader never sees half a file and a crash
never leaves one. The store is the truth: each of these can be rebuilt from it.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from batchgen.cost.pricing import PriceBook, StoreCosts
from batchgen.jobs import structured
from batchgen.jobs.schema import ID_RE
from batchgen.jobs.structured import answer_value
from batchgen.outputs.audio import seconds_of, wav_path
from batchgen.store.runstore import RunStore

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()
StrPath = str | os.PathLike[str]


def write_atomic(path: Path, chunks: Iterable[bytes] | bytes) -> None:
    """Write ``path`` so that it holds either the old or the whole new content
    (through :func:`replacing`)."""
    with replacing(path) as tmp, tmp.open("wb") as fh:
        if isinstance(chunks, bytes):
            fh.write(chunks)
        else:
            for chunk in chunks:
                fh.write(chunk)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary file to write what goes to ``path`` (any output, and the
    files a user names: ``batchgen export -o``, ``output.table``); when the
    block ends without an error, it becomes ``path``.

    A regular file (or none yet) is replaced atomically: the temporary file,
    beside it, is synced and renamed over it; through a symlink, the file it
    points to. ``-`` is standard output,
    and a pipe, a terminal or a device (``/dev/stdout``, a FIFO) is written
    through, appended to: renaming over it would put a file in its place.
    """
    stream = str(path) == "-"
    special = written_through(path)
    real = path if special else Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(dir=None if special else real.parent,
                               prefix=f".{real.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        if special:
            with open(tmp, "rb") as src, \
                    contextlib.nullcontext(sys.stdout.buffer) if stream \
                    else open(path, "ab") as dst:
                shutil.copyfileobj(src, dst)
                dst.flush()
            os.unlink(tmp)
        else:
            os.chmod(tmp, _MODE)  # mkstemp makes 0600; results are ordinary files
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def written_through(path: Path) -> bool:
    """Whether :func:`replacing` writes ``path`` through rather than replacing
    it: whether ``path`` is there and is no regular file (nor a link to one), or
    is one only as what a process's open file points to (``/dev/stdout``
    redirected to a file, ``/dev/fd/N``, ``/proc/self/fd/N``)."""
    if str(path) == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) or str(path).startswith(OPEN_FILES)


# names of a process's open files: a file reached through one is written into
OPEN_FILES = ("/dev/stdout", "/dev/stderr", "/dev/fd/", "/proc/")


def _syncfs(fd: int) -> bool:
    """Flush every dirty page of the file system holding ``fd`` (Linux syncfs).

    One call makes a whole batch of files durable; an fsync each costs about
    a millisecond here, which capped short-request runs at ~300 files/s.
    """
    syncfs = _syncfs_function()
    return syncfs is not None and syncfs(fd) == 0


@functools.cache
def _syncfs_function() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux: an fsync per file instead
        return None


def temp_of(path: StrPath) -> str:
    """The temporary file :func:`write_many_atomic` writes ``path`` through.

    The run dir is locked to this process and this is its one writer, so a
    name of its own is unique without mkstemp's random tries. Plain string
    operations: a ``Path`` built for each answer's files cost ~20 µs of the
    writer thread's ~60 µs an answer (bench P7).
    """
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.tmp")


def reserve_temp(path: StrPath) -> None:
    """Create ``path``'s temporary file now, empty, for :func:`write_many_atomic`
    to fill later: it opens the file again without creating it.

    Creating a file is what writing a small one costs on many file systems
    (an inode to allocate: 0.5 ms of CPU per file on an ext4 without a
    journal that we measured, a round trip on NFS; writing and renaming it
    took 25 µs). A run creates an answer's file while the answer streams,
    so the answers that finish last wait only for the write.
    """
    fd = os.open(temp_of(path), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, _MODE)
    os.close(fd)


def write_many_atomic(items: Sequence[tuple[StrPath, bytes]]) -> None:
    """Like :func:`write_atomic` for many files of one folder, with one sync.

    Every file is written to a temporary file, all are made durable (one
    ``syncfs``, or an fsync each where that is missing), and only then renamed.
    """
    if not items:
        return
    items = list(dict(items).items())  # a path given twice: its last content
    folder = os.path.dirname(os.fspath(items[0][0])) or "."
    temps: list[tuple[str, StrPath]] = []
    try:
        for path, data in items:
            tmp = temp_of(path)  # an empty one reserve_temp made is used as it is
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, _MODE)
            temps.append((tmp, path))
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            if not _syncfs(dir_fd):
                for tmp, _ in temps:
                    with open(tmp, "rb") as fh:
                        os.fsync(fh.fileno())
            for tmp, path in temps:
                os.replace(tmp, path)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def clean_temp(run_dir: Path) -> None:
    """Remove temp files a killed process left behind (never a finished file)."""
    for folder in (run_dir, run_dir / "texts"):
        if folder.is_dir():
            for tmp in folder.glob(".*.tmp"):
                with contextlib.suppress(OSError):
                    tmp.unlink()


REASONING = ".reasoning.md"  # texts/<id>.reasoning.md


def text_name(request_id: str, kind: str = ".md") -> str:
    """The name in texts/ of an answer (``.md``), its reasoning
    (``.reasoning.md``) or its JSON value (``.json``) — ids are checked again
    here: they name files."""
    if not ID_RE.match(request_id):  # the job loader refuses these first
        raise ValueError(f"unsafe request id {request_id!r}")
    return request_id + kind


def text_path(run_dir: Path, request_id: str, reasoning: bool = False) -> Path:
    """texts/<id>.md, or texts/<id>.reasoning.md."""
    return run_dir / "texts" / text_name(request_id, REASONING if reasoning else ".md")


def text_files(run_dir: StrPath, request_id: str, content: str, reasoning: str,
               value_json: str | None = None) -> list[tuple[str, bytes]]:
    """texts/<id>.md, and texts/<id>.reasoning.md and texts/<id>.json where
    there is reasoning, or a JSON value (an answer to a schema)."""
    texts = os.path.join(run_dir, "texts")
    files = [(os.path.join(texts, text_name(request_id)), content.encode("utf-8"))]
    if reasoning:
        files.append((os.path.join(texts, text_name(request_id, REASONING)),
                      reasoning.encode("utf-8")))
    if value_json is not None:
        files.append((os.path.join(texts, text_name(request_id, ".json")),
                      value_json.encode("utf-8")))
    return files


def pretty_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"


def jsonl(obj: dict[str, Any]) -> bytes:
    """One JSON line, UTF-8. U+2028 / U+2029 are escaped: they are valid inside
    JSON strings, but readers that split lines the Unicode way (Python's
    ``str.splitlines``, some JSONL tools) would cut a record in two there."""
    text = json.dumps(obj, ensure_ascii=False)
    if "\u2028" in text or "\u2029" in text:
        text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return (text + "\n").encode("utf-8")


def _usage(row: Any) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "total_tokens": row["total_tokens"],
    }
    if row["reasoning_tokens"] is not None:
        usage["reasoning_tokens"] = row["reasoning_tokens"]
    if row["cached_tokens"] is not None:
        usage["cached_tokens"] = row["cached_tokens"]
    if row["estimated"]:
        usage["estimated"] = True
    return usage


def _cost(row: Any) -> dict[str, Any] | None:
    if row["currency"] is None or row["cost"] is None:
        return None  # no price for this model: unknown, not 0
    cost: dict[str, Any] = {"amount": round(row["cost"], 8), "currency": row["currency"]}
    if row["cost_estimated"]:
        cost["estimated"] = True
    return cost


def _value(content: str) -> Any:
    try:
        return answer_value(content)
    except ValueError:  # checked when it finished; a store edited since: no value
        return None


def result_line(row: Any, with_cost: bool) -> dict[str, Any]:
    """One line of results.jsonl from a row of :meth:`RunStore.done_in_order`."""
    content = row["content"] or ""
    reasoning = row["reasoning"] or ""
    line: dict[str, Any] = {"id": row["id"], "model": row["model"], "content": content}
    if reasoning:
        line["reasoning_content"] = reasoning
    line["finish_reason"] = row["finish_reason"]
    if row["tool_calls"]:
        line["tool_calls"] = json.loads(row["tool_calls"])
    line["usage"] = _usage(row) if row["prompt_tokens"] is not None else None
    line["attempts"] = row["attempts"]
    segments = row["length_continuations"] or 0
    if (row["continuations"] or 0) > segments:  # resumes after a drop or a kill
        line["continuations"] = row["continuations"] - segments
    if segments:  # run.on_length: continue went on past the output cap this often
        line["length_continuations"] = segments
    if row["schema"] is not None:  # checked valid when it finished
        line["json"] = _value(content)
    line["fingerprint"] = row["fingerprint"]
    if row["tags"]:
        line["tags"] = json.loads(row["tags"])
    if with_cost:
        line["cost"] = _cost(row)
    return line


def failed_entry(row: Any) -> dict[str, Any]:
    """A failed request in job-file form, from a row of :meth:`RunStore.failed_in_order`.
    An answer to a schema: its ``schema`` and the ``schema_mode`` it was asked
    in, the messages as written (without the schema's instruction)."""
    body = json.loads(row["body"])
    if row["schema"] is not None:
        body = structured.as_written(body, json.loads(row["schema"]))
    entry: dict[str, Any] = {"id": row["id"], "model": body.pop("model"),
                             "messages": body.pop("messages"), **body}
    if row["tags"]:
        entry["tags"] = json.loads(row["tags"])
    return entry


def export_all(store: RunStore, run_dir: Path, book: PriceBook | None = None) -> dict[str, int]:
    """Rewrite results.jsonl and failed.jsonl; restore any missing texts/ file.

    With a price ``book``, each result carries its ``cost`` (all its attempts).
    """
    with_cost = book is not None
    if book is not None:
        StoreCosts(store, book)  # registers the bg_cost SQL functions
    texts = run_dir / "texts"
    texts.mkdir(parents=True, exist_ok=True)
    counts = {"done": 0, "failed": 0, "texts_restored": 0}
    speech = (run_dir / "audio").is_dir()  # a job with speech answers
    present = _names_in(texts)

    def missing(name: str) -> bool:
        return name not in present if present is not None else not (texts / name).exists()

    def results() -> Iterable[bytes]:
        for row in store.done_in_order(with_cost=with_cost):
            line = result_line(row, with_cost)
            wav = wav_path(run_dir, row["id"]) if speech else None
            if wav is not None and wav.exists():
                line["audio"] = f"audio/{wav.name}"
                line["audio_seconds"] = seconds_of(wav)
            counts["done"] += 1
            reasoning = line.get("reasoning_content", "")
            kinds = (".md", *((REASONING,) if reasoning else ()),
                     *((".json",) if "json" in line else ()))
            lost = {name for kind in kinds if missing(name := text_name(row["id"], kind))}
            if lost:  # only the files that are gone: the others stay as they are
                value = pretty_json(line["json"]) if "json" in line else None
                write_many_atomic([
                    (path, data) for path, data in text_files(
                        run_dir, row["id"], line["content"], reasoning, value)
                    if os.path.basename(path) in lost])
                counts["texts_restored"] += 1
            yield jsonl(line)

    def failed() -> Iterable[bytes]:
        for row in store.failed_in_order():
            counts["failed"] += 1
            yield jsonl(failed_entry(row))

    write_atomic(run_dir / "results.jsonl", results())
    write_atomic(run_dir / "failed.jsonl", failed())
    return counts


def files_stamp(run_dir: Path) -> str:
    """When an entry of texts/ or audio/ was last added, removed or renamed:
    each folder's inode and modification time. A run whose outputs are current
    skips the export; this is how it knows an answer's file was deleted since,
    with a stat a folder rather than a listing of a million answers."""
    stamps = []
    for folder in ("texts", "audio"):
        try:
            st = os.stat(run_dir / folder)
        except OSError:
            stamps.append("-")
        else:
            stamps.append(f"{st.st_ino}.{st.st_mtime_ns}")
    return ":".join(stamps)


LISTED_AT_MOST = 65_536  # names of texts/ held at once (~7 MB); beyond, a stat each


def _names_in(folder: Path) -> set[str] | None:
    """The names in ``folder``: one listing rather than a stat per answer
    (~10 µs each); ``None`` when there are more than LISTED_AT_MOST, whose
    names would take more memory than the stats take time."""
    names: set[str] = set()
    with os.scandir(folder) as entries:
        for entry in entries:
            names.add(entry.name)
            if len(names) > LISTED_AT_MOST:
                return None
    return names


def prepare_reports() -> threading.Thread:
    """Import and compile what report.html needs, in a thread of its own.

    A run starts this once its requests are under way: while they stream the
    process mostly waits, and the ~0.3 s this takes would otherwise come after
    the last answer. Drawing the report later finds it done (or waits for it).
    """
    def work() -> None:
        from batchgen.outputs.html import prepare

        prepare()

    thread = threading.Thread(target=work, name="batchgen-reports", daemon=True)
    thread.start()
    return thread


def write_reports(run_dir: Path) -> None:
    """report.md, report.json and report.html beside the results, after every run."""
    write_reports_for(run_dir, [run_dir])


def write_reports_for(out_dir: Path, run_dirs: list[Path]) -> None:
    """The reports of ``run_dirs`` (one run, or a job's merged shards) in ``out_dir``.

    Where ``GITHUB_STEP_SUMMARY`` names a file (a GitHub Actions job), the
    markdown report is also appended there: the job's summary page shows it.
    """
    from batchgen.outputs.html import render_html
    from batchgen.outputs.report import build_report, render

    report = build_report(run_dirs)
    markdown = render(report, "md")
    write_atomic(out_dir / "report.md", markdown.encode("utf-8"))
    write_atomic(out_dir / "report.json", render(report, "json").encode("utf-8"))
    write_atomic(out_dir / "report.html", render_html(report, run_dirs).encode("utf-8"))
    to_step_summary(markdown)


def to_step_summary(markdown: str | Path) -> None:
    """Append the markdown report (its text, or its file) to the GitHub Actions
    job's summary, where ``GITHUB_STEP_SUMMARY`` names its file."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if not summary:
        return
    try:  # a summary file not there (the variable passed into a container) fails no run
        if isinstance(markdown, Path):
            markdown = markdown.read_text(encoding="utf-8")
        with open(summary, "a", encoding="utf-8") as fh:
            fh.write(markdown + "\n")
    except OSError as exc:
        log.warning("the cost report was not added to GITHUB_STEP_SUMMARY (%s): %s; "
                    "report.md has it", summary, exc.strerror or exc)
