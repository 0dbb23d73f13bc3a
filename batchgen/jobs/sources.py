"""Where a job's prompts come from, read and checked: the job file itself
(YAML, capped, parsed with line numbers; or JSONL), and a YAML job's
``prompts_file``. :func:`entries` walks one source's prompt objects, each with
where it stands in its file; :mod:`batchgen.jobs.load` turns them into requests.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_core import ValidationError

from batchgen.errors import JobFileError, Problem
from batchgen.jobs.data import DataFile, json_lines, rows
from batchgen.jobs.problems import from_validation, path_str, secret_problems
from batchgen.jobs.schema import ID_RE, JobSpec, PromptSpec
from batchgen.jobs.yamlmarks import LineMap, YamlProblem, load_yaml, stream_items
from batchgen.jsonfast import canonical

if TYPE_CHECKING:  # Jinja2 is imported only by a job that has a `template:`
    from batchgen.jobs.templates import Template

MAX_YAML_BYTES = 8 * 1024 * 1024
MAX_JSONL_BYTES = int(os.environ.get("BATCHGEN_MAX_JSONL_BYTES", str(4 * 1024**3)))
MAX_LINE_BYTES = 32 * 1024 * 1024
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PROMPT_KEYS = frozenset(PromptSpec.keys())
ROWS_NAME = "rows.jsonl"  # what `data:` reads as when the rows come from Python


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
    rows: Rows | None = None  # `data:` rows and the `template:` they fill

    @property
    def watched(self) -> bool:
        """A file read on every walk, whose size and mtime must stay as validated."""
        return self.text is None and (self.rows is None or self.rows.data.path is not None)


@dataclass(frozen=True)
class Rows:
    """A ``data:`` source: the rows, the template, and what the table keeps."""

    data: DataFile
    template: Template
    columns: tuple[str, ...] | None = None  # input columns kept in the table (None: all)


# tables that only `data:` reads: given as the job file, said so
DATA_ONLY_SUFFIXES = frozenset({".csv", ".tsv", ".parquet"})
DATA_NOT_JOB = ("a table of data, not a job file: name it in a job file's `data:`, with a "
                "`template:` that writes each row's prompt (docs/data.md)")


def is_jsonl(file: Path) -> bool:
    return file.suffix.lower() in JSONL_SUFFIXES


def is_jsonl_job(file: Path) -> bool:
    """Whether a job file holds prompts, one JSON object a line. By its suffix,
    except ``.json``: there, one JSON document with a job's own keys (``name``,
    ``defaults``, ``prompts``, ...) and none of a prompt's is a job file like a
    YAML one (JSON is YAML), written by a script with ``json.dump``."""
    if file.suffix.lower() != ".json":
        return is_jsonl(file)
    try:
        with file.open("rb") as fh:
            head = fh.read(1 << 16).lstrip()
    except OSError:
        return True  # reading it again says what is wrong
    if head[:1] != b"{":
        return True
    try:
        first = json.loads(head.split(b"\n", 1)[0])
    except ValueError:  # an object over several lines: one document, not a line each
        return False
    keys = first.keys() if isinstance(first, dict) else set()
    return not (keys & JobSpec.keys().keys() and not keys & PromptSpec.keys().keys())


def file_stat(file: Path) -> tuple[int, int]:
    st = file.stat()
    return st.st_size, st.st_mtime_ns


EMPTY_JOB = "empty file: write prompts (see README)"


BINARY_JOB = "binary file, not a YAML/JSONL job file"
UTF16 = (b"\xff\xfe", b"\xfe\xff")  # UTF-16's byte-order marks


def read_checked(file: Path, cap: int | None, empty: str = EMPTY_JOB,
                 binary: str = BINARY_JOB) -> str:
    """The whole text for YAML (``cap`` set); for JSONL only checks it is
    readable. ``empty`` and ``binary``: what to say when it holds nothing, or
    no text."""
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
        raise JobFileError([Problem(name, None, None, empty)])
    if head.startswith(UTF16):  # what Excel's "Unicode Text" and some editors write
        raise JobFileError([Problem(name, None, None, "UTF-16 text; save it as UTF-8")])
    if b"\x00" in head[:8192]:
        raise JobFileError([Problem(name, None, None, binary)])
    if cap is None:
        return ""
    try:
        return head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = head[: exc.start].count(b"\n") + 1
        problem = Problem(name, line, None, "not UTF-8 text; save it as UTF-8")
        raise JobFileError([problem]) from None


def parse_yaml(file: Path, text: str, rows_given: bool = False) -> tuple[JobSpec, LineMap]:
    """The job's settings, validated; ``rows_given``: its rows come from
    elsewhere (Python's ``rows=``), in place of ``data:``."""
    name = str(file)
    try:
        data, line_map, _count = load_yaml(text, stream="prompts")
    except YamlProblem as exc:
        raise JobFileError([Problem(name, exc.line, None, exc.message)]) from None
    if rows_given and isinstance(data, dict):
        given = data.get("data")
        data["data"] = {**(given if isinstance(given, dict) else {}), "path": ROWS_NAME}
        data["data"].pop("glob", None)
    if data is None:
        raise JobFileError([Problem(name, None, None, EMPTY_JOB)])
    if not isinstance(data, dict):
        raise JobFileError(
            [Problem(name, line_map.line_of(()) or 1, None,
                     "a job file is a mapping (name:, defaults:, prompts:, ...)")]
        )
    merged = data.get("prompts")  # streamed items leave an empty list; these came from a merge
    if isinstance(merged, list) and merged:
        raise JobFileError([Problem(name, line_map.line_of(("<<",)), "prompts",
                                    "write `prompts:` out in the job file (not through `<<:`)")])
    problems = secret_problems(data, name, line_map.line_of)
    # x-...: a place for YAML anchors (x-common: &common ...), as compose files have
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        spec = JobSpec.validate(data)
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


def yaml_sources(file: Path, text: str, spec: JobSpec, line_map: LineMap,
                 rows_file: Path | None = None, media_root: str | None = None
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
            rows = pf.suffix.lower() in DATA_ONLY_SUFFIXES
            raise JobFileError([Problem(str(file), where, "prompts_file",
                                        "must be a .jsonl file (one prompt object a line)"
                                        + ("; a table of rows goes in `data:`, with a "
                                           "`template:` that writes each row's prompt"
                                           if rows else ""))])
        full = file.parent / pf
        try:
            read_checked(full, None)
        except JobFileError as exc:
            raise JobFileError([Problem(str(file), where, "prompts_file",
                                        f"{pf}: {exc.problems[0].message}")]) from None
        sources.append(Source(file=full, stat=file_stat(full)))
    if spec.data is not None and spec.template is not None:
        sources.append(data_source(file, spec, line_map, rows_file, media_root))
    return tuple(sources)


def data_source(file: Path, spec: JobSpec, line_map: LineMap,
                rows_file: Path | None = None, media_root: str | None = None) -> Source:
    """The ``data:`` rows and the compiled ``template:``, checked as far as can
    be without reading a row: the template's keys and syntax, the file's
    format, that it can be read. ``media_root``: ``--media-root``, resolved
    (a file the template reads may be there too)."""
    assert spec.data is not None and spec.template is not None  # noqa: S101 - caller checks
    name = str(file)
    given = spec.data
    where = line_map.line_of(("data",))
    problems = [Problem(name, line_map.line_of(("template", key)), f"template.{key}",
                        f"not a key of a prompt; use one of: {', '.join(sorted(PROMPT_KEYS))}")
                for key in spec.template if key not in PROMPT_KEYS]
    from batchgen.jobs.media import MediaProblem, inside, roots_from
    from batchgen.jobs.templates import Template

    base = file.parent
    roots = roots_from(media_root or spec.run.media_root, base)
    template = Template(spec.template, name, line_map.line_of, base, roots)
    problems += template.problems
    if problems:
        raise JobFileError(problems)
    path = rows_file or (file.parent / given.path if given.path is not None else None)
    if rows_file is None and given.path is not None:
        try:  # a link to a file elsewhere is read only where file:// media may be
            inside(given.path, base, roots)
        except MediaProblem as exc:
            raise JobFileError([Problem(name, where, "data", str(exc))]) from None
    data = DataFile(path=path,
                    glob=given.glob, base=file.parent, id_column=given.id, limit=given.limit,
                    where=where)
    columns = tuple(spec.output.columns) if spec.output.columns is not None else None
    rows_ = Rows(data=data, template=template, columns=columns)
    if data.path is None:
        return Source(file=file, rows=rows_)
    if not data.format:
        raise JobFileError([Problem(name, where, "data", f"{given.path}: a data file is .csv, "
                                    ".tsv, .jsonl, .json or .parquet (by its extension)")])
    try:
        if data.format == "parquet":  # binary: only that it is a file that can be opened
            with data.path.open("rb"):
                pass
        else:
            read_checked(data.path, None, "empty file: no rows to run (a CSV or TSV file "
                                          "is a header row, then one row a line)",
                         "binary file, not CSV, TSV, JSONL or JSON text")
    except OSError as exc:
        raise JobFileError([Problem(name, where, "data", f"{given.path}: cannot read: "
                                    f"{exc.strerror or exc}")]) from None
    except JobFileError as exc:
        raise JobFileError([Problem(name, where, "data",
                                    f"{given.path}: {exc.problems[0].message}")]) from None
    return Source(file=data.path, stat=file_stat(data.path), rows=rows_)


Entry = tuple[dict[str, Any], str, tuple[Any, ...], Callable[[tuple[Any, ...]], int | None]]
# a row's columns the table keeps (JSON), beside the entry made of it (None for a prompt)
RowEntry = tuple[Entry, str | None]


def entries(src: Source, report: Callable[[Problem], None],
            seen: dict[str, None] | None = None) -> Iterator[RowEntry]:
    """One source's entries, each with the data row it was made of (or None);
    ``seen`` gathers the rows' column names, in the order they first appear."""
    if src.rows is not None:
        yield from _row_entries(src.rows, report, seen)
        return
    for entry in _prompt_entries(src, report):
        yield entry, None


def _prompt_entries(src: Source, report: Callable[[Problem], None]) -> Iterator[Entry]:
    name = str(src.file)
    if src.text is not None:
        yield from _yaml_entries(src, src.text, report)
        return
    for obj, lineno in json_lines(src.file, name, report, 'each line is a prompt: its text '
                                  'as a JSON string ("Write about cats"), or one JSON object '
                                  '({"prompt": ...} or Batch API form)', MAX_LINE_BYTES,
                                  text_key="prompt"):
        def at(_path: tuple[Any, ...], _line: int = lineno) -> int:
            return _line

        yield obj, f"{name}:{lineno}", (), at


def _yaml_entries(src: Source, text: str, report: Callable[[Problem], None]
                  ) -> Iterator[Entry]:
    name = str(src.file)
    top = src.line_map or LineMap()
    for i, item, item_map in stream_items(text, "prompts"):
        path = ("prompts", i)

        def line_of(p: tuple[Any, ...], _i: int = i, _map: LineMap = item_map) -> int | None:
            if p[:2] == ("prompts", _i):
                return _map.line_of(p[2:])
            return top.line_of(p)

        line = item_map.line_of(())
        entry = item
        if isinstance(item, str):  # `- Write about cats`: the prompt alone
            entry = {"prompt": item} if item.strip() else None
        if not isinstance(entry, dict):
            report(Problem(name, line, path_str(path),
                           "each prompt is its text, or a mapping (prompt: or messages:, and "
                           "id:, model:, ...), not "
                           f"{type(entry).__name__ if entry else 'empty'}"))
            continue
        yield entry, f"{name}:{line}", path, line_of


def _row_entries(source: Rows, report: Callable[[Problem], None],
                 seen: dict[str, None] | None) -> Iterator[RowEntry]:
    """Each row rendered into a prompt entry, with the id it runs under: the
    ``data.id`` column's value, else ``r-`` and a digest of the row's content
    (stable when rows are reordered or appended; a second identical row gets
    ``-2``)."""
    from batchgen.jobs.templates import RenderError  # loaded with the source's Template

    data = source.data
    name = data.name
    occurrences: dict[str, int] = {}
    id_column = data.id_column
    for row, line in rows(data, report):
        if seen is not None and not seen.keys() >= row.keys():
            seen.update(dict.fromkeys(row))  # a new column: after those seen before

        def at(_path: tuple[Any, ...], _line: int = line) -> int:
            return _line

        try:
            entry = source.template.render(row)
        except RenderError as exc:
            report(Problem(name, line, path_str(exc.path), exc.message))
            continue
        empty = _empty_text(entry)
        if empty is not None:
            report(Problem(name, line, path_str(empty), "renders to an empty text for this "
                           "row; fill the row's value in, or leave the row out"))
            continue
        if id_column is not None:
            if id_column not in row or row[id_column] in (None, ""):
                report(Problem(name, line, f"data.id ({id_column})",
                               f"the row has no value in column {id_column!r}, which gives "
                               "the request ids; fill it in"))
                continue
            value = str(row[id_column])
            if not ID_RE.match(value):
                report(Problem(name, line, f"data.id ({id_column})",
                               f"{value[:80]!r} is not a valid request id: letters, digits, "
                               "'.', '_', '-', at most 128, starting with a letter or digit"))
                continue
            entry.setdefault("id", value)
        row_json = canonical(row) if source.columns is None or id_column is None else ""
        if id_column is None and "id" not in entry:
            digest = hashlib.sha256(row_json.encode("utf-8", "surrogatepass")).hexdigest()[:12]
            n = occurrences.get(digest, 0) + 1
            occurrences[digest] = n
            entry["id"] = f"r-{digest}" if n == 1 else f"r-{digest}-{n}"
        kept = row_json if source.columns is None \
            else canonical({c: row.get(c) for c in source.columns})
        yield (entry, f"{name}:{line}", ("template",), at), kept


def _empty_text(entry: dict[str, Any]) -> tuple[Any, ...] | None:
    """Where a rendered prompt's user-facing text came out empty, if it did."""
    prompt = entry.get("prompt")
    if isinstance(prompt, str) and not prompt.strip():
        return ("template", "prompt")
    messages = entry.get("messages")
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str) and not content.strip():
                return ("template", "messages", i, "content")
    return None
