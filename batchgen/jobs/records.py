"""What a validated job is inside batchgen: frozen records, made from the schema.

The schema (:mod:`batchgen.jobs.schema`) is what users write, checked at the
edge; these are what the rest of batchgen passes around once it passed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from batchgen.store.records import PlanRow


@dataclass(frozen=True)
class Request:
    """One resolved request: what is sent, and how it is known again."""

    id: str
    position: int
    model: str
    body: dict[str, Any]
    fingerprint: str
    tags: tuple[str, ...] = ()
    source: str = ""
    body_json: str = ""
    data_row: str | None = None  # a data row's kept columns (JSON), for the table
    schema_json: str | None = None  # the JSON Schema its answer must fit (canonical JSON)

    def row(self) -> PlanRow:
        """What the run store plans of it: id, position, fingerprint, model, body,
        tags, the data row it was made of, and the schema its answer must fit."""
        return (self.id, self.position, self.fingerprint, self.model,
                self.body_json or json.dumps(self.body, ensure_ascii=False, separators=(",", ":")),
                json.dumps(list(self.tags), ensure_ascii=False, separators=(",", ":"))
                if self.tags else None, self.data_row, self.schema_json)


# the columns the table adds to a data row's kept ones, in this order
GENERATED_COLUMNS = ("id", "status", "content", "reasoning", "finish_reason", "prompt_tokens",
                     "completion_tokens", "cost", "error")


@dataclass(frozen=True)
class TableSettings:
    """``output:`` of a job with ``data:``: the table every run writes."""

    format: str  # csv | tsv | jsonl | parquet
    path: str  # where: <run dir>/table.<format>, or output.table
    prefix: str = ""  # before each generated column's name
    columns: tuple[str, ...] | None = None  # input columns kept (None: all)
    flatten: bool = False  # a column per top-level property of a JSON answer
    merge_path: str | None = None  # a shard's: where `batchgen merge` writes the whole table
    bom: bool = False  # the data file began with a UTF-8 BOM (Excel's): a CSV/TSV table does
    # Parquet data: its Arrow schema (IPC bytes, base64), so a Parquet table gives the
    # kept columns their types back (dates, decimals, lists, structs), where values fit
    arrow_schema: str | None = None

    def to_json(self) -> str:
        return json.dumps({"format": self.format, "path": self.path, "prefix": self.prefix,
                           "columns": list(self.columns) if self.columns is not None else None,
                           "flatten": self.flatten, "merge_path": self.merge_path,
                           "bom": self.bom,
                           **({"arrow_schema": self.arrow_schema} if self.arrow_schema else {})})


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    api_key_env: str | None
    region: str | None = None
    local: bool = False
    model_path: str | None = None
    server_args: tuple[str, ...] = ()
    continuation: str = "none"
    # the key variable the job file chose, not sent: (variable, its provider),
    # as the job file named another host (batchgen.jobs.endpoints.key_elsewhere)
    key_withheld: tuple[str, str] | None = None
    # more headers, as written (their ${NAME} parts read when the run starts)
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GuardSettings:
    """``run.guard``: the repetition guard's switch, thresholds and verdict."""

    repetition: bool = True
    min_span: int = 10
    min_chars: int = 1000
    min_copies: int = 10
    on_repetition: str = "fail"


@dataclass(frozen=True)
class RunSettings:
    concurrency: int = 8
    max_attempts: int = 6
    idle_timeout: float = 120.0
    connect_timeout: float = 30.0
    max_duration: float | None = None
    rpm: float | None = None
    tpm: float | None = None
    resume: str = "auto"
    limits_url: str | None = None
    via: str = "stream"
    fallback: str = "batch"
    no_wait: bool = False  # --no-wait: submit batches and exit 5
    outage_timeout: float = 1800.0
    guard: GuardSettings = field(default_factory=GuardSettings)
    on_length: str = "stop"
    max_continuations: int = 16
    max_total_tokens: int | None = None
    max_invalid: int = 2
    media_root: str | None = None
    max_media_bytes: int = 10 * 1024 * 1024
    media_base: str = "."  # the job file's folder: where file:// paths start


@dataclass(frozen=True)
class Budget:
    max_cost: float
    currency: str  # "" for --max-cost alone, until the run takes its models' currency


@dataclass(frozen=True)
class JobInfo:
    """Counts gathered while validating, for ``validate`` and ``--dry-run``."""

    requests: int
    models: tuple[str, ...]
    files: tuple[str, ...] = field(default=())
    plan_digest: str = ""  # SHA-256 over every (id, fingerprint) this run runs, in job order
    job_digest: str = ""  # the same over the whole job (equal to plan_digest unless sharded)
    job_requests: int = 0  # requests in the whole job
    # (model, schema mode) of the requests whose answer must fit a schema
    schema_modes: tuple[tuple[str, str], ...] = ()
    media_files: int = 0  # file:// references: their bytes are hashed on every load
    columns: tuple[str, ...] = ()  # the data rows' columns, in the order they first appear
    speech: bool = False  # some request asks for a spoken answer (modalities: audio)
