"""``output:`` of a job with ``data:``: where and how its table is written,
and what in it is refused before anything runs (columns the data lacks,
columns that would share a name, a table file that is a folder, names
another format or is one of the job's own files)."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from batchgen.errors import Problem
from batchgen.jobs.records import GENERATED_COLUMNS, TableSettings
from batchgen.jobs.schema import OUTPUT_FORMATS, JobSpec
from batchgen.jobs.sources import Source
from batchgen.jobs.yamlmarks import LineMap


def table_settings(file: Path, spec: JobSpec, sources: tuple[Source, ...], run_dir: Path,
                   job_dir: Path | None, types: str | None = None) -> TableSettings | None:
    """Where and how a job with ``data:`` writes its table (None: no data);
    ``job_dir`` for a shard, where merging its job's shards writes the whole;
    ``types``: the rows' Arrow schema where they came with one (a DataFrame
    given as ``rows=``), as a Parquet data file has it."""
    data = next((s.rows.data for s in sources if s.rows is not None), None)
    if data is None:
        return None
    out = spec.output
    named = _table_format(out.table)  # output.table: out.tsv is a TSV table
    fmt = out.format or named or {"json": "jsonl", "": "csv"}.get(data.format, data.format)
    if data.path is None and out.format is None and named is None:
        fmt = "csv"  # a folder's files: a plain table of them
    # every shard writes its own rows in its own run directory; `merge` the whole
    whole = str(file.parent / out.table) if out.table else None
    path = whole if whole and job_dir is None else str(run_dir / f"table.{fmt}")
    merge_path = None if job_dir is None else whole or str(job_dir / f"table.{fmt}")
    return TableSettings(format=fmt, path=path, prefix=out.prefix,
                         columns=tuple(out.columns) if out.columns is not None else None,
                         flatten=out.flatten, merge_path=merge_path,
                         bom=data.path is not None and _has_bom(data.path),
                         arrow_schema=types or (_arrow_schema(data.path)
                                                if data.format == "parquet"
                                                and data.path is not None else None))


def _arrow_schema(path: Path) -> str | None:
    """A Parquet data file's Arrow schema (its footer only is read), without
    its metadata (pandas' index notes), as base64 IPC bytes; None if unreadable
    (reading the rows says why)."""
    try:
        import pyarrow.parquet as pq

        schema = pq.read_schema(path).remove_metadata()
    except (ImportError, OSError, ValueError):  # pyarrow's errors derive from these
        return None
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def frame_types(given: Any) -> str | None:
    """A DataFrame's columns as Arrow types, kept as :func:`_arrow_schema` keeps
    a Parquet data file's, so that the table, ``rows()`` and ``to_pandas()``
    give its dates, timestamps, decimals, categories and lists back. None where
    there are none, for rows that are not a DataFrame, without pyarrow, or
    where a column has no one Arrow type (objects of mixed kinds): the values
    are then as JSON holds them."""
    if not (hasattr(given, "to_dict") and hasattr(given, "columns")):
        return None
    try:
        import pyarrow as pa

        schema = pa.Schema.from_pandas(given, preserve_index=False).remove_metadata()
    except (ImportError, TypeError, ValueError, NotImplementedError):  # pyarrow's errors too
        return None
    plain = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer,
             pa.types.is_floating, pa.types.is_boolean, pa.types.is_null)
    if all(any(is_(t) for is_ in plain) for t in schema.types):
        return None  # JSON holds every value as it is
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def _has_bom(path: Path) -> bool:
    """Whether a data file begins with UTF-8's byte-order mark, as Excel's
    "CSV UTF-8" does: the table then has one too, so Excel reads it as UTF-8
    (without it, text beyond ASCII opens garbled)."""
    try:
        with path.open("rb") as fh:
            return fh.read(3) == b"\xef\xbb\xbf"
    except OSError:
        return False


def _table_format(path: str | None) -> str | None:
    """The table format a path's extension names, if it names one."""
    suffix = Path(path).suffix.lower().lstrip(".") if path else ""
    return suffix if suffix in OUTPUT_FORMATS else None


def table_problems(file: Path, table: TableSettings, seen: dict[str, None],
                    line_map: LineMap, spec: JobSpec, schemas: dict[str, None],
                    speech: bool = False, *, inputs: tuple[str, ...] = (),
                    results: tuple[str, ...] = ()) -> list[Problem]:
    """``output.columns`` that no row has, a table written over one of the
    job's ``inputs``, and columns of the table that would have one name: a
    generated column and a kept input column (``output.prefix`` sets them
    apart), or — with ``output.flatten`` — a property of the answer's schema
    and either of those."""
    name = str(file)
    problems = []
    if table.format == "parquet" and importlib.util.find_spec("pyarrow") is None:
        problems.append(Problem(  # found now, not once every answer is bought
            name, line_map.line_if(("output", "format")) or line_map.line_if(("output", "table"))
            or line_map.line_of(("data",)), "output.format",
            "a Parquet table needs pyarrow, which is not installed: pip install "
            "'batchgen[parquet]', or choose output.format csv, tsv or jsonl"))
    target = file.parent / spec.output.table if spec.output.table else None
    over = target and (
        (f"{found}: the table would replace it (and the next run would read other rows)"
         if (found := over_input(target, inputs)) else None)
        or (f"{found}: the table and the results would overwrite each other"
            if (found := over_results(target, results)) else None))
    if over:
        problems.append(Problem(
            name, line_map.line_of(("output", "table")), "output.table",
            f"{spec.output.table!r} is {over}; name another file (table.{table.format}, "
            "for one)"))
    if table.columns is not None:
        for column in table.columns:
            if column not in seen:
                problems.append(Problem(
                    name, line_map.line_of(("output", "columns")), "output.columns",
                    f"{column!r} is not a column of the data (its columns: "
                    f"{', '.join(list(seen)[:20])})"))
    if spec.output.table and (file.parent / spec.output.table).is_dir():
        problems.append(Problem(
            name, line_map.line_of(("output", "table")), "output.table",
            f"{spec.output.table!r} is a folder; name the table's file "
            f"({spec.output.table.rstrip('/')}/table.{table.format}, for one)"))
    named = _table_format(spec.output.table)
    suffix = Path(spec.output.table).suffix if spec.output.table else ""
    if named is None and suffix:
        problems.append(Problem(
            name, line_map.line_of(("output", "table")), "output.table",
            f"{spec.output.table!r} names a {suffix} file, and a table is written as "
            f"{', '.join(OUTPUT_FORMATS)}; end its name in one of them"))
    if named is not None and named != table.format:
        problems.append(Problem(
            name, line_map.line_of(("output", "table")), "output.table",
            f"{spec.output.table!r} names a .{named} file, and output.format is "
            f"{table.format}; make them agree (or leave output.format out)"))
    kept = set(table.columns) if table.columns is not None else set(seen)
    id_column = spec.data.id if spec.data is not None else None
    where = line_map.line_if(("output",)) or line_map.line_of(("data",))
    answers = (*(["length_continuations"] if spec.run.on_length == "continue" else []),
               *(["audio", "audio_seconds"] if speech else []),
               *(["json"] if schemas else []))
    for column in (*GENERATED_COLUMNS, *answers):
        generated = table.prefix + column
        if generated in kept and not (generated == "id" == id_column):
            problems.append(Problem(
                name, where, "output",
                f"the table's column {generated!r} (what batchgen writes) has the name of an "
                f"input column; set `output.prefix:` (e.g. gen_), or leave {generated!r} out "
                "of `output.columns:`"))
    if table.flatten:
        made = {table.prefix + c for c in (*GENERATED_COLUMNS, *answers, "json")}
        properties: dict[str, None] = {}
        for schema in schemas:
            value = json.loads(schema)
            listed = value.get("properties") if isinstance(value, dict) else None
            properties.update(dict.fromkeys(listed if isinstance(listed, dict) else ()))
        for prop in properties:
            column = table.prefix + prop
            if column in made:
                problems.append(Problem(
                    name, line_map.line_of(("output", "flatten")) or where, "output.flatten",
                    f"the schema's property {prop!r} would be the table's column {column!r}, "
                    "which batchgen writes already; rename the property, or leave "
                    "`output.flatten:` off (the answer is in the json column)"))
            elif column in kept:
                problems.append(Problem(
                    name, line_map.line_of(("output", "flatten")) or where, "output.flatten",
                    f"the schema's property {prop!r} would be the table's column {column!r}, "
                    "the name of an input column; set `output.prefix:` (e.g. gen_), or "
                    f"leave {column!r} out of `output.columns:`"))
    return problems


def over_input(target: Path, inputs: tuple[str, ...]) -> str | None:
    """What ``target`` is, when it is one of a job's ``inputs`` (the job
    file, its prompts or its data file; a link to one counts); else None."""
    found = _among(target, inputs)
    if found is None:
        return None
    return "the job file" if found == inputs[0] else f"{found}, which the job reads"


RESULTS_FILES = ("results.jsonl", "failed.jsonl")  # what every run writes in its directory


def over_results(target: Path, results: tuple[str, ...]) -> str | None:
    """What ``target`` is, when it is a run's results.jsonl or failed.jsonl."""
    found = _among(target, results)
    return None if found is None else f"{found}, which batchgen writes the run's results to"


def _among(target: Path, paths: tuple[str, ...]) -> str | None:
    """The one of ``paths`` (resolved) that ``target`` is, by name or a link."""
    real = os.path.realpath(target)
    return next((path for path in paths if real == path or _same_file(real, path)), None)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)  # a hard link to an input, too
    except OSError:  # one of them does not exist (yet)
        return False


def columns_known(table: TableSettings | None, columns: tuple[str, ...]
                   ) -> TableSettings | None:
    """The table keeping every input column names them, in the data's order
    (the run store keeps each row with its keys sorted)."""
    if table is None or table.columns is not None:
        return table
    return replace(table, columns=columns)
