"""From a prompt entry (YAML item, JSONL line, Batch API line, or a data row
rendered through its template) to a :class:`Request`: validated, its messages
and parameters merged with the defaults, a schema applied in its mode, its
``file://`` media checked and hashed, its fingerprint and id.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_core import ValidationError

from batchgen.errors import Problem
from batchgen.jobs import media, structured
from batchgen.jobs.problems import from_validation, path_str
from batchgen.jobs.records import Request
from batchgen.jobs.schema import PARAM_NAMES, BatchLine, Defaults, PromptSpec
from batchgen.jobs.sources import entries
from batchgen.jobs.spec import Spec, dump
from batchgen.jsonfast import canonical

if TYPE_CHECKING:
    from batchgen.jobs.load import Job


@dataclass
class Walk:
    """What one walk over a job's requests learns beside them: schema files read
    (each once), inline schemas found valid, the (model, mode) pairs chosen
    (``--dry-run`` says them) and how many ``file://`` references there are."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    checked: set[str] = field(default_factory=set)
    modes: dict[tuple[str, str], None] = field(default_factory=dict)
    media_files: int = 0
    defaults: dict[str, Any] | None = None  # the defaults' request parameters


def resolve_all(job: Job, report: Callable[[Problem], None],
                 seen: dict[str, None] | None = None, walk: Walk | None = None
                 ) -> Iterator[Request]:
    """Every request of the job, in job order; ``seen`` gathers the data rows'
    columns, in the order they first appear."""
    position = 0
    occurrences: dict[str, int] = {}
    walk = walk or Walk()
    for src in job.sources:
        for (entry, where, path, line_of), row in entries(src, report, seen):
            req = _resolve(job, entry, where, path, line_of, position, occurrences, report,
                           data_row=row, walk=walk)
            if req is not None:
                yield req
                position += 1


def _validate(model: type[Spec], entry: dict[str, Any], name: str,
              path: tuple[Any, ...], line_of: Callable[[tuple[Any, ...]], int | None],
              report: Callable[[Problem], None]) -> Any:
    try:
        return model.validate(entry)
    except ValidationError as exc:
        for problem in from_validation(exc, file=name, prefix=path, line_of=line_of, model=model):
            report(problem)
        return None


def _resolve(job: Job, entry: dict[str, Any], where: str, path: tuple[Any, ...],
             line_of: Callable[[tuple[Any, ...]], int | None], position: int,
             occurrences: dict[str, int], report: Callable[[Problem], None], *,
             data_row: str | None = None, walk: Walk) -> Request | None:
    name = where.rsplit(":", 1)[0]
    given_id: str | None
    if "custom_id" in entry:
        batch = _validate(BatchLine, entry, name, path, line_of, report)
        if batch is None:
            return None
        body = _batch_body(batch.body)
        spec = _validate(PromptSpec, body, name, (*path, "body"), line_of, report)
        given_id = batch.custom_id
    else:
        spec = _validate(PromptSpec, entry, name, path, line_of, report)
        given_id = spec.id if spec is not None else None
    if spec is None:
        return None
    defaults = job.defaults
    model = spec.model or defaults.model
    if not model:
        report(Problem(name, line_of(path), path_str((*path, "model")),
                       "no model: set `model:` here, `defaults.model` in the job file, "
                       "or pass --model"))
        return None
    messages = _messages(spec, defaults)
    if messages is None:
        report(Problem(name, line_of(path), path_str((*path, "system")),
                       "`system:` given and `messages` already has a system message; keep one"))
        return None
    if walk.defaults is None:  # the defaults' parameters, once a walk
        walk.defaults = {key: getattr(defaults, key)
                         for key in defaults.fields_set & PARAM_NAMES
                         if getattr(defaults, key) is not None}
    params: dict[str, Any] = dict(walk.defaults)
    for key in spec.fields_set & PARAM_NAMES:
        value = getattr(spec, key)
        if value is None:
            params.pop(key, None)  # `key: null` on a prompt unsets a default
        else:
            params[key] = value
    extra = {**(defaults.extra_body or {}), **(spec.extra_body or {})}
    request: dict[str, Any] = {"model": model, "messages": messages, **params}
    if extra:
        request["extra_body"] = extra
    schema_json = schema_key = None
    own = "answer_schema" in spec.fields_set
    given = spec.answer_schema if own else defaults.answer_schema
    if given is not None:
        at = (*path, "schema") if own else ("defaults", "schema")
        mode = spec.schema_mode or defaults.schema_mode or "auto"
        try:
            schema = structured.load_schema(given, job.path.parent, walk.files, walk.checked)
        except structured.SchemaProblem as exc:
            report(Problem(name if own else str(job.path), line_of(at), path_str(at), str(exc)))
            return None
        if "response_format" in params:
            report(Problem(name, line_of(path), path_str((*path, "response_format")),
                           "give `schema:` or `response_format:`, not both (schema_mode "
                           "chooses the response_format)"))
            return None
        if mode == "auto":
            mode = structured.auto_mode(job.endpoint.base_url, job.endpoint.local, request,
                                        schema)
        request = structured.apply(request, schema, mode)
        schema_json = json.dumps(schema, ensure_ascii=False, separators=(",", ":"))  # as written
        schema_key = canonical(schema)
        walk.modes[(model, mode)] = None
    if job.endpoint.local and "--mmproj" not in job.endpoint.server_args \
            and media.has_media(request["messages"]):
        report(Problem(name, line_of(path), path_str((*path, "messages")),
                       "the local endpoint's model reads text only (llama-server answers an "
                       "image, video or audio part with an error); give endpoint.model_path a "
                       "model that sees and endpoint.server_args its --mmproj projector, or "
                       "send this job to an API"))
        return None
    hashes = []
    for ref in media.refs(request["messages"]):
        part_at = _message_path(path, spec, len(request["messages"]), ref.where)
        try:
            checked = media.check(ref.value, ref.kind, Path(job.run.media_base),
                                  media.roots_from(job.run.media_root,
                                                   Path(job.run.media_base)),
                                  job.run.max_media_bytes)
        except media.MediaProblem as exc:
            report(Problem(name, line_of(part_at), path_str(part_at), str(exc)))
            return None
        hashes.append(checked.sha256)
        walk.media_files += 1
    body_json = canonical(request)
    try:
        keyed = f"{job.endpoint_id}\n{body_json}".encode()
        if hashes:  # the files' bytes, not only their names
            keyed += ("\nfiles:" + ",".join(hashes)).encode()
        if schema_json is not None:  # a schema the body does not carry still counts
            keyed += f"\n{schema_key}".encode()
        if spec.tags:
            "".join(spec.tags).encode()
    except UnicodeEncodeError:
        at = _lone_surrogate(entry, path) or path
        report(Problem(name, line_of(at), path_str(at),
                       "holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its "
                       "pair), which UTF-8 cannot carry: fix or remove that escape"))
        return None
    fingerprint = hashlib.sha256(keyed).hexdigest()
    req_id = given_id
    if req_id is None:
        content = canonical({"messages": messages})
        digest = hashlib.sha256(content.encode()).hexdigest()[:12]
        n = occurrences.get(digest, 0) + 1
        occurrences[digest] = n
        req_id = f"p-{digest}" if n == 1 else f"p-{digest}-{n}"
    return Request(id=req_id, position=position, model=model, body=request,
                   fingerprint=fingerprint, tags=tuple(spec.tags or ()), source=where,
                   body_json=body_json, data_row=data_row, schema_json=schema_json)


def _message_path(path: tuple[Any, ...], spec: PromptSpec, total: int,
                  where: tuple[Any, ...]) -> tuple[Any, ...]:
    """Where a part of the resolved messages stands in the job file. Messages
    batchgen adds (a system message) come first, so the written ones end the list."""
    written = len(spec.messages) if spec.messages is not None else 0
    return (*path, "messages", where[0] - (total - written), *where[1:])


def _lone_surrogate(obj: Any, path: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Where in a JSON value a string (or key) holds a lone surrogate."""
    if isinstance(obj, str):
        return None if obj.isascii() or not _has_lone(obj) else path
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str) and _has_lone(key):
                return (*path, key)
            found = _lone_surrogate(value, (*path, key))
            if found is not None:
                return found
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found = _lone_surrogate(value, (*path, index))
            if found is not None:
                return found
    return None


def _has_lone(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def _batch_body(body: dict[str, Any]) -> dict[str, Any]:
    """A Batch API body was written for raw HTTP: provider keys sit at the top."""
    known = PromptSpec.names()
    out: dict[str, Any] = {}
    given = body.get("extra_body")
    if given is not None and not isinstance(given, dict):
        # not an object: left as given, for validation to refuse with its key
        return {key: value for key, value in body.items() if key in known}
    extra: dict[str, Any] = dict(given or {})
    for key, value in body.items():
        if key in ("stream", "stream_options", "extra_body"):
            continue
        if key in known:
            out[key] = value
        else:
            extra[key] = value
    if extra:
        out["extra_body"] = extra
    return out


def _messages(spec: PromptSpec, defaults: Defaults) -> list[dict[str, Any]] | None:
    if spec.messages is not None:
        messages: list[dict[str, Any]] = dump(spec.messages, exclude_none=True)
        has_system = any(m["role"] in ("system", "developer") for m in messages)
        if spec.system is not None:
            if has_system:
                return None
            return [{"role": "system", "content": spec.system}, *messages]
        if defaults.system is not None and not has_system:
            return [{"role": "system", "content": defaults.system}, *messages]
        return messages
    system = spec.system if spec.system is not None else defaults.system
    user = {"role": "user", "content": spec.prompt}
    return [{"role": "system", "content": system}, user] if system is not None else [user]

