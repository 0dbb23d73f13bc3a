"""The table: one row per data row (or per request, for a job without
``data:``), in job order — the kept input columns, then what batchgen made of
each: ``id``, ``status`` (done | failed | pending), ``content``,
``reasoning``, ``finish_reason``, ``prompt_tokens``, ``completion_tokens``,
``cost`` (all its attempts, in the currency of its model's price; empty when
unknown), ``error``; a job with ``run.on_length: continue`` adds
``length_continuations`` (the segments of an answer past its first), one that
asks for spoken answers ``audio`` and ``audio_seconds``.

Written as CSV, TSV, JSONL or Parquet (pyarrow), atomically, from the run
store alone: ``batchgen export`` can write it for any run directory, and
writing it twice from the same store gives the same bytes.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime
import decimal
import heapq
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchgen.cost.pricing import PriceBook, StoreCosts, overrides_from_json
from batchgen.errors import UsageError
from batchgen.jobs.records import GENERATED_COLUMNS, TableSettings
from batchgen.jobs.shards import find_shards
from batchgen.jobs.structured import answer_value
from batchgen.jobs.tables import RESULTS_FILES, over_input, over_results
from batchgen.outputs.audio import seconds_of, wav_path
from batchgen.outputs.files import jsonl, replacing, write_atomic
from batchgen.store.runstore import RunStore

FORMATS = ("csv", "tsv", "jsonl", "parquet")
META_KEY = "table"
ON_LENGTH_KEY = "on_length"  # the store's record of the job's run.on_length
SPEECH_KEY = "speech"  # "1": the job asks for spoken answers (modalities: audio)
INPUTS_KEY = "inputs"  # the files the job read (JSON list): `export -o` never replaces one
SPEECH = ("audio", "audio_seconds")
SEGMENTS = "length_continuations"
PARQUET_ROWS = 8192  # rows per Parquet row group written


@dataclass(frozen=True)
class Shape:
    """The table's columns: the kept input ones, then the generated ones, then
    (run.on_length: continue) ``length_continuations``, then (spoken answers)
    ``audio`` and ``audio_seconds``, then (answers to a schema) ``json`` and,
    flattened, one per top-level property."""

    inputs: tuple[str, ...]
    prefix: str
    data_only: bool  # rows of data only (a job with `data:`), or every request
    json: bool = False
    flat: tuple[str, ...] = ()
    flat_types: tuple[str, ...] = ()  # per flat column, its Parquet type (json: JSON text)
    segments: bool = False  # the job continues answers past the output cap
    speech: bool = False  # the job asks for spoken answers

    @property
    def columns(self) -> list[str]:
        return [*self.inputs, *(self.prefix + c for c in GENERATED_COLUMNS),
                *([self.prefix + SEGMENTS] if self.segments else []),
                *(self.prefix + c for c in SPEECH * self.speech),
                *([self.prefix + "json"] if self.json else []),
                *(self.prefix + c for c in self.flat)]


def settings_of(store: RunStore) -> TableSettings | None:
    """What the run's job said of its table (None: the job has no ``data:``)."""
    raw = store.meta(META_KEY)
    if not raw:
        return None
    value = json.loads(raw)
    columns = value.get("columns")
    return TableSettings(format=value["format"], path=value["path"],
                         prefix=value.get("prefix", ""),
                         columns=tuple(columns) if columns is not None else None,
                         flatten=bool(value.get("flatten")),
                         merge_path=value.get("merge_path"), bom=bool(value.get("bom")),
                         arrow_schema=value.get("arrow_schema"))


def shape_of(stores: RunStore | Sequence[RunStore], settings: TableSettings | None) -> Shape:
    """The table's columns, over one store or over the shards of one job."""
    stores = [stores] if isinstance(stores, RunStore) else stores
    schemas = [json.loads(s) for s in dict.fromkeys(x for st in stores for x in st.schemas())]
    flat: dict[str, set[str]] = {}
    if settings is not None and settings.flatten:
        for schema in schemas:
            for name, prop in (schema.get("properties") or {}).items():
                flat.setdefault(name, set()).add(_property_type(prop))
    segments = any(st.meta(ON_LENGTH_KEY) == "continue" for st in stores)
    speech = any(st.meta(SPEECH_KEY) == "1" for st in stores)
    if settings is None:
        return Shape((), "", data_only=False, json=bool(schemas), segments=segments,
                     speech=speech)
    if settings.columns is not None:  # the job named them, or the data's, in its order
        inputs = settings.columns
    else:  # a run of an earlier batchgen: every row's columns, as the store has them
        seen: dict[str, None] = {}
        for raw in (raw for st in stores for raw in st.data_rows()):
            seen.update(dict.fromkeys(json.loads(raw)))
        inputs = tuple(seen)
    # data.id: id is both an input column and the generated id: one column, the id
    made = {settings.prefix + c for c in GENERATED_COLUMNS}
    return Shape(tuple(c for c in inputs if c not in made), settings.prefix, data_only=True,
                 json=bool(schemas), flat=tuple(flat),
                 flat_types=tuple(t.pop() if len(t) == 1 else "json" for t in flat.values()),
                 segments=segments, speech=speech)


SCALARS = {"integer": "int64", "number": "float64", "boolean": "bool", "string": "string"}


def _property_type(prop: Any) -> str:
    """The Parquet type of a schema property's values: that of its one scalar
    JSON type (``null`` allowed beside it), else JSON text."""
    kind = prop.get("type") if isinstance(prop, dict) else None
    kinds = [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else []
    kinds = [k for k in kinds if k != "null"]
    return SCALARS.get(kinds[0], "json") if len(kinds) == 1 else "json"


def rows(store: RunStore, shape: Shape, book: PriceBook | None = None) -> Iterator[dict[str, Any]]:
    """The table's rows as dicts, in job order (input values as the data gave them)."""
    return (row for _, row in _rows(store, shape, book))


def merged_rows(stores: Sequence[RunStore], shape: Shape) -> Iterator[dict[str, Any]]:
    """The rows of the shards of one job, in job order (positions are the whole job's)."""
    streams = [_rows(store, shape, None) for store in stores]
    return (row for _, row in heapq.merge(*streams, key=lambda item: item[0]))


def _rows(store: RunStore, shape: Shape, book: PriceBook | None
          ) -> Iterator[tuple[int, dict[str, Any]]]:
    book = book or PriceBook(overrides_from_json(store.meta("pricing")))
    StoreCosts(store, book)  # registers the bg_cost SQL functions
    p = shape.prefix
    for r in store.outcomes_in_order(data_only=shape.data_only, with_cost=True):
        data = json.loads(r["data_row"]) if r["data_row"] else {}
        out = {c: data.get(c) for c in shape.inputs}
        done = r["state"] == "done"
        out[p + "id"] = r["id"]
        out[p + "status"] = r["state"] if r["state"] in ("done", "failed") else "pending"
        out[p + "content"] = (r["content"] or "") if done else None
        out[p + "reasoning"] = (r["reasoning"] or None) if done else None
        out[p + "finish_reason"] = r["finish_reason"] if done else None
        out[p + "prompt_tokens"] = r["prompt_tokens"] if done else None
        out[p + "completion_tokens"] = r["completion_tokens"] if done else None
        out[p + "cost"] = round(r["cost"], 8) if r["cost"] is not None \
            and r["currency"] is not None else None
        out[p + "error"] = r["error"]
        if shape.segments:
            out[p + SEGMENTS] = r[SEGMENTS]
        if shape.speech:  # the file, relative to the run directory (as in results.jsonl)
            wav = wav_path(store.path.parent, r["id"])
            spoke = done and wav.exists()
            out[p + "audio"] = f"audio/{wav.name}" if spoke else None
            out[p + "audio_seconds"] = seconds_of(wav) if spoke else None
        if shape.json:
            value = _value(r["content"]) if done and r["schema"] is not None else None
            out[p + "json"] = value
            for name in shape.flat:
                out[p + name] = value.get(name) if isinstance(value, dict) else None
        yield r["position"], out


def _value(content: str | None) -> Any:
    try:
        return answer_value(content or "")
    except ValueError:
        return None


def write_table(run_dir: Path, fmt: str | None = None, dest: Path | None = None,
                book: PriceBook | None = None) -> Path:
    """Write ``run_dir``'s table (its job's format and place unless given); the
    path. A job's directory whose shards ran (``--shard K/N``) has the table of
    them all."""
    if not (run_dir / "run.db").exists() and find_shards(run_dir):
        with contextlib.ExitStack() as opened:
            stores = [opened.enter_context(RunStore.reading(path))
                      for path in find_shards(run_dir).values()]
            return write_merged(stores, run_dir, fmt, dest)
    with RunStore.reading(run_dir) as store:
        return write_from(store, run_dir, fmt, dest, book)


def write_from(store: RunStore, run_dir: Path, fmt: str | None = None,
               dest: Path | None = None, book: PriceBook | None = None) -> Path:
    settings = settings_of(store)
    shape = shape_of(store, settings)
    return _write([store], shape, rows(store, shape, book), settings,
                  settings.path if settings else None, run_dir, fmt, dest)


def write_merged(stores: Sequence[RunStore], job_dir: Path, fmt: str | None = None,
                 dest: Path | None = None) -> Path:
    """The table of the shards of one job (``batchgen merge``): its rows in job
    order, at ``output.table`` or ``<job dir>/table.<ext>``."""
    settings = next((s for s in map(settings_of, stores) if s is not None), None)
    shape = shape_of(stores, settings)
    return _write(stores, shape, merged_rows(stores, shape), settings,
                  settings.merge_path if settings else None, job_dir, fmt, dest)


def _write(stores: Sequence[RunStore], shape: Shape, body: Iterable[dict[str, Any]],
           settings: TableSettings | None, path: str | None, run_dir: Path,
           fmt: str | None, dest: Path | None) -> Path:
    if dest is not None and fmt is None and _format_of(dest) is None \
            and dest.suffix and not dest.is_char_device():  # /dev/stdout, -: the default
        raise UsageError(f"{dest}: a table is written as {', '.join(FORMATS)}; end the "
                         "file's name in one of them, or choose with --format")
    if dest is not None:
        inputs = tuple(dict.fromkeys(path for store in stores
                                     for path in json.loads(store.meta(INPUTS_KEY) or "[]")))
        if over := over_input(dest, inputs) or over_results(
                dest, tuple(os.path.realpath(run_dir / name) for name in RESULTS_FILES)):
            raise UsageError(f"{dest} is {over}: the table would replace it; name another "
                             "file")
    fmt = fmt or (dest and _format_of(dest)) or (settings.format if settings else "csv")
    if fmt not in FORMATS:
        raise UsageError(f"a table is written as {', '.join(FORMATS)}; not {fmt!r}")
    target = dest or (Path(path) if path and settings and settings.format == fmt
                      else run_dir / f"table.{fmt}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        with replacing(target) as tmp:
            _write_parquet(tmp, shape, body, stores, settings)
    else:
        write_atomic(target, (jsonl(r) for r in body) if fmt == "jsonl"
                     else _delimited(shape, body, "\t" if fmt == "tsv" else ",",
                                     bom=settings is not None and settings.bom))
    return target


def _format_of(path: Path) -> str | None:
    suffix = path.suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _delimited(shape: Shape, body: Iterable[dict[str, Any]], delimiter: str,
               bom: bool = False) -> Iterator[bytes]:
    if bom:
        yield b"\xef\xbb\xbf"
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    columns = shape.columns
    writer.writerow(columns)
    for n, row in enumerate(body, start=1):
        writer.writerow([_cell(row[c]) for c in columns])
        if n % 512 == 0:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode("utf-8")


def _input_types(stores: Sequence[RunStore], shape: Shape, settings: TableSettings | None
                 ) -> tuple[dict[str, str], dict[str, Any]]:
    """Per kept input column, the one Parquet type its values share: string,
    int64, float64 or bool; a column of mixed or nested values is JSON text.
    And, for Parquet data, the columns whose values fit their type in the data
    file again (:func:`_original_kinds`): Arrow types. One pass over the rows."""
    kinds: dict[str, set[str]] = {c: set() for c in shape.inputs}
    original = _original_kinds(shape, settings)
    chunks: dict[str, list[Any]] = {c: [] for c in original}

    def fits(column: str) -> bool:
        import pyarrow as pa

        try:
            pa.array(chunks[column], type=original[column])
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            return False
        finally:
            chunks[column].clear()
        return True

    if shape.inputs:
        for raw in (raw for store in stores for raw in store.data_rows()):
            data = json.loads(raw)
            for c in shape.inputs:
                value = data.get(c)
                if value is not None:
                    kinds[c].add(_kind(value))
            for c in list(original):
                chunks[c].append(_revive(data.get(c), original[c]))
                if len(chunks[c]) >= PARQUET_ROWS and not fits(c):
                    del original[c]
    out = {}
    for column, seen in kinds.items():
        if seen <= {"int64", "float64"} and "float64" in seen:
            out[column] = "float64"
        elif len(seen) == 1 and "json" not in seen:
            out[column] = seen.pop()
        else:
            out[column] = "string" if not seen else "json"
    return out, {c: t for c, t in original.items() if fits(c)}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    return "json"


GENERATED_TYPES = {"prompt_tokens": "int64", "completion_tokens": "int64", "cost": "float64",
                   SEGMENTS: "int64", "audio_seconds": "float64"}


def _write_parquet(target: Path, shape: Shape, body: Iterable[dict[str, Any]],
                   stores: Sequence[RunStore], settings: TableSettings | None) -> None:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError("writing Parquet needs pyarrow: pip install 'batchgen[parquet]', or "
                         "choose output.format csv, tsv or jsonl") from None
    schema, parts = _arrow(shape, body, stores, settings)
    with pq.ParquetWriter(str(target), schema) as writer:
        for part in parts:
            writer.write_table(part)


def arrow_table(store: RunStore) -> Any | None:
    """The table of a job whose data was Parquet as an Arrow table, each kept
    input column in its type in the data file where its values fit it, as
    ``table.parquet`` has them; None for other data, or without pyarrow."""
    settings = settings_of(store)
    if settings is None or not settings.arrow_schema:
        return None
    try:
        import pyarrow as pa
    except ImportError:
        return None
    shape = shape_of(store, settings)
    schema, parts = _arrow(shape, rows(store, shape), [store], settings)
    return pa.Table.from_batches([b for part in parts for b in part.to_batches()],
                                 schema=schema)


def typed_rows(store: RunStore) -> Iterator[dict[str, Any]]:
    """:func:`rows`, with the kept input columns of Parquet data in their types
    in the data file (dates, times, decimals) where a value fits it."""
    settings = settings_of(store)
    shape = shape_of(store, settings)
    try:
        original = _original_kinds(shape, settings)
    except ImportError:  # read where pyarrow is not installed: the text
        original = {}
    for row in rows(store, shape):
        for c, kind in original.items():
            row[c] = _revive(row[c], kind)
        yield row


def _arrow(shape: Shape, body: Iterable[dict[str, Any]], stores: Sequence[RunStore],
           settings: TableSettings | None) -> tuple[Any, Iterator[Any]]:
    """The table's Arrow schema, and its rows as Arrow tables of
    :data:`PARQUET_ROWS` rows."""
    import pyarrow as pa

    types, original = _input_types(stores, shape, settings)
    arrow = {"string": pa.string(), "json": pa.string(), "int64": pa.int64(),
             "float64": pa.float64(), "bool": pa.bool_()}  # json: JSON text
    fields = [pa.field(c, original[c] if c in original else arrow[types[c]])
              for c in shape.inputs]
    fields += [pa.field(shape.prefix + c, arrow[GENERATED_TYPES.get(c, "string")])
               for c in (*GENERATED_COLUMNS, *[SEGMENTS] * shape.segments,
                         *SPEECH * shape.speech)]
    fields += [pa.field(shape.prefix + "json", pa.string())] * shape.json
    flat = dict(zip((shape.prefix + c for c in shape.flat), shape.flat_types, strict=True))
    fields += [pa.field(c, arrow[t]) for c, t in flat.items()]
    schema = pa.schema(fields)
    as_json = [c for c in shape.inputs if types[c] == "json" and c not in original] + \
        [shape.prefix + "json"] * shape.json + [c for c, t in flat.items() if t == "json"]
    typed = {c: t for c, t in flat.items() if t != "json"}

    def parts() -> Iterator[Any]:
        batch: list[dict[str, Any]] = []
        for row in body:
            for c in as_json:  # a text property stays text
                if row[c] is not None and not (c in flat and isinstance(row[c], str)):
                    row[c] = json.dumps(row[c], ensure_ascii=False)
            for c, t in typed.items():
                row[c] = _typed(row[c], t)
            for c, kind in original.items():
                row[c] = _revive(row[c], kind)
            batch.append(row)
            if len(batch) >= PARQUET_ROWS:
                yield pa.Table.from_pylist(batch, schema=schema)
                batch = []
        if batch:
            yield pa.Table.from_pylist(batch, schema=schema)

    return schema, parts()


def _original_kinds(shape: Shape, settings: TableSettings | None) -> dict[str, Any]:
    """Per kept input column of Parquet data, its type in the data file (an
    Arrow type), to give it back where every value, as the store keeps it,
    fits: dates, times and decimals from their text, lists and structs as
    they are. Columns of the types :func:`_as_it_is` names are left out."""
    if settings is None or not settings.arrow_schema or not shape.inputs:
        return {}
    import pyarrow as pa

    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(settings.arrow_schema)))
    return {c: schema.field(c).type for c in shape.inputs if schema.get_field_index(c) >= 0
            and not _as_it_is(schema.field(c).type)}


def _as_it_is(kind: Any) -> bool:
    """Types the store's values already have (string, int, float, bool, null),
    and those it cannot give back (bytes kept as text, durations as text)."""
    import pyarrow.types as pat

    return bool(pat.is_string(kind) or pat.is_large_string(kind) or pat.is_int64(kind)
                or pat.is_float64(kind) or pat.is_boolean(kind) or pat.is_null(kind)
                or pat.is_binary(kind) or pat.is_large_binary(kind)
                or pat.is_fixed_size_binary(kind) or pat.is_duration(kind)
                or pat.is_map(kind))


def _revive(value: Any, kind: Any) -> Any:
    """A stored value (JSON's) as a value of its column's Arrow type: text back
    to a date, a time, a timestamp or a decimal; the rest as it is."""
    if not isinstance(value, str):
        return value
    import pyarrow.types as pat

    try:
        if pat.is_date(kind):
            return datetime.date.fromisoformat(value)
        if pat.is_timestamp(kind):
            return datetime.datetime.fromisoformat(value)
        if pat.is_time(kind):
            return datetime.time.fromisoformat(value)
        if pat.is_decimal(kind):
            return decimal.Decimal(value)
    except (ValueError, decimal.InvalidOperation):
        return value  # and the column, not fitting, keeps its text
    return value


def _typed(value: Any, kind: str) -> Any:
    """A flattened property's value in its column's Parquet type. Answers were
    checked against their schema, so it fits; one that cannot (an integer past
    64 bits) is left empty here, and the ``json`` column keeps it whole."""
    if value is None or kind == "string":
        return value if value is None or isinstance(value, str) \
            else json.dumps(value, ensure_ascii=False)
    if kind == "bool" or isinstance(value, bool) or not isinstance(value, int | float):
        return value if kind == "bool" and isinstance(value, bool) else None
    if kind == "float64":
        return float(value) if abs(value) <= sys.float_info.max else None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if -(2**63) <= value < 2**63 else None
