"""Where a job's prompts come from, read and checked: the job file itself
(YAML, capped, parsed with line numbers; or JSONL), and a YAML job's
``prompts_file``. :func:`entries` walks one source's prompt objects, each with
where it stands in its file; :mod:`batchgen.jobs.load` turns them into requests.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from batchgen.errors import JobFileError, Problem
from batchgen.jobs.problems import from_validation, path_str, secret_problems
from batchgen.jobs.schema import JobSpec
from batchgen.jobs.yamlmarks import LineMap, YamlProblem, load_yaml, stream_items
from batchgen.jsonfast import loads

MAX_YAML_BYTES = 8 * 1024 * 1024
MAX_JSONL_BYTES = int(os.environ.get("BATCHGEN_MAX_JSONL_BYTES", str(4 * 1024**3)))
MAX_LINE_BYTES = 32 * 1024 * 1024
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class Source:
    """Where prompts come from: a YAML job's ``prompts:`` list, or a JSONL file.

    The YAML job's text is kept (it is capped at MAX_YAML_BYTES) and its list
    read again, an item at a time, on every walk: never a tree of all of them.
    """

    file: Path
    text: str | None = field(default=None, repr=False)
    line_map: LineMap | None = None
    stat: tuple[int, int] = (0, 0)


def is_jsonl(file: Path) -> bool:
    return file.suffix.lower() in JSONL_SUFFIXES


def file_stat(file: Path) -> tuple[int, int]:
    st = file.stat()
    return st.st_size, st.st_mtime_ns


def read_checked(file: Path, cap: int | None) -> str:
    """The whole text for YAML (``cap`` set); for JSONL only checks it is readable."""
    name = str(file)
    try:
        st = file.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
            raise JobFileError([Problem(name, None, None,
                                        "is not a regular file (a FIFO, socket or device); "
                                        "write the job to a file")])
        size = st.st_size
        with file.open("rb") as fh:
            head = fh.read(8192 if cap is None else cap + 1)
    except IsADirectoryError:
        raise JobFileError([Problem(name, None, None, "is a directory, not a job file")]) from None
    except OSError as exc:
        raise JobFileError(
            [Problem(name, None, None, f"cannot read: {exc.strerror or exc}")]
        ) from None
    limit = cap if cap is not None else MAX_JSONL_BYTES
    if size > limit:
        hint = "move the prompts to a JSONL prompts_file" if cap else "split it into shards"
        raise JobFileError(
            [Problem(name, None, None,
                     f"file is {size:,} bytes, over the {limit:,}-byte cap; {hint}")]
        )
    if not head.strip():
        raise JobFileError([Problem(name, None, None, "empty file: write prompts (see README)")])
    if b"\x00" in head[:8192]:
        raise JobFileError([Problem(name, None, None, "binary file, not a YAML/JSONL job file")])
    if cap is None:
        return ""
    try:
        return head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = head[: exc.start].count(b"\n") + 1
        problem = Problem(name, line, None, "not UTF-8 text; save it as UTF-8")
        raise JobFileError([problem]) from None


def parse_yaml(file: Path, text: str) -> tuple[JobSpec, LineMap]:
    name = str(file)
    try:
        data, line_map, _count = load_yaml(text, stream="prompts")
    except YamlProblem as exc:
        raise JobFileError([Problem(name, exc.line, None, exc.message)]) from None
    if data is None:
        raise JobFileError([Problem(name, None, None, "empty file: write prompts (see README)")])
    if not isinstance(data, dict):
        raise JobFileError(
            [Problem(name, line_map.line_of(()) or 1, None,
                     "a job file is a mapping (name:, defaults:, prompts:, ...)")]
        )
    if data.get("prompts"):  # streamed items leave an empty list; these came from a merge
        raise JobFileError([Problem(name, line_map.line_of(("<<",)), "prompts",
                                    "write `prompts:` out in the job file (not through `<<:`)")])
    problems = secret_problems(data, name, line_map.line_of)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        secret_keys = {p.key for p in problems}
        problems += [
            p
            for p in from_validation(exc, file=name, prefix=(), line_of=line_map.line_of,
                                     model=JobSpec)
            if p.key not in secret_keys
        ]
    if problems:
        raise JobFileError(sorted(problems, key=lambda p: p.line or 0))
    return spec, line_map


def yaml_sources(file: Path, text: str, spec: JobSpec, line_map: LineMap
                  ) -> tuple[Source, ...]:
    sources: list[Source] = []
    if spec.prompts is not None:
        sources.append(Source(file=file, text=text, line_map=line_map))
    if spec.prompts_file is not None:
        pf = Path(spec.prompts_file)
        where = line_map.line_of(("prompts_file",))
        base = file.parent.resolve()
        target = (file.parent / pf).resolve()
        if pf.is_absolute() or not target.is_relative_to(base):
            raise JobFileError([Problem(
                str(file), where, "prompts_file",
                "must be a path inside the job file's folder (no absolute paths, no '..')")])
        if not is_jsonl(pf):
            raise JobFileError([Problem(str(file), where, "prompts_file",
                                        "must be a .jsonl file (one prompt object a line)")])
        full = file.parent / pf
        try:
            read_checked(full, None)
        except JobFileError as exc:
            raise JobFileError([Problem(str(file), where, "prompts_file",
                                        f"{pf}: {exc.problems[0].message}")]) from None
        sources.append(Source(file=full, stat=file_stat(full)))
    return tuple(sources)


Entry = tuple[dict[str, Any], str, tuple[Any, ...], Callable[[tuple[Any, ...]], int | None]]


def entries(src: Source, report: Callable[[Problem], None]) -> Iterator[Entry]:
    name = str(src.file)
    if src.text is not None:
        yield from _yaml_entries(src, src.text, report)
        return
    with src.file.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if len(raw) > MAX_LINE_BYTES:
                report(Problem(name, lineno, None,
                               f"line is over {MAX_LINE_BYTES:,} bytes; shrink embedded media"))
                continue
            if not raw.strip():
                continue
            try:
                obj = loads(raw)
            except UnicodeDecodeError:
                report(Problem(name, lineno, None, "not UTF-8 text; save the file as UTF-8"))
                continue
            except json.JSONDecodeError as exc:
                report(Problem(name, lineno, None,
                               f"JSON syntax error at column {exc.colno}: {exc.msg}"))
                continue
            if not isinstance(obj, dict):
                report(Problem(name, lineno, None,
                               'each line is one JSON object ({"prompt": ...} or Batch API form)'))
                continue

            def at(_path: tuple[Any, ...], _line: int = lineno) -> int:
                return _line

            yield obj, f"{name}:{lineno}", (), at


def _yaml_entries(src: Source, text: str, report: Callable[[Problem], None]
                  ) -> Iterator[Entry]:
    name = str(src.file)
    top = src.line_map or LineMap()
    for i, entry, item_map in stream_items(text, "prompts"):
        path = ("prompts", i)

        def line_of(p: tuple[Any, ...], _i: int = i, _map: LineMap = item_map) -> int | None:
            if p[:2] == ("prompts", _i):
                return _map.line_of(p[2:])
            return top.line_of(p)

        line = item_map.line_of(())
        if not isinstance(entry, dict):
            report(Problem(name, line, path_str(path),
                           "each prompt is a mapping (prompt: or messages:, and id:, model:, "
                           f"...), not {type(entry).__name__ if entry is not None else 'empty'}"))
            continue
        yield entry, f"{name}:{line}", path, line_of
