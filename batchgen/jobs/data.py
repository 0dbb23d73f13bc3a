"""Rows of data a job templates over (``data:``): read as a stream, each with
where it stands in its file.

Formats by extension: ``.csv`` / ``.tsv`` (a header row; UTF-8 with or without
a BOM; every value a string), ``.jsonl`` (one object a line), ``.json`` (an
array of objects: read whole, so capped), ``.parquet`` (pyarrow, the
``batchgen[parquet]`` extra; read a batch of rows at a time). A row's
``line`` is its line in a CSV, TSV or JSONL file (where the row starts), and
its 1-based row number in a JSON array or a Parquet file. ``data: {glob:
...}`` makes one row per matching file instead (``path``, ``name``, ``stem``).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from batchgen.errors import JobFileError, Problem
from batchgen.jsonfast import loads

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "json", ".parquet": "parquet"}
MAX_JSON_BYTES = 256 * 1024 * 1024  # a JSON array is read whole; JSONL streams
PARQUET_BATCH = 4096

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents in one cell


@dataclass(frozen=True)
class DataFile:
    """Where a job's rows come from: a file (``path``) or files (``glob``)."""

    path: Path | None  # the data file (resolved against the job file's folder)
    glob: str | None = None
    base: Path = Path()  # the job file's folder: glob rows' paths are relative to it
    id_column: str | None = None
    limit: int | None = None
    where: int | None = None  # line of `data:` in the job file

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"data.glob {self.glob!r}"

    @property
    def format(self) -> str:
        if self.path is None:
            return "jsonl"
        return FORMATS.get(self.path.suffix.lower(), "")

    def stat(self) -> tuple[int, int]:
        if self.path is None:
            return (0, 0)
        st = self.path.stat()
        return st.st_size, st.st_mtime_ns


Report = Callable[[Problem], None]


def rows(data: DataFile, report: Report) -> Iterator[tuple[dict[str, Any], int]]:
    """Each row and its line (or row number), in file order, up to ``limit``."""
    reader = {"csv": _delimited, "tsv": _delimited, "jsonl": _jsonl, "json": _json_array,
              "parquet": _parquet}[data.format] if data.path is not None else _glob
    for count, item in enumerate(reader(data, report), start=1):
        yield item
        if data.limit is not None and count >= data.limit:
            return


def _open_text(data: DataFile) -> Any:
    assert data.path is not None  # noqa: S101 - file readers are chosen for a path
    return data.path.open(encoding="utf-8-sig", newline="")


def _lines(fh: Any, ended: list[bool]) -> Iterator[str]:
    """The file's lines, noting that they ran out: Python's csv reader ends a
    quoted value the file ends inside of as if it were closed."""
    yield from fh
    ended.append(True)


SEPARATORS = {",": "commas", "\t": "tabs", ";": "semicolons"}


def _other_separator(header: list[str], first: list[str], fmt: str) -> str | None:
    """The separator a file was written with when it is not the one its name
    says (Excel's CSV in many locales uses semicolons): the header and the
    first row are one value each, holding it as many times."""
    read_with = "\t" if fmt == "tsv" else ","
    if len(header) != 1 or len(first) != 1:
        return None
    return next((sep for sep in SEPARATORS if sep != read_with
                 and header[0].count(sep) == first[0].count(sep) > 0), None)


def _delimited(data: DataFile, report: Report) -> Iterator[tuple[dict[str, Any], int]]:
    name = data.name
    with _open_text(data) as fh:
        ended: list[bool] = []
        reader = csv.reader(_lines(fh, ended), delimiter="\t" if data.format == "tsv" else ",")
        try:
            header = next(reader, None)
            if header is None:
                raise JobFileError([Problem(name, None, None, "empty data file: write a header "
                                            "row of column names, then one row a line")])
            blank = [i + 1 for i, column in enumerate(header) if not column.strip()]
            dupes = sorted({c for c in header if header.count(c) > 1})
            if blank or dupes:
                what = (f"column {blank[0]} has no name" if blank
                        else f"column {dupes[0]!r} appears twice")
                raise JobFileError([Problem(name, 1, None, f"header row: {what}; give every "
                                            "column one distinct name")])
            start = reader.line_num + 1
            for values in reader:
                line, start = start, reader.line_num + 1
                if not values or values == [""]:
                    continue  # a blank line
                if line == 2 and (sep := _other_separator(header, values, data.format)):
                    read_with = "\t" if data.format == "tsv" else ","
                    raise JobFileError([Problem(name, 1, None, (
                        f"header row: one column, {header[0]!r}: the file is separated by "
                        f"{SEPARATORS[sep]}, and a .{data.format} file is read with "
                        f"{SEPARATORS[read_with]}; save it comma-separated as .csv, or "
                        "tab-separated as .tsv"))])
                if ended:  # the file ended inside this row: a quote opened, never closed
                    report(Problem(name, line, None,
                                   'a quoted value opens on this row and is never closed, so '
                                   'every line after it would be part of it; close the quote '
                                   '(a " inside a quoted value is written "")'))
                    continue
                if len(values) != len(header):
                    report(Problem(name, line, None,
                                   f"row has {len(values)} value{'s' * (len(values) != 1)}, "
                                   f"the header has "
                                   f"{len(header)} columns; quote values that hold "
                                   f"{'tabs' if data.format == 'tsv' else 'commas'}"))
                    continue
                yield dict(zip(header, values, strict=True)), line
        except UnicodeDecodeError:
            # the error comes from a block decoded ahead of the reader: find the line
            raise JobFileError([_not_utf8(data.path, name)]) from None
        except csv.Error as exc:
            raise JobFileError([Problem(name, reader.line_num, None,
                                        f"not readable as {data.format.upper()}: {exc}")]) from None


def _not_utf8(path: Path | None, name: str) -> Problem:
    """Where a delimited file stops being UTF-8: its line, the byte, and how the
    usual culprit (Excel's "CSV", saved in the Windows code page) is fixed."""
    line, where = None, ""
    if path is not None:
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    line = number
                    where = f" (byte 0x{raw[exc.start]:02x}, column {exc.start + 1})"
                    break
    return Problem(name, line, None,
                   f"not UTF-8 text{where}; save the data file as UTF-8 (in Excel: "
                   "\"CSV UTF-8\")")


def _jsonl(data: DataFile, report: Report) -> Iterator[tuple[dict[str, Any], int]]:
    assert data.path is not None  # noqa: S101 - file readers are chosen for a path
    yield from json_lines(data.path, data.name, report,
                          'each line is one JSON object (a row: {"column": value, ...})')


def json_lines(path: Path, name: str, report: Report, not_an_object: str,
               max_line: int | None = None, text_key: str | None = None
               ) -> Iterator[tuple[dict[str, Any], int]]:
    """Each JSON object of a JSONL file and its line; a line that is not one
    (not UTF-8, not JSON, not an object, over ``max_line`` bytes) is reported
    with its line and skipped. A byte-order mark before the first is allowed.
    With ``text_key``, a line that is a JSON string of text is the object
    ``{text_key: that text}``."""
    with path.open("rb") as fh:
        for line, raw in enumerate(fh, start=1):
            if max_line is not None and len(raw) > max_line:
                report(Problem(name, line, None,
                               f"line is over {max_line:,} bytes; shrink embedded media"))
                continue
            if not raw.strip():
                continue
            try:
                obj = loads(raw.removeprefix(b"\xef\xbb\xbf") if line == 1 else raw)
            except UnicodeDecodeError:
                report(Problem(name, line, None, "not UTF-8 text; save the file as UTF-8"))
                continue
            except json.JSONDecodeError as exc:
                report(Problem(name, line, None,
                               f"JSON syntax error at column {exc.colno}: {exc.msg}"))
                continue
            if text_key is not None and isinstance(obj, str) and obj.strip():
                obj = {text_key: obj}
            if not isinstance(obj, dict):
                report(Problem(name, line, None, not_an_object))
                continue
            yield obj, line


def _json_array(data: DataFile, report: Report) -> Iterator[tuple[dict[str, Any], int]]:
    assert data.path is not None  # noqa: S101 - file readers are chosen for a path
    name = data.name
    size = data.path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise JobFileError([Problem(name, None, None,
                                    f"a JSON array of {size:,} bytes is read whole (the cap is "
                                    f"{MAX_JSON_BYTES:,}); write it as JSONL, one row a line")])
    try:
        value = loads(data.path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        raise JobFileError([Problem(name, line, None, f"not a JSON array of rows: {exc}")]
                           ) from None
    if not isinstance(value, list):
        raise JobFileError([Problem(name, 1, None, "a .json data file is an array of objects "
                                    "(one per row); or write JSONL")])
    for number, obj in enumerate(value, start=1):
        if not isinstance(obj, dict):
            report(Problem(name, number, None, f"row {number} is not an object"))
            continue
        yield obj, number


def _parquet(data: DataFile, report: Report) -> Iterator[tuple[dict[str, Any], int]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise JobFileError([Problem(data.name, None, None,
                                    "reading Parquet needs pyarrow: pip install "
                                    "'batchgen[parquet]'")]) from None
    try:
        table = pq.ParquetFile(data.path)
        number = 0
        for batch in table.iter_batches(batch_size=PARQUET_BATCH):
            for row in batch.to_pylist():
                number += 1
                yield {key: _jsonable(value) for key, value in row.items()}, number
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise JobFileError([Problem(data.name, None, None,
                                    f"not readable as Parquet: {exc}")]) from None


def _glob(data: DataFile, report: Report) -> Iterator[tuple[dict[str, Any], int]]:
    """One row per file the pattern matches, sorted by path: ``path`` (relative
    to the job file's folder, as ``file://`` takes it), ``name`` and ``stem``.

    As a shell's ``*`` (and :func:`glob.glob`), a wildcard does not match a name
    that begins with a dot: ``photos/**/*`` leaves out ``.DS_Store`` and what is
    in ``.thumbs/``; a pattern that writes the dot (``photos/.thumbs/*``) gets them."""
    assert data.glob is not None  # noqa: S101 - chosen for a glob
    base = data.base.resolve()
    dotted = any(part.startswith(".") for part in PurePosixPath(data.glob).parts)
    found = sorted(p for p in base.glob(data.glob) if p.is_file() and (
        dotted or not any(part.startswith(".") for part in p.relative_to(base).parts)))
    for number, path in enumerate(found, start=1):
        relative = path.relative_to(base).as_posix()
        yield {"path": relative, "name": path.name, "stem": path.stem}, number


def _jsonable(value: Any) -> Any:
    """A Parquet value as JSON holds it: dates and times in ISO form, decimals
    and other scalars as text, bytes as UTF-8 text where they are."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    iso = getattr(value, "isoformat", None)
    return iso() if callable(iso) else str(value)
