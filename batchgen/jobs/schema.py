"""What users write: each section of a job file, as a :class:`~batchgen.jobs.spec.Spec`.

A typo in a job file is an error with a location, never a silent default
(unknown keys are refused); no text is read as a number.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from batchgen.jobs.headers import check_headers
from batchgen.jobs.spec import Spec, extras, field

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ID_RE = re.compile(ID_PATTERN)

MAX_CONCURRENCY = 4096  # streams at once (run.concurrency, --concurrency)
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


def _no_stream_keys(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value:
        bad = sorted({"stream", "stream_options", "messages", "model"} & value.keys())
        if bad:
            raise ValueError(f"extra_body may not set {', '.join(bad)}: batchgen sets them itself")
    return value


@dataclass(frozen=True, kw_only=True)
class Params(Spec):
    """Chat-completions parameters that pass through to the API unchanged."""

    temperature: float | None = field(None, ge=0, le=2)
    top_p: float | None = field(None, gt=0, le=1)
    max_tokens: int | None = field(None, ge=1)
    max_completion_tokens: int | None = field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = field(None, ge=-2, le=2)
    frequency_penalty: float | None = field(None, ge=-2, le=2)
    response_format: dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = field(None, ge=0, le=20)
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
    n: int | None = field(None, ge=1, le=1)
    extra_body: dict[str, Any] | None = field(None, after=_no_stream_keys)


PARAM_NAMES = Params.names() - {"extra_body"}


def _parts_have_type(value: str | list[dict[str, Any]] | None
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


@dataclass(frozen=True, kw_only=True)
class Message(Spec):
    """One OpenAI chat message. Provider fields beside role/content are kept."""

    unknown_keys: ClassVar[Literal["forbid", "allow"]] = "allow"

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = field(None, after=_parts_have_type)
    others: dict[str, Any] = extras()


def _id_from_int(value: Any) -> Any:
    # YAML reads `id: 7` as a number; an id that names a file is text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _one_tag(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


@dataclass(frozen=True, kw_only=True)
class Answer(Spec):
    """``schema:`` and ``schema_mode:`` (:mod:`batchgen.jobs.structured`): the
    answer must be JSON fitting a JSON Schema (a mapping, or a ``.json`` path)."""

    answer_schema: dict[str, Any] | str | None = field(None, alias="schema")
    schema_mode: Literal["auto", "json_schema", "json_object", "prompt"] | None = None


@dataclass(frozen=True, kw_only=True)
class PromptSpec(Params, Answer):
    """One entry of ``prompts:`` or one line of a JSONL job file."""

    id: str | None = field(None, pattern=ID_PATTERN, before=_id_from_int)
    model: str | None = field(None, min_length=1)
    system: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = field(None, min_length=1)
    tags: list[str] | None = field(None, before=_one_tag)

    def check(self) -> None:
        if self.prompt is None and self.messages is None:
            raise ValueError(
                "missing prompt/messages: give `prompt:` (one user message) or `messages:`"
            )
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give either `prompt:` or `messages:`, not both")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("the prompt is empty: write its text, or leave this prompt out")
        for i, message in enumerate(self.messages or ()):
            if message.role in ("user", "system") and isinstance(message.content, str) \
                    and not message.content.strip():
                raise ValueError(f"messages[{i}]: the {message.role} message is empty: write "
                                 "its text, or leave the message out")


@dataclass(frozen=True, kw_only=True)
class Defaults(Params, Answer):
    """``defaults:`` — applied to every prompt unless the prompt sets its own."""

    model: str | None = field(None, min_length=1)
    system: str | None = None


def _chat_only(value: str) -> str:
    if not value.rstrip("/").endswith("/chat/completions"):
        raise ValueError(
            f"url {value!r} is not a chat-completions url; batchgen runs "
            "/v1/chat/completions requests only"
        )
    return value


@dataclass(frozen=True, kw_only=True)
class BatchLine(Spec):
    """A line in OpenAI Batch API form, as uploaded to OpenAI or DashScope."""

    custom_id: str = field(pattern=ID_PATTERN, before=_id_from_int)
    method: Literal["POST"] = "POST"
    url: str = field(after=_chat_only)
    body: dict[str, Any]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(value: str) -> str:
    """An http(s) URL without credentials or a query (plain http is for
    :func:`plain_http_host` to judge, with ``allow_http`` at hand)."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"base_url {value!r} holds a space or a control character, which no "
                         "URL has: check the quotes around it (percent-encode a space as %20)")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url {value!r} is not an http(s) URL")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    if port == 0:
        raise ValueError(f"base_url {value!r}: its port is not a number from 1 to 65535")
    if "#" in value:
        raise ValueError("base_url may not carry a fragment (#...)")
    if parts.username or parts.password:
        raise ValueError(
            "base_url may not carry credentials; put the key in an environment "
            "variable and name it in api_key_env"
        )
    if parts.query:
        raise ValueError("base_url may not carry a query string")
    # scheme and host written in capitals are the same endpoint: the same requests
    return parts._replace(netloc=parts.netloc.lower()).geturl().rstrip("/")


def plain_http_host(base_url: str) -> str | None:
    """The host a plain-http ``base_url`` sends the key and the prompts to
    unencrypted, or None for https and loopback."""
    parts = urlsplit(base_url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        return parts.hostname
    return None


@dataclass(frozen=True, kw_only=True)
class EndpointSpec(Spec):
    """``endpoint:`` — where requests go and which variable holds the key."""

    base_url: str = field(DEFAULT_BASE_URL, after=check_base_url)
    api_key_env: str | None = field(DEFAULT_API_KEY_ENV, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    region: str | None = None
    allow_http: bool = False  # plain http beyond loopback: a network the user trusts
    local: bool = False
    model_path: str | None = None
    server_args: list[str] = field(factory=list)
    # how this endpoint continues an assistant message; default: detected from the URL
    continuation: Literal["partial", "prefix", "continue_final_message", "prefill",
                          "none"] | None = None
    # more headers on every request (a gateway's key or route); ${NAME} reads the
    # environment (batchgen.jobs.headers)
    headers: dict[str, str] = field(factory=dict, after=check_headers)


@dataclass(frozen=True, kw_only=True)
class GuardSpec(Spec):
    """``run.guard:`` — what is watched while an answer streams."""

    # a degenerate loop: the same span (≥ min_span characters) back to back,
    # ≥ min_copies times over ≥ min_chars characters; `false` (or `off`) turns it off
    repetition: bool = True
    min_span: int = field(default=10, ge=2, le=1000)
    min_chars: int = field(default=1000, ge=50)
    min_copies: int = field(default=10, ge=2)
    # fail (the request fails, reason `repetition`, its text to the loop's first
    # copy kept in texts/<id>.partial.md), keep (done with that text), retry
    on_repetition: Literal["fail", "keep", "retry"] = "fail"


@dataclass(frozen=True, kw_only=True)
class RunSpec(Spec):
    """``run:`` — how hard and how patiently to run."""

    concurrency: int = field(default=8, ge=1, le=MAX_CONCURRENCY)
    max_attempts: int = field(default=6, ge=1, le=100)
    idle_timeout: float = field(default=120.0, gt=0)
    connect_timeout: float = field(default=30.0, gt=0)
    max_duration: float | None = field(default=None, gt=0)
    rpm: float | None = field(default=None, gt=0)
    tpm: float | None = field(default=None, gt=0)
    # auto: an interrupted answer goes on from its text where the endpoint can
    resume: Literal["auto", "fresh"] = "auto"
    # redis://HOST:PORT/DB: rate limits shared by every process of one account
    limits_url: str | None = field(default=None, pattern=r"^rediss?://")
    # stream (default), or batch: through the provider's Batch API at its lower price
    via: Literal["stream", "batch"] = "stream"
    # what a batch that expired or was cancelled leaves unanswered goes into: a new
    # batch, or streaming
    fallback: Literal["batch", "stream"] = "batch"
    # seconds an outage of the endpoint is waited out before the run stops
    # (exit 69), every unfinished request left pending
    outage_timeout: float = field(default=1800.0, gt=0)
    guard: GuardSpec = field(factory=GuardSpec)
    # an answer cut at the output cap (finish_reason "length"): stop there, or
    # continue it with the endpoint's continuation form, segment after segment
    on_length: Literal["stop", "continue"] = "stop"
    max_invalid: int = field(default=2, ge=0, le=100)  # answers asked again for a schema
    media_root: str | None = field(default=None, min_length=1)  # file:// may read here too
    max_media_bytes: int = field(default=10 * 1024 * 1024, ge=1)  # a file, base64-encoded
    max_continuations: int = field(default=16, ge=0, le=10_000)  # length-continuations
    max_total_tokens: int | None = field(default=None, gt=0)  # completion tokens, all segments


@dataclass(frozen=True, kw_only=True)
class BudgetSpec(Spec):
    """``budget:`` — stop launching before spend could pass ``max_cost``."""

    max_cost: float = field(gt=0)
    currency: str = field(min_length=3, max_length=3)


@dataclass(frozen=True, kw_only=True)
class TierSpec(Spec):
    """One price tier, chosen by the request's prompt tokens."""

    max_prompt_tokens: int | None = field(default=None, ge=1)
    input: float = field(ge=0)
    output: float = field(ge=0)
    thinking_output: float | None = field(default=None, ge=0)
    cached_input: float | None = field(default=None, ge=0)
    audio_input: float | None = field(default=None, ge=0)
    audio_output: float | None = field(default=None, ge=0)


@dataclass(frozen=True, kw_only=True)
class PriceSpec(Spec):
    """Prices per 1M tokens for one model (flat, or by ``tiers``)."""

    currency: str = field(min_length=3, max_length=3)
    input: float | None = field(default=None, ge=0)
    output: float | None = field(default=None, ge=0)
    thinking_output: float | None = field(default=None, ge=0)
    cached_input: float | None = field(default=None, ge=0)
    audio_input: float | None = field(default=None, ge=0)  # per 1M audio tokens heard
    audio_output: float | None = field(default=None, ge=0)  # per 1M speech tokens said
    tiers: list[TierSpec] | None = None
    source: str | None = None
    as_of: str | None = None

    def check(self) -> None:
        if self.tiers is None and (self.input is None or self.output is None):
            raise ValueError("give `input` and `output` (per 1M tokens), or `tiers:`")


@dataclass(frozen=True, kw_only=True)
class DataSpec(Spec):
    """``data:`` — rows to template over: a file, or files matching a pattern."""

    path: str | None = field(default=None, min_length=1)
    glob: str | None = field(default=None, min_length=1)
    id: str | None = field(default=None, min_length=1)  # the column holding request ids
    limit: int | None = field(default=None, ge=1)

    def check(self) -> None:
        if (self.path is None) == (self.glob is None):
            raise ValueError("give `path:` (a CSV, TSV, JSONL, JSON or Parquet file) or "
                             "`glob:` (files, one row each), one of them")
        for value in (self.path, self.glob):
            if value is not None and (value.startswith(("/", "~")) or ".." in value.split("/")):
                raise ValueError("must be a path inside the job file's folder (no absolute "
                                 "paths, no '..')")


OUTPUT_FORMATS = ("csv", "tsv", "jsonl", "parquet")


@dataclass(frozen=True, kw_only=True)
class OutputSpec(Spec):
    """``output:`` — the table a job with ``data:`` writes."""

    columns: list[str] | None = None  # input columns kept (default: all)
    format: Literal["csv", "tsv", "jsonl", "parquet"] | None = None
    table: str | None = field(default=None, min_length=1)
    prefix: str = field(default="", pattern=r"^[A-Za-z0-9_.-]*$")
    flatten: bool = False  # an answer to a schema: a column per top-level property


def _section(value: Any) -> Any:
    return {} if value is None else value  # `run:` with nothing under it


def _endpoint(value: Any) -> Any:
    return {"local": True} if value == "local" else _section(value)


def _data_path(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


@dataclass(frozen=True, kw_only=True)
class JobSpec(Spec):
    """A YAML job file."""

    name: str | None = field(default=None, pattern=ID_PATTERN)
    output_dir: str | None = None
    endpoint: EndpointSpec = field(factory=EndpointSpec, before=_endpoint)
    defaults: Defaults = field(factory=Defaults, before=_section)
    run: RunSpec = field(factory=RunSpec, before=_section)
    budget: BudgetSpec | None = None
    pricing: dict[str, PriceSpec] | None = None
    prompts: list[dict[str, Any]] | None = None
    prompts_file: str | None = None
    data: DataSpec | None = field(None, before=_data_path)
    template: dict[str, Any] | None = None
    output: OutputSpec = field(factory=OutputSpec, before=_section)

    def check(self) -> None:
        if self.prompts is None and self.prompts_file is None and self.data is None:
            raise ValueError("no prompts: give `prompts:`, `prompts_file:` or `data:` with "
                             "a `template:`")
        if self.data is not None and self.template is None:
            raise ValueError("`data:` needs a `template:` (prompt:, system:, ... over the "
                             "row's columns)")
        if self.template is not None and self.data is None:
            raise ValueError("`template:` needs `data:` (the rows it fills in)")

