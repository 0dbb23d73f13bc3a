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
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from batchgen.errors import JobFileError, Problem, UsageError
from batchgen.jobs import validated
from batchgen.jobs.endpoints import detect as detect_continuation
from batchgen.jobs.endpoints import header_env_refused, key_elsewhere
from batchgen.jobs.headers import env_names
from batchgen.jobs.headers import merged as merged_headers
from batchgen.jobs.ids import ClashFinder, clash_problems
from batchgen.jobs.records import (
    Budget,
    Endpoint,
    GuardSettings,
    JobInfo,
    Request,
    RunSettings,
    TableSettings,
)
from batchgen.jobs.resolve import Walk, resolve_all
from batchgen.jobs.schema import (
    ID_RE,
    MAX_CONCURRENCY,
    Defaults,
    EndpointSpec,
    JobSpec,
    PriceSpec,
    check_base_url,
    plain_http_host,
)
from batchgen.jobs.shards import shard_dir, shard_of
from batchgen.jobs.sources import (
    DATA_NOT_JOB,
    DATA_ONLY_SUFFIXES,
    MAX_YAML_BYTES,
    Source,
    file_stat,
    is_jsonl_job,
    parse_yaml,
    read_checked,
    yaml_sources,
)
from batchgen.jobs.spec import dump, updated
from batchgen.jobs.spool import Spool
from batchgen.jobs.tables import RESULTS_FILES, columns_known, table_problems, table_settings
from batchgen.jobs.yamlmarks import LineMap
from batchgen.secrets import check_key_env, user_allowed_key_envs
from batchgen.store.records import PlanRow

MAX_PROBLEMS = 20
LIMITS_URL_VAR = "BATCHGEN_LIMITS_URL"  # redis://HOST:PORT/DB: shared rate limits


@dataclass(frozen=True)
class Overrides:
    """Command-line flags; each replaces the job file's setting."""

    name: str | None = None
    out: str | None = None
    model: str | None = None
    base_url: str | None = None
    allow_http: bool = False  # --allow-http: plain http beyond loopback
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
    data: Path | None = None  # rows from elsewhere (Python's rows=): replaces data.path
    data_types: str | None = None  # a DataFrame's Arrow schema (base64 IPC), for the table
    media_root: str | None = None  # --media-root: file:// may read here too
    headers: tuple[tuple[str, str], ...] = ()  # --header 'Name: value', each


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
    sources: tuple[Source, ...] = ()
    shard: tuple[int, int] | None = None  # (K, N); run_dir is then the shard's directory
    job_dir: Path | None = None  # <output_dir>/<name>, where shards merge
    # the plan's rows as validated (a first run's load_job); read once, by plan_rows()
    spool: Spool | None = field(default=None, compare=False, repr=False)
    # what this job's inputs hash to (batchgen.jobs.validated), for the next run
    validation_key: str | None = field(default=None, compare=False, repr=False)
    table: TableSettings | None = None  # a job with `data:` writes a table

    @property
    def inputs(self) -> tuple[str, ...]:
        """The files the job reads (the job file, a prompts file, a data file),
        resolved: nothing batchgen writes may go over one of them."""
        paths = [self.path, *(s.file for s in self.sources),
                 *(s.rows.data.path for s in self.sources
                   if s.rows is not None and s.rows.data.path is not None)]
        return tuple(dict.fromkeys(os.path.realpath(p) for p in paths))

    @property
    def results_files(self) -> tuple[str, ...]:
        """results.jsonl and failed.jsonl of the run (and of its job, for a
        shard's merge), resolved: a table written there would clash with them."""
        dirs = [self.run_dir, *([self.job_dir] if self.job_dir is not None else [])]
        return tuple(os.path.realpath(d / name) for d in dirs
                     for name in RESULTS_FILES)

    @property
    def endpoint_id(self) -> str:
        """What a fingerprint knows of the endpoint (a local port changes; the model does not)."""
        if self.endpoint.local:
            return "local:" + Path(self.endpoint.model_path or "default").name
        return self.endpoint.base_url

    def requests(self) -> Iterator[Request]:
        """Stream the resolved requests again, in job order."""
        for src in self.sources:
            if src.watched and file_stat(src.file) != src.stat:
                raise UsageError(f"{src.file} changed while batchgen was reading it; run again")

        def fail(problem: Problem) -> None:
            raise JobFileError([problem])

        for req in resolve_all(self, fail):
            if self.shard is None or shard_of(req.id, self.shard[1]) == self.shard[0]:
                yield req

    def plan_rows(self) -> Iterator[PlanRow]:
        """This run's requests as the store plans them, in job order: read back
        from the validating pass where it kept them, else resolved again."""
        rows = self.spool.take() if self.spool is not None else None
        return rows if rows is not None else (req.row() for req in self.requests())

    def discard_spool(self) -> None:
        """Drop the validating pass's rows (the store has the plan already)."""
        if self.spool is not None:
            self.spool.close()


def load_job(path: str | os.PathLike[str], overrides: Overrides | None = None, *,
             for_run: bool = False) -> Job:
    """Read and validate a job file. Raises :class:`JobFileError`; writes nothing.

    ``for_run``: what a run needs beyond that. Where the run directory's store
    recorded validating these very inputs (:mod:`batchgen.jobs.validated`: same
    bytes, same flags, same code), that record stands and the prompts are not
    walked. On a first run (no store yet) the validated plan is kept for
    :meth:`Job.plan_rows` in an unlinked temporary file (:mod:`batchgen.jobs.spool`),
    so that running the job need not resolve it a second time.
    """
    file = Path(path)
    if file.suffix.lower() in DATA_ONLY_SUFFIXES:
        raise JobFileError([Problem(str(file), None, None, DATA_NOT_JOB)])
    jsonl = is_jsonl_job(file)
    raw = read_checked(file, MAX_YAML_BYTES if not jsonl else None)
    return _load(file, raw, overrides or Overrides(), for_run, jsonl)


DICT_JOB = "<job dict>"  # the name problems of a job given as a dict carry


def load_job_dict(data: dict[str, Any], overrides: Overrides | None = None, *,
                  for_run: bool = False) -> Job:
    """A job given as a dict of the job file's schema (paths relative to the
    working directory; the run name defaults to ``job``)."""
    ov = overrides or Overrides()
    if not data.get("name") and ov.name is None:
        ov = replace(ov, name="job")
    try:
        text = json.dumps(data, ensure_ascii=False, indent=1)
    except (TypeError, ValueError) as exc:
        raise JobFileError([Problem(DICT_JOB, None, None,
                                    f"not a job: {exc} (values are text, numbers, "
                                    "booleans, lists and dicts)")]) from None
    return _load(Path(DICT_JOB), text, ov, for_run, jsonl=False)


def _load(file: Path, raw: str, ov: Overrides, for_run: bool, jsonl: bool) -> Job:
    if jsonl:
        spec = JobSpec(prompts_file=str(file))
        line_map = LineMap()
        sources: tuple[Source, ...] = (Source(file=file, stat=file_stat(file)),)
    else:
        spec, line_map = parse_yaml(file, raw, rows_given=ov.data is not None)
        check_key_env(file, spec.endpoint, line_map.line_of(('endpoint', 'api_key_env')),
                      ov.api_key_env, ov.allowed_key_envs)
        sources = yaml_sources(file, raw, spec, line_map, ov.data,
                               str(Path(ov.media_root).resolve()) if ov.media_root else None)

    job = _assemble(file, spec, ov, sources, line_map)
    key = validated.key_of(job) if for_run else None
    if key is not None:
        known = validated.recall(job.run_dir, key)
        if known is not None and not known.media_files:  # files may change under the job
            return replace(job, info=known, validation_key=key,
                           table=columns_known(job.table, known.columns))
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
    kept = Spool() if for_run and not (job.run_dir / "run.db").exists() else None
    seen: dict[str, None] = {}  # the data's columns, in the order they first appear
    schemas: dict[str, None] = {}  # the schemas answers must fit, for output.flatten
    speech = False  # a request asks for a spoken answer: the table's audio columns
    walk = Walk()
    try:
        for req in resolve_all(job, collect, seen, walk):
            line = (f"{req.id}\0{req.fingerprint}\n" if req.data_row is None  # as ever
                    else f"{req.id}\0{req.fingerprint}\0{req.data_row}\n").encode()
            whole.update(line)
            clashes.add(req.id)  # over the whole job: shards merge into one texts/
            total += 1
            if job.shard is not None and shard_of(req.id, job.shard[1]) != job.shard[0]:
                continue
            plan.update(line)
            count += 1
            models.setdefault(req.model)
            if req.schema_json is not None:
                schemas.setdefault(req.schema_json)
            speech = speech or "audio" in (req.body.get("modalities") or ())
            if kept is not None and not problems:
                kept.add(req.row())
        suspects = clashes.positions()
        if suspects and len(problems) < MAX_PROBLEMS:
            for problem in clash_problems(resolve_all(job, lambda _p: None), suspects):
                collect(problem)
        if job.table is not None and len(problems) < MAX_PROBLEMS:
            problems += table_problems(file, job.table, seen, line_map, spec, schemas,
                                       speech, inputs=job.inputs, results=job.results_files)
        if not problems and total == 0:
            empty = [f"{s.file} has no rows" if s.rows.data.glob is None else
                     f"data.glob {s.rows.data.glob!r} matches no file in "
                     f"{s.rows.data.base.resolve()}" for s in sources if s.rows is not None]
            problems.append(Problem(str(file), None, None, "the job has no prompts" + (
                f", and {'; '.join(empty)}" if empty else "")))
        if problems:
            raise JobFileError(problems)
    except BaseException:
        if kept is not None:
            kept.close()
        raise
    files = tuple(str(s.file) for s in sources)
    info = JobInfo(requests=count, models=tuple(models), files=tuple(dict.fromkeys(files)),
                   plan_digest=plan.hexdigest(), job_digest=whole.hexdigest(),
                   job_requests=total, schema_modes=tuple(walk.modes),
                   media_files=walk.media_files + sum(  # files read_text gave a template
                       s.rows.template.files_read for s in sources if s.rows is not None),
                   columns=tuple(seen), speech=speech)
    if key is not None and not validated.still_valid(job):
        key = None  # a file moved while it was read: nothing to vouch for next time
    return replace(job, info=info, spool=kept, validation_key=key,
                   table=columns_known(job.table, info.columns))


def _assemble(file: Path, spec: JobSpec, ov: Overrides, sources: tuple[Source, ...],
              line_map: LineMap) -> Job:
    name = ov.name or spec.name or file.stem
    if not ID_RE.match(name):
        fit = "-".join(re.findall(r"[A-Za-z0-9._]+", name)).lstrip("._")[:100]
        fit = fit if ID_RE.match(fit) else "my-job"
        where = "" if ov.name or spec.name or is_jsonl_job(file) \
            else f"set `name: {fit}` in the job file, or "
        raise UsageError(
            f"run name {name!r} cannot name a directory (letters, digits, '.', '_', '-'); "
            f"{where}pass --name {fit}")
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
    elif (host := plain_http_host(base_url)) and not (ov.allow_http or ep.allow_http):
        why = (f"{base_url} is plain http: the key and the prompts would cross the network "
               f"to {host} unencrypted; use https://, or, for an endpoint on a network you "
               "trust (a cluster's vLLM), set endpoint.allow_http: true or pass --allow-http")
        if ov.base_url:
            raise UsageError(f"--base-url: {why}")
        raise JobFileError([Problem(str(file), line_map.line_of(("endpoint", "base_url")),
                                    "endpoint.base_url", why)])
    key_env = None if local else (ov.api_key_env or ep.api_key_env)
    withheld = None
    if key_env and not (ov.api_key_env or ov.base_url) \
            and key_env not in user_allowed_key_envs(ov.allowed_key_envs) \
            and (provider := key_elsewhere(key_env, base_url)):
        withheld, key_env = (key_env, provider), None
    allowed = user_allowed_key_envs(ov.allowed_key_envs)
    flagged = {header.lower() for header, _ in ov.headers}  # a flag's replaces the file's
    for header, text in ep.headers.items():
        for variable in env_names(text) if header.lower() not in flagged else ():
            refused = header_env_refused(variable, header, base_url, allowed)
            if refused:
                raise JobFileError([Problem(str(file), line_map.line_of(
                    ("endpoint", "headers", header)), f"endpoint.headers.{header}", refused)])
    endpoint = Endpoint(
        headers=merged_headers(ep.headers, ov.headers),
        base_url=base_url,
        api_key_env=key_env,
        key_withheld=withheld,
        region=ep.region,
        local=local,
        model_path=ep.model_path,
        server_args=tuple(ep.server_args),
        continuation=ep.continuation or detect_continuation(base_url, local),
    )
    run = RunSettings(**{**dump(spec.run), "guard": GuardSettings(**dump(spec.run.guard))})
    if run.on_length == "continue" and endpoint.continuation == "none":
        how = "set in the job file" if ep.continuation else "detected from its address"
        raise JobFileError([Problem(
            str(file), line_map.line_of(("run", "on_length")), "run.on_length",
            f"continue needs an endpoint that continues an answer, and {base_url} has "
            f"endpoint.continuation: none ({how}); set endpoint.continuation to the form "
            "it speaks (partial, prefix, continue_final_message, prefill), or "
            "run.on_length: stop")])
    run = replace(run, media_base=str(file.parent.resolve()),
                  media_root=str(Path(ov.media_root).resolve()) if ov.media_root
                  else run.media_root)
    if ov.concurrency is not None:
        if not 1 <= ov.concurrency <= MAX_CONCURRENCY:
            raise UsageError(f"concurrency {ov.concurrency}: from 1 to {MAX_CONCURRENCY}")
        run = replace(run, concurrency=ov.concurrency)
    if ov.via or ov.fallback or ov.no_wait:
        run = replace(run, via=ov.via or run.via, fallback=ov.fallback or run.fallback,
                      no_wait=ov.no_wait)
    limits_url = os.environ.get(LIMITS_URL_VAR, "").strip()
    if limits_url:  # set by whoever runs the cluster: it wins over the job file
        run = replace(run, limits_url=limits_url)
    budget = Budget(spec.budget.max_cost, spec.budget.currency.upper()) if spec.budget else None
    if ov.max_cost is not None:
        currency = ov.currency or (budget.currency if budget else "")
        budget = Budget(ov.max_cost, currency.upper())  # none: the models' (check_budget)
    defaults = spec.defaults
    if ov.model:
        defaults = updated(defaults, model=ov.model)
    elif local and defaults.model is None:
        # the local endpoint serves one model: a job need not name it
        from batchgen.llama.server import model_name

        defaults = updated(defaults, model=model_name(ep.model_path))
    out_root = Path(ov.out or spec.output_dir or "outputs")
    job_dir = out_root / name
    run_dir = job_dir if ov.shard is None else shard_dir(job_dir, *ov.shard)
    return Job(
        name=name, path=file, run_dir=run_dir, endpoint=endpoint, run=run,
        defaults=defaults, info=JobInfo(0, ()), budget=budget,
        pricing=dict(spec.pricing or {}), sources=sources, shard=ov.shard, job_dir=job_dir,
        table=table_settings(file, spec, sources, run_dir,
                             job_dir if ov.shard is not None else None, ov.data_types),
    )
