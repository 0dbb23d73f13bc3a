"""What users write (pydantic, ``extra="forbid"``) and what batchgen passes around.

A typo in a job file is an error with a location, never a silent default.
Internal records are frozen dataclasses.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ID_RE = re.compile(ID_PATTERN)

DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
DEFAULT_API_KEY_ENV = "DASHSCOPE_API_KEY"

# Keys that providers accept beside the OpenAI ones; the SDK only sends them
# from ``extra_body``, so a job file that puts them at the top gets a hint.
PROVIDER_KEYS = frozenset(
    {
        "enable_thinking",
        "thinking_budget",
        "top_k",
        "repetition_penalty",
        "enable_search",
        "search_options",
        "translation_options",
        "vl_high_resolution_images",
        "incremental_output",
        "enable_code_interpreter",
        "min_p",
        "chat_template_kwargs",
        "partial",
    }
)


class _Strict(BaseModel):
    # defer_build: a model's validator is built when it first validates, so a
    # run pays only for the parts of the schema its job uses (~30 ms of a
    # one-request run's start-up, bench P6)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True,
                              defer_build=True)


class Params(_Strict):
    """Chat-completions parameters that pass through to the API unchanged."""

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    store: bool | None = None
    prediction: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    web_search_options: dict[str, Any] | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    extra_body: dict[str, Any] | None = None

    @field_validator("extra_body")
    @classmethod
    def _no_stream_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            bad = sorted({"stream", "stream_options", "messages", "model"} & value.keys())
            if bad:
                raise ValueError(
                    f"extra_body may not set {', '.join(bad)}: batchgen sets them itself"
                )
        return value


PARAM_NAMES = frozenset(Params.model_fields) - {"extra_body"}


class Message(BaseModel):
    """One OpenAI chat message. Provider fields beside role/content are kept."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True, defer_build=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _parts_have_type(
        cls, value: str | list[dict[str, Any]] | None
    ) -> str | list[dict[str, Any]] | None:
        if isinstance(value, list):
            if not value:
                raise ValueError("content list is empty: give at least one part")
            for i, part in enumerate(value):
                if not isinstance(part.get("type"), str):
                    raise ValueError(
                        f"content part {i} has no 'type' (text, image_url, input_audio, ...)"
                    )
        return value


def _id_from_int(value: Any) -> Any:
    # YAML reads `id: 7` as a number; an id that names a file is text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Answer(_Strict):
    """``schema:`` and ``schema_mode:`` (:mod:`batchgen.jobs.structured`): the
    answer must be JSON fitting a JSON Schema (a mapping, or a ``.json`` path)."""

    answer_schema: dict[str, Any] | str | None = Field(default=None, alias="schema")
    schema_mode: Literal["auto", "json_schema", "json_object", "prompt"] | None = None


class PromptSpec(Params, Answer):
    """One entry of ``prompts:`` or one line of a JSONL job file."""

    id: str | None = Field(default=None, pattern=ID_PATTERN)
    model: str | None = Field(default=None, min_length=1)
    system: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    tags: list[str] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _int_id(cls, value: Any) -> Any:
        return _id_from_int(value)

    @field_validator("tags", mode="before")
    @classmethod
    def _one_tag(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> PromptSpec:
        if self.prompt is None and self.messages is None:
            raise ValueError(
                "missing prompt/messages: give `prompt:` (one user message) or `messages:`"
            )
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give either `prompt:` or `messages:`, not both")
        return self


class Defaults(Params, Answer):
    """``defaults:`` — applied to every prompt unless the prompt sets its own."""

    model: str | None = Field(default=None, min_length=1)
    system: str | None = None


class BatchLine(_Strict):
    """A line in OpenAI Batch API form, as uploaded to OpenAI or DashScope."""

    custom_id: str = Field(pattern=ID_PATTERN)
    method: Literal["POST"] = "POST"
    url: str
    body: dict[str, Any]

    @field_validator("custom_id", mode="before")
    @classmethod
    def _int_id(cls, value: Any) -> Any:
        return _id_from_int(value)

    @field_validator("url")
    @classmethod
    def _chat_only(cls, value: str) -> str:
        if not value.rstrip("/").endswith("/chat/completions"):
            raise ValueError(
                f"url {value!r} is not a chat-completions url; batchgen runs "
                "/v1/chat/completions requests only"
            )
        return value


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(value: str) -> str:
    """https only (plain http on loopback), and no credentials in the URL."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url {value!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ValueError(
            "base_url may not carry credentials; put the key in an environment "
            "variable and name it in api_key_env"
        )
    if parts.query:
        raise ValueError("base_url may not carry a query string")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(
            f"base_url {value!r} uses plain http: use https:// (http is only allowed on loopback)"
        )
    return value.rstrip("/")


class EndpointSpec(_Strict):
    """``endpoint:`` — where requests go and which variable holds the key."""

    base_url: str = DEFAULT_BASE_URL
    api_key_env: str | None = Field(
        default=DEFAULT_API_KEY_ENV, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"
    )
    region: str | None = None
    local: bool = False
    model_path: str | None = None
    server_args: list[str] = Field(default_factory=list)
    # how this endpoint continues an assistant message; default: detected from the URL
    continuation: Literal["partial", "prefix", "continue_final_message", "prefill",
                          "none"] | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)


class GuardSpec(_Strict):
    """``run.guard:`` — what is watched while an answer streams."""

    # a degenerate loop: the same span (≥ min_span characters) back to back,
    # ≥ min_copies times over ≥ min_chars characters; `false` (or `off`) turns it off
    repetition: bool = True
    min_span: int = Field(default=10, ge=2, le=1000)
    min_chars: int = Field(default=1000, ge=50)
    min_copies: int = Field(default=10, ge=2)
    # fail (the request fails, reason `repetition`, its text to the loop's first
    # copy kept in texts/<id>.partial.md), keep (done with that text), retry
    on_repetition: Literal["fail", "keep", "retry"] = "fail"


class RunSpec(_Strict):
    """``run:`` — how hard and how patiently to run."""

    concurrency: int = Field(default=8, ge=1, le=4096)
    max_attempts: int = Field(default=6, ge=1, le=100)
    idle_timeout: float = Field(default=120.0, gt=0)
    connect_timeout: float = Field(default=30.0, gt=0)
    max_duration: float | None = Field(default=None, gt=0)
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    # auto: an interrupted answer goes on from its text where the endpoint can
    resume: Literal["auto", "fresh"] = "auto"
    # redis://HOST:PORT/DB: rate limits shared by every process of one account
    limits_url: str | None = Field(default=None, pattern=r"^rediss?://")
    # stream (default), or batch: through the provider's Batch API at its lower price
    via: Literal["stream", "batch"] = "stream"
    # what a batch that expired or was cancelled leaves unanswered goes into: a new
    # batch, or streaming
    fallback: Literal["batch", "stream"] = "batch"
    # seconds an outage of the endpoint is waited out before the run stops
    # (exit 69), every unfinished request left pending
    outage_timeout: float = Field(default=1800.0, gt=0)
    guard: GuardSpec = Field(default_factory=GuardSpec)
    # an answer cut at the output cap (finish_reason "length"): stop there, or
    # continue it with the endpoint's continuation form, segment after segment
    on_length: Literal["stop", "continue"] = "stop"
    max_invalid: int = Field(default=2, ge=0, le=100)  # answers asked again for a schema
    media_root: str | None = Field(default=None, min_length=1)  # file:// may read here too
    max_media_bytes: int = Field(default=10 * 1024 * 1024, ge=1)  # a file, base64-encoded
    max_continuations: int = Field(default=16, ge=0, le=10_000)  # length-continuations
    max_total_tokens: int | None = Field(default=None, gt=0)  # completion tokens, all segments


class BudgetSpec(_Strict):
    """``budget:`` — stop launching before spend could pass ``max_cost``."""

    max_cost: float = Field(gt=0)
    currency: str = Field(min_length=3, max_length=3)


class TierSpec(_Strict):
    """One price tier, chosen by the request's prompt tokens."""

    max_prompt_tokens: int | None = Field(default=None, ge=1)
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    thinking_output: float | None = Field(default=None, ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    audio_input: float | None = Field(default=None, ge=0)
    audio_output: float | None = Field(default=None, ge=0)


class PriceSpec(_Strict):
    """Prices per 1M tokens for one model (flat, or by ``tiers``)."""

    currency: str = Field(min_length=3, max_length=3)
    input: float | None = Field(default=None, ge=0)
    output: float | None = Field(default=None, ge=0)
    thinking_output: float | None = Field(default=None, ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    audio_input: float | None = Field(default=None, ge=0)  # per 1M audio tokens heard
    audio_output: float | None = Field(default=None, ge=0)  # per 1M speech tokens said
    tiers: list[TierSpec] | None = None
    source: str | None = None
    as_of: str | None = None

    @model_validator(mode="after")
    def _flat_or_tiers(self) -> PriceSpec:
        if self.tiers is None and (self.input is None or self.output is None):
            raise ValueError("give `input` and `output` (per 1M tokens), or `tiers:`")
        return self


class DataSpec(_Strict):
    """``data:`` — rows to template over: a file, or files matching a pattern."""

    path: str | None = Field(default=None, min_length=1)
    glob: str | None = Field(default=None, min_length=1)
    id: str | None = Field(default=None, min_length=1)  # the column holding request ids
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _path_or_glob(self) -> DataSpec:
        if (self.path is None) == (self.glob is None):
            raise ValueError("give `path:` (a CSV, TSV, JSONL, JSON or Parquet file) or "
                             "`glob:` (files, one row each), one of them")
        for value in (self.path, self.glob):
            if value is not None and (value.startswith(("/", "~")) or ".." in value.split("/")):
                raise ValueError("must be a path inside the job file's folder (no absolute "
                                 "paths, no '..')")
        return self


OUTPUT_FORMATS = ("csv", "tsv", "jsonl", "parquet")


class OutputSpec(_Strict):
    """``output:`` — the table a job with ``data:`` writes."""

    columns: list[str] | None = None  # input columns kept (default: all)
    format: Literal["csv", "tsv", "jsonl", "parquet"] | None = None
    table: str | None = Field(default=None, min_length=1)
    prefix: str = Field(default="", pattern=r"^[A-Za-z0-9_.-]*$")
    flatten: bool = False  # an answer to a schema: a column per top-level property


class JobSpec(_Strict):
    """A YAML job file."""

    name: str | None = Field(default=None, pattern=ID_PATTERN)
    output_dir: str | None = None
    endpoint: EndpointSpec = Field(default_factory=EndpointSpec)
    defaults: Defaults = Field(default_factory=Defaults)
    run: RunSpec = Field(default_factory=RunSpec)
    budget: BudgetSpec | None = None
    pricing: dict[str, PriceSpec] | None = None
    prompts: list[dict[str, Any]] | None = None
    prompts_file: str | None = None
    data: DataSpec | None = None
    template: dict[str, Any] | None = None
    output: OutputSpec = Field(default_factory=OutputSpec)

    @field_validator("data", mode="before")
    @classmethod
    def _data_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    @field_validator("endpoint", mode="before")
    @classmethod
    def _local_shorthand(cls, value: Any) -> Any:
        return {"local": True} if value == "local" else value

    @field_validator("endpoint", "defaults", "run", "output", mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _has_prompts(self) -> JobSpec:
        if self.prompts is None and self.prompts_file is None and self.data is None:
            raise ValueError("no prompts: give `prompts:`, `prompts_file:` or `data:` with "
                             "a `template:`")
        if self.data is not None and self.template is None:
            raise ValueError("`data:` needs a `template:` (prompt:, system:, ... over the "
                             "row's columns)")
        if self.template is not None and self.data is None:
            raise ValueError("`template:` needs `data:` (the rows it fills in)")
        return self


# ---------------------------------------------------------------- internal
