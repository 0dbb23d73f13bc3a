"""Job files (YAML, JSONL, OpenAI Batch JSONL) -> a validated :class:`Job`.

Loading validates everything in one streaming pass and raises
:class:`JobFileError` listing each problem with file, line, key and fix; it
creates nothing on disk. :meth:`Job.requests` then streams the resolved
requests a second time, so a 100k-prompt JSONL never sits in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .continuation import detect as detect_continuation
from .errors import JobFileError, Problem, UsageError
from .ids import ClashFinder, clash_problems
from .models import (
    ID_RE,
    PARAM_NAMES,
    BatchLine,
    Budget,
    Defaults,
    Endpoint,
    EndpointSpec,
    JobInfo,
    JobSpec,
    PriceSpec,
    PromptSpec,
    Request,
    RunSettings,
    check_base_url,
)
from .problems import from_validation, path_str, secret_problems
from .secrets import check_key_env
from .shards import shard_dir, shard_of
from .yamlload import LineMap, YamlProblem, load_yaml, stream_items

MAX_YAML_BYTES = 8 * 1024 * 1024
MAX_JSONL_BYTES = int(os.environ.get("BATCHGEN_MAX_JSONL_BYTES", str(4 * 1024**3)))
MAX_LINE_BYTES = 32 * 1024 * 1024
MAX_PROBLEMS = 20
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
LIMITS_URL_VAR = "BATCHGEN_LIMITS_URL"  # redis://HOST:PORT/DB: shared rate limits


@dataclass(frozen=True)
class Overrides:
    """Command-line flags; each replaces the job file's setting."""

    name: str | None = None
    out: str | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int | None = None
    local: bool = False
    max_cost: float | None = None
    currency: str | None = None
    allowed_key_envs: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None  # (K, N): run only shard K of N
    via: str | None = None  # --via stream|batch
    fallback: str | None = None  # --fallback batch|stream
    no_wait: bool = False  # --no-wait


@dataclass(frozen=True)
class _Source:
    """Where prompts come from: a YAML job's ``prompts:`` list, or a JSONL file.

    The YAML job's text is kept (it is capped at MAX_YAML_BYTES) and its list
    read again, an item at a time, on every walk: never a tree of all of them.
    """

    file: Path
    text: str | None = field(default=None, repr=False)
    line_map: LineMap | None = None
    stat: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Job:
    """A validated job. ``requests()`` streams its requests in job order."""

    name: str
    path: Path
    run_dir: Path
    endpoint: Endpoint
    run: RunSettings
    defaults: Defaults
    info: JobInfo
    budget: Budget | None = None
    pricing: dict[str, PriceSpec] = field(default_factory=dict)
    sources: tuple[_Source, ...] = ()
    shard: tuple[int, int] | None = None  # (K, N); run_dir is then the shard's directory
    job_dir: Path | None = None  # <output_dir>/<name>, where shards merge

    @property
    def endpoint_id(self) -> str:
        """What a fingerprint knows of the endpoint (a local port changes; the model does not)."""
        if self.endpoint.local:
            return "local:" + Path(self.endpoint.model_path or "default").name
        return self.endpoint.base_url

    def requests(self) -> Iterator[Request]:
        """Stream the resolved requests again, in job order."""
        for src in self.sources:
            if src.text is None and _stat(src.file) != src.stat:
                raise UsageError(f"{src.file} changed while batchgen was reading it; run again")

        def fail(problem: Problem) -> None:
            raise JobFileError([problem])

        for req in _resolve_all(self, fail):
            if self.shard is None or shard_of(req.id, self.shard[1]) == self.shard[0]:
                yield req


def load_job(path: str | os.PathLike[str], overrides: Overrides | None = None) -> Job:
    """Read and validate a job file. Raises :class:`JobFileError`; writes nothing."""
    ov = overrides or Overrides()
    file = Path(path)
    raw = _read_checked(file, MAX_YAML_BYTES if not _is_jsonl(file) else None)
    if _is_jsonl(file):
        spec = JobSpec(prompts_file=str(file))
        line_map = LineMap()
        sources: tuple[_Source, ...] = (_Source(file=file, stat=_stat(file)),)
    else:
        spec, line_map = _parse_yaml(file, raw)
        check_key_env(file, spec.endpoint, line_map.line_of(('endpoint', 'api_key_env')),
                      ov.api_key_env, ov.allowed_key_envs)
        sources = _yaml_sources(file, raw, spec, line_map)

    job = _assemble(file, spec, ov, sources)
    problems: list[Problem] = []

    def collect(problem: Problem) -> None:
        problems.append(problem)
        if len(problems) >= MAX_PROBLEMS:
            raise JobFileError(problems, truncated=True)

    count = total = 0
    models: dict[str, None] = {}
    clashes = ClashFinder()
    plan = hashlib.sha256()  # this run's requests (a shard's own)
    whole = hashlib.sha256()  # the whole job's: shards of one version of it merge
    for req in _resolve_all(job, collect):
        line = f"{req.id}\0{req.fingerprint}\n".encode()
        whole.update(line)
        clashes.add(req.id)  # over the whole job: shards merge into one texts/
        total += 1
        if job.shard is not None and shard_of(req.id, job.shard[1]) != job.shard[0]:
            continue
        plan.update(line)
        count += 1
        models.setdefault(req.model)
    suspects = clashes.positions()
    if suspects and len(problems) < MAX_PROBLEMS:
        for problem in clash_problems(_resolve_all(job, lambda _p: None), suspects):
            collect(problem)
    if not problems and total == 0:
        problems.append(Problem(str(file), None, None, "the job has no prompts"))
    if problems:
        raise JobFileError(problems)
    files = tuple(str(s.file) for s in sources)
    info = JobInfo(requests=count, models=tuple(models), files=tuple(dict.fromkeys(files)),
                   plan_digest=plan.hexdigest(), job_digest=whole.hexdigest(),
                   job_requests=total)
    return replace(job, info=info)


# ------------------------------------------------------------------ reading


def _is_jsonl(file: Path) -> bool:
    return file.suffix.lower() in JSONL_SUFFIXES


def _stat(file: Path) -> tuple[int, int]:
    st = file.stat()
    return st.st_size, st.st_mtime_ns


def _read_checked(file: Path, cap: int | None) -> str:
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


def _parse_yaml(file: Path, text: str) -> tuple[JobSpec, LineMap]:
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


def _yaml_sources(file: Path, text: str, spec: JobSpec, line_map: LineMap
                  ) -> tuple[_Source, ...]:
    sources: list[_Source] = []
    if spec.prompts is not None:
        sources.append(_Source(file=file, text=text, line_map=line_map))
    if spec.prompts_file is not None:
        pf = Path(spec.prompts_file)
        where = line_map.line_of(("prompts_file",))
        base = file.parent.resolve()
        target = (file.parent / pf).resolve()
        if pf.is_absolute() or not target.is_relative_to(base):
            raise JobFileError([Problem(
                str(file), where, "prompts_file",
                "must be a path inside the job file's folder (no absolute paths, no '..')")])
        if not _is_jsonl(pf):
            raise JobFileError([Problem(str(file), where, "prompts_file",
                                        "must be a .jsonl file (one prompt object a line)")])
        full = file.parent / pf
        try:
            _read_checked(full, None)
        except JobFileError as exc:
            raise JobFileError([Problem(str(file), where, "prompts_file",
                                        f"{pf}: {exc.problems[0].message}")]) from None
        sources.append(_Source(file=full, stat=_stat(full)))
    return tuple(sources)


def _assemble(file: Path, spec: JobSpec, ov: Overrides, sources: tuple[_Source, ...]) -> Job:
    name = ov.name or spec.name or file.stem
    if not ID_RE.match(name):
        raise UsageError(
            f"run name {name!r} cannot name a directory; set `name:` or pass --name "
            "(letters, digits, '.', '_', '-')"
        )
    ep: EndpointSpec = spec.endpoint
    base_url = ep.base_url
    if ov.base_url:
        try:
            base_url = check_base_url(ov.base_url)
        except ValueError as exc:
            raise UsageError(f"--base-url: {exc}") from None
    local = ov.local or ep.local
    if local:
        base_url = "http://127.0.0.1"
    endpoint = Endpoint(
        base_url=base_url,
        api_key_env=None if local else (ov.api_key_env or ep.api_key_env),
        region=ep.region,
        local=local,
        model_path=ep.model_path,
        server_args=tuple(ep.server_args),
        continuation=ep.continuation or detect_continuation(base_url, local),
    )
    run = RunSettings(**spec.run.model_dump())
    if ov.concurrency is not None:
        run = replace(run, concurrency=ov.concurrency)
    if ov.via or ov.fallback or ov.no_wait:
        run = replace(run, via=ov.via or run.via, fallback=ov.fallback or run.fallback,
                      no_wait=ov.no_wait)
    limits_url = os.environ.get(LIMITS_URL_VAR, "").strip()
    if limits_url:  # set by whoever runs the cluster: it wins over the job file
        run = replace(run, limits_url=limits_url)
    budget = Budget(spec.budget.max_cost, spec.budget.currency.upper()) if spec.budget else None
    if ov.max_cost is not None:
        currency = ov.currency or (budget.currency if budget else None)
        if currency is None:
            raise UsageError("--max-cost needs a currency: pass --currency CNY (or USD)")
        budget = Budget(ov.max_cost, currency.upper())
    defaults = spec.defaults
    if ov.model:
        defaults = defaults.model_copy(update={"model": ov.model})
    elif local and defaults.model is None:
        # the local endpoint serves one model: a job need not name it
        from .local import model_name

        defaults = defaults.model_copy(update={"model": model_name(ep.model_path)})
    out_root = Path(ov.out or spec.output_dir or "outputs")
    job_dir = out_root / name
    run_dir = job_dir if ov.shard is None else shard_dir(job_dir, *ov.shard)
    return Job(
        name=name, path=file, run_dir=run_dir, endpoint=endpoint, run=run,
        defaults=defaults, info=JobInfo(0, ()), budget=budget,
        pricing=dict(spec.pricing or {}), sources=sources, shard=ov.shard, job_dir=job_dir,
    )


# ------------------------------------------------------------- resolving


def _resolve_all(job: Job, report: Callable[[Problem], None]) -> Iterator[Request]:
    position = 0
    occurrences: dict[str, int] = {}
    for src in job.sources:
        for entry, where, path, line_of in _entries(src, report):
            req = _resolve(job, entry, where, path, line_of, position, occurrences, report)
            if req is not None:
                yield req
                position += 1


_Entry = tuple[dict[str, Any], str, tuple[Any, ...], Callable[[tuple[Any, ...]], int | None]]


def _entries(src: _Source, report: Callable[[Problem], None]) -> Iterator[_Entry]:
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
                obj = json.loads(raw)
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


def _yaml_entries(src: _Source, text: str, report: Callable[[Problem], None]
                  ) -> Iterator[_Entry]:
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


def _validate(model: type[BaseModel], entry: dict[str, Any], name: str,
              path: tuple[Any, ...], line_of: Callable[[tuple[Any, ...]], int | None],
              report: Callable[[Problem], None]) -> Any:
    try:
        return model.model_validate(entry)
    except ValidationError as exc:
        for problem in from_validation(exc, file=name, prefix=path, line_of=line_of, model=model):
            report(problem)
        return None


def _resolve(job: Job, entry: dict[str, Any], where: str, path: tuple[Any, ...],
             line_of: Callable[[tuple[Any, ...]], int | None], position: int,
             occurrences: dict[str, int], report: Callable[[Problem], None]) -> Request | None:
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
    params: dict[str, Any] = {}
    for source in (defaults, spec):
        for key in source.model_fields_set & PARAM_NAMES:
            value = getattr(source, key)
            if value is None:
                params.pop(key, None)  # `key: null` on a prompt unsets a default
            else:
                params[key] = value
    extra = {**(defaults.extra_body or {}), **(spec.extra_body or {})}
    request: dict[str, Any] = {"model": model, "messages": messages, **params}
    if extra:
        request["extra_body"] = extra
    req_id = given_id
    if req_id is None:
        content = _canonical({"messages": messages})
        digest = hashlib.sha256(content.encode()).hexdigest()[:12]
        n = occurrences.get(digest, 0) + 1
        occurrences[digest] = n
        req_id = f"p-{digest}" if n == 1 else f"p-{digest}-{n}"
    body_json = _canonical(request)
    fingerprint = hashlib.sha256(f"{job.endpoint_id}\n{body_json}".encode()).hexdigest()
    return Request(id=req_id, position=position, model=model, body=request,
                   fingerprint=fingerprint, tags=tuple(spec.tags or ()), source=where,
                   body_json=body_json)


def _batch_body(body: dict[str, Any]) -> dict[str, Any]:
    """A Batch API body was written for raw HTTP: provider keys sit at the top."""
    known = PromptSpec.model_fields.keys()
    out: dict[str, Any] = {}
    extra: dict[str, Any] = dict(body.get("extra_body") or {})
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
        messages = [m.model_dump(exclude_none=True) for m in spec.messages]
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


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
