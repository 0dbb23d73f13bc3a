"""The ``batchgen`` command. The only module that prints, exits or imports click.

Heavy modules are imported inside the commands, so ``batchgen --help`` starts
in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from batchgen.errors import ExitCode, exit_codes_help

if TYPE_CHECKING:
    from batchgen.engine.summary import RunSummary
    from batchgen.jobs.load import Job, Overrides

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """A BatchgenError on its way out, with the exit code it asks for."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code  # type: ignore[misc]  # click reads it per instance

    def show(self, file: Any = None) -> None:
        click.echo(f"batchgen: {self.format_message()}", err=True)


def _exit_codes_in_doc(func: F) -> F:
    """Put the exit codes (one list, :class:`ExitCode`) into a command's help."""
    func.__doc__ = (func.__doc__ or "").replace("{exit_codes}", exit_codes_help())
    return func


def _errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from batchgen.errors import BatchgenError, JobFileError

        try:
            return func(*args, **kwargs)
        except JobFileError as exc:
            n = len(exc.problems)
            head = f"the job file has {n} problem{'s' if n != 1 else ''}; nothing was run:"
            raise Failure(f"{head}\n{exc}", exc.exit_code) from None
        except BatchgenError as exc:
            raise Failure(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:  # click would say "Aborted!" and exit 1, as for a failure
            raise Failure("interrupted", ExitCode.INTERRUPTED) from None

    return wrapper  # type: ignore[return-value]


def _job_options(func: F) -> F:
    options = [
        click.option("--name", help="Run name (default: the job's `name:` or the file's stem)."),
        click.option("--out", "out", metavar="DIR",
                     help="Output root; the run lives in DIR/<name>/ (default: outputs)."),
        click.option("--model", help="Default model for prompts that name none."),
        click.option("--base-url", help="OpenAI-compatible endpoint (default: DashScope)."),
        click.option("--allow-http", is_flag=True,
                     help="Allow a plain http:// endpoint beyond loopback (a trusted network)."),
        click.option("--api-key-env", metavar="VAR",
                     help="Environment variable that holds the API key."),
        click.option("--allow-key-env", "allow_key_env", metavar="VAR", multiple=True,
                     help="Let the job file name VAR as its key variable (besides *_API_KEY)."),
        click.option("--header", "header", metavar="'NAME: VALUE'", multiple=True,
                     help="One more header on every request (a gateway's); ${VAR} in VALUE "
                          "is read from the environment. Replaces the job file's of that name."),
        click.option("--concurrency", type=click.IntRange(1, 4096),  # MAX_CONCURRENCY
                     help="Streams at once (default 8)."),
        click.option("--local", is_flag=True,
                     help="Run on the embedded local model (llama.cpp) instead of an API."),
        click.option("--media-root", metavar="DIR",
                     help="A folder file:// media and read_text() may read besides the job "
                          "file's own."),
        click.option("--shard", metavar="K/N",
                     help="Only shard K of N (by a stable hash of the request id); index/N "
                          "takes K-1 from JOB_COMPLETION_INDEX or BATCHGEN_SHARD_INDEX."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _overrides(kwargs: dict[str, Any]) -> Overrides:
    from batchgen.errors import UsageError
    from batchgen.jobs.headers import parse_flag
    from batchgen.jobs.load import Overrides
    from batchgen.jobs.shards import parse_shard

    for key in ("name", "out", "model", "base_url", "api_key_env", "currency", "media_root",
                "shard"):
        if kwargs.get(key) is not None and not str(kwargs[key]).strip():
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} is empty (an unset variable in a script?): give it a "
                             "value, or leave the flag out")
    shard = parse_shard(kwargs["shard"]) if kwargs.get("shard") else None
    return Overrides(
        shard=shard, via=kwargs.get("via"), fallback=kwargs.get("fallback"),
        no_wait=bool(kwargs.get("no_wait")), name=kwargs.get("name"), out=kwargs.get("out"),
        model=kwargs.get("model"), base_url=kwargs.get("base_url"),
        allow_http=bool(kwargs.get("allow_http")), api_key_env=kwargs.get("api_key_env"),
        concurrency=kwargs.get("concurrency"), local=bool(kwargs.get("local")),
        max_cost=kwargs.get("max_cost"), currency=kwargs.get("currency"),
        allowed_key_envs=tuple(kwargs.get("allow_key_env") or ()),
        media_root=kwargs.get("media_root"),
        headers=tuple(parse_flag(text) for text in kwargs.get("header") or ()),
    )


def _load(file: str, kwargs: dict[str, Any], *, for_run: bool = False) -> Job:
    from batchgen.jobs.load import load_job

    return load_job(file, _overrides(kwargs), for_run=for_run)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="batchgen")
def main() -> None:
    """Streamed, journaled, resumable batch generation against OpenAI-compatible APIs.

    \b
    batchgen validate jobs/essays.yaml   check a job file, call nothing
    batchgen run jobs/essays.yaml        run it (again: resumes, skips what is done)
    batchgen status outputs/essays       what is done, running, failed
    """


@main.command()
@click.argument("file", type=click.Path())
@_job_options
@click.option("--quiet", "-q", is_flag=True, help="Print only the final summary.")
@click.option("--verbose", "-v", is_flag=True, help="Log each attempt's failure as it happens.")
@click.option("--progress", "progress_mode", type=click.Choice(["auto", "bar", "lines"]),
              default="auto", show_default=True, help="Progress display.")
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True),
              help="Stop launching before the run directory's spend could pass this.")
@click.option("--currency", help="Currency of --max-cost (CNY, USD); default: the one "
              "the job's models are priced in.")
@click.option("--dry-run", is_flag=True,
              help="Print the plan (to run, to skip, tokens, worst-case cost); call nothing.")
@click.option("--force", is_flag=True,
              help="Run even though run.db is gone while finished texts remain, the job's "
                   "answers sit in its shards (or its run without --shard), or provider "
                   "batches are open at another endpoint (they are left): buys again.")
@click.option("--via", type=click.Choice(["stream", "batch"]),
              help="stream (default), or batch: the provider's Batch API, at half the price "
                   "within 24 h.")
@click.option("--no-wait", is_flag=True,
              help="With --via batch: submit and exit 5; run the same command again to collect.")
@click.option("--fallback", type=click.Choice(["batch", "stream"]),
              help="With --via batch: requests an expired or cancelled batch left unanswered "
                   "go into a new batch (default) or are streamed.")
@_errors
@_exit_codes_in_doc
def run(file: str, quiet: bool, verbose: bool, progress_mode: str, dry_run: bool,
        force: bool, **kwargs: Any) -> None:
    """Run every prompt of FILE (YAML or JSONL), streamed, journaled and resumable.

    {exit_codes}
    """
    from batchgen.engine.progress import make_progress
    from batchgen.engine.runner import RunOptions, check_job, run_job

    try:
        job = _load(file, kwargs, for_run=not dry_run)
    except KeyboardInterrupt:  # reading a big job file: its run directory is not touched
        raise Failure("interrupted while reading the job; nothing was run or written",
                      ExitCode.INTERRUPTED) from None
    if dry_run:
        from batchgen.cost.pricing import PriceBook

        job = check_job(job, PriceBook(job.pricing))  # what the run would refuse, the dry run too
        from batchgen.engine.rundir import check_answers_seen

        check_answers_seen(job, force)
        if not job.endpoint.local:
            from batchgen.engine.elsewhere import check_batches_here

            check_batches_here(job.run_dir, job.endpoint.base_url, force)
        _print_plan(job)
        return
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                            stream=sys.stderr)
    mode = "quiet" if quiet else {"lines": "lines", "bar": "bar"}.get(progress_mode, "auto")
    try:
        summary = run_job(job, RunOptions(progress=make_progress(job.name, mode), force=force))
    except KeyboardInterrupt:
        click.echo(f"batchgen: interrupted; run again to resume ({job.run_dir})", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    _print_summary(job, summary)
    sys.exit(summary.exit_code)


def _print_plan(job: Job) -> None:
    from batchgen.engine.budget import plan
    from batchgen.jobs.endpoints import key_note

    p = plan(job)
    where = "embedded local model" if job.endpoint.local else job.endpoint.base_url
    click.echo(f"{job.name}: dry run, nothing called or written")
    click.echo(f"  endpoint:      {where}")
    if kept_back := key_note(job.endpoint):
        click.echo(f"  key:           not sent: {kept_back}")
    if job.endpoint.headers:
        click.echo(f"  headers:       {', '.join(name for name, _ in job.endpoint.headers)}")
    again = (f" ({p.changed:,} of them answered before, with a prompt, model, parameters "
             "or endpoint since changed: bought again)") if p.changed else ""
    click.echo(f"  to run:        {p.to_run}{again}")
    click.echo(f"  to skip:       {p.to_skip} (already done)")
    click.echo(f"  models:        {', '.join(f'{m} ×{n}' for m, n in p.models.items()) or '-'}")
    click.echo(f"  prompt tokens: ~{p.prompt_tokens:,} (estimated)")
    at = ", at the Batch API price" if job.run.via == "batch" else ""
    for currency, cost in sorted(p.worst_case.items()):
        click.echo(f"  worst case:    {cost:,.4f} {currency} (every request to its max_tokens{at})")
    if p.unknown_cost:
        unknown = ", ".join(sorted(p.unknown_cost))
        click.echo(f"  unknown cost:  {unknown} (no price; add `pricing:`)")
    for note in _misspelt(job):
        click.echo(f"  note:          {note}")
    if job.budget:
        click.echo(f"  budget:        {job.budget.max_cost:,.4f} {job.budget.currency}")
    for model, mode in job.info.schema_modes:
        click.echo(f"  schema:        {model}: {mode}")
    if job.table is not None:
        click.echo(f"  table:         {job.table.path} ({job.table.format})")


def _misspelt(job: Job) -> list[str]:
    from batchgen.cost.pricing import PriceBook, misspelt_notes

    book = PriceBook(job.pricing)
    e = job.endpoint
    return misspelt_notes(book, book.list_for(e.base_url, e.region, e.local), job.info.models)


def _print_summary(job: Job, summary: RunSummary) -> None:
    parts = [f"{summary.done} done"]
    if summary.skipped:
        parts.append(f"{summary.skipped} skipped (already done)")
    parts.append(f"{summary.failed} failed")
    if summary.pending:
        parts.append(f"{summary.pending} not run")
    click.echo(f"{job.name}: {', '.join(parts)} -> {summary.run_dir}")
    if summary.failed:
        click.echo(f"  failed requests: {summary.run_dir / 'failed.jsonl'} "
                   f"(why: batchgen status {summary.run_dir})")
    if summary.storage is None:  # else the disk refused writes: no report was written
        click.echo(f"  cost report: {summary.run_dir / 'report.md'} "
                   f"(batchgen report {summary.run_dir})")
    for note in summary.notes:
        click.echo(f"  {note}")
    if summary.why_stopped:
        click.echo(f"batchgen: {summary.why_stopped}", err=True)


@main.command()
@click.argument("file", type=click.Path())
@_job_options
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: the request ids and the plan, for scripts.")
@_errors
def validate(file: str, fmt: str, **kwargs: Any) -> None:
    """Check FILE without calling anything; print what a run would do."""
    import json
    import os

    from batchgen.errors import BatchgenError, JobFileError
    from batchgen.jobs.endpoints import key_note
    from batchgen.jobs.headers import env_names

    try:
        job = _load(file, kwargs)
    except BatchgenError as exc:  # for scripts: what is wrong on stdout too, then as ever
        if fmt == "json":
            said = {"problems": [{"file": p.file, "line": p.line, "key": p.key,
                                  "message": p.message} for p in exc.problems]
                    } if isinstance(exc, JobFileError) else {"error": str(exc)}
            click.echo(json.dumps({"file": file, "ok": False, **said}, ensure_ascii=False))
        raise
    env = job.endpoint.api_key_env
    notes = [n for n in (env and not os.environ.get(env) and f"{env} is not set; `batchgen "
                         "run` needs it", key_note(job.endpoint)) if n] + _misspelt(job) + [
        f"{variable} is not set; the header {name!r} needs it" for name, text in
        job.endpoint.headers for variable in env_names(text) if not os.environ.get(variable)]
    if fmt == "json":
        click.echo(json.dumps({
            "file": file, "ok": True, "requests": job.info.requests,
            "job_requests": job.info.job_requests, "models": list(job.info.models),
            "shard": f"{job.shard[0]}/{job.shard[1]}" if job.shard else None,
            "run_dir": str(job.run_dir), "ids": [r.id for r in job.requests()],
            "notes": notes,
        }, ensure_ascii=False))
        return
    click.echo(f"{file}: ok")
    of = f" (shard {job.shard[0]} of {job.shard[1]}; the job has {job.info.job_requests})" \
        if job.shard else ""
    click.echo(f"  requests: {job.info.requests}{of}")
    click.echo(f"  models:   {', '.join(job.info.models)}")
    where = "embedded local model (llama.cpp)" if job.endpoint.local else job.endpoint.base_url
    click.echo(f"  endpoint: {where}")
    if job.endpoint.headers:
        click.echo(f"  headers:  {', '.join(name for name, _ in job.endpoint.headers)}")
    click.echo(f"  writes:   {job.run_dir}/")
    if job.table is not None:
        click.echo(f"  table:    {job.table.path} ({job.table.format})")
    for note in notes:
        click.echo(f"  note: {note}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--failed", "show_failed", type=int, default=10, show_default=True,
              help="How many failed requests to list with their reasons.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: the same figures, for scripts and monitoring.")
@_errors
def status(run_dir: str, show_failed: int, fmt: str) -> None:
    """What RUN_DIR holds: done / streaming / pending / failed, tokens so far.

    RUN_DIR may be a sharded job's directory: every shard is shown.
    """
    from batchgen.outputs.status import render_status

    click.echo(render_status(Path(run_dir), run_dir, fmt, show_failed))


@main.command()
@click.argument("job_dir", type=click.Path(file_okay=False, exists=True))
@_errors
def merge(job_dir: str) -> None:
    """Put the shards of JOB_DIR (<output_dir>/<name>) back together into it.

    Writes results.jsonl (job order), texts/, failed.jsonl, one report over
    all shards and, for a job with data:, the table of all its rows. Exit 0
    when every shard is complete, 1 when some are not (what is done is still
    written), 2 when the shards do not belong together.
    """
    from batchgen.outputs.merge import merge as merge_shards

    summary = merge_shards(Path(job_dir))
    click.echo(f"{job_dir}: merged {summary.shards} of {summary.expected} shards: "
               f"{summary.done} done, {summary.failed} failed")
    click.echo(f"  results: {Path(job_dir) / 'results.jsonl'}; report: "
               f"{Path(job_dir) / 'report.html'}"
               + (f"; table: {summary.table}" if summary.table else ""))
    if summary.incomplete:
        click.echo("batchgen: incomplete: " + "; ".join(summary.incomplete), err=True)
        sys.exit(ExitCode.FAILED)


@main.group()
def local() -> None:
    """The embedded local endpoint (llama.cpp llama-server + a small model)."""


@local.command("check")
@click.option("--model-path", help="A GGUF model to check instead of the bundled one.")
def local_check(model_path: str | None) -> None:
    """Start llama-server for real, stream one tiny request, stop it (exit 0 when it works)."""
    import asyncio

    from batchgen.llama.check import self_test
    from batchgen.llama.server import signal_name

    report = asyncio.run(self_test(model_path))
    found = report.found
    click.echo(f"llama-server: {found.server or 'not found'} ({found.server_from})")
    click.echo(f"model:        {found.model or 'not found'} ({found.model_from})")
    if report.started_in is not None:
        how = " as usual"
        if report.crashes:
            died = ", then ".join(signal_name(sig) for sig in report.crashes)
            how = f" with {' '.join(report.start_flags)}, after a crash: killed by {died}"
        click.echo(f"started:      healthy in {report.started_in:.1f} s{how}")
    if report.streamed_in is not None:
        click.echo(f"streamed:     {report.chunks} chunks in {report.streamed_in:.2f} s: "
                   f"{report.reply.strip()[:60]!r}")
    if not report.ok:
        click.echo(f"failed:       {report.error}")
        if report.log_tail:
            click.echo("last lines of the server's log:")
            click.echo(report.log_tail)
        sys.exit(ExitCode.FAILED)
    click.echo("ok: `batchgen run jobs/example.yaml` runs on this model")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True,
                type=click.Path(file_okay=False, exists=True))
@click.option("--format", "fmt", type=click.Choice(["table", "md", "json", "csv", "html"]),
              default="table", show_default=True)
@click.option("--by", "group_by", type=click.Choice(["model", "tag"]), default="model",
              show_default=True, help="Rows per model, or per prompt tag.")
@_errors
def report(run_dirs: tuple[str, ...], fmt: str, group_by: str) -> None:
    """The cost report of one or more run directories (shards and runs merge).

    A sharded job's directory stands for all its shards. --format html prints
    one self-contained page (as report.html) to keep or mail.
    """
    from batchgen.errors import UsageError
    from batchgen.jobs.shards import find_shards
    from batchgen.outputs.report import build_report, render

    dirs: list[Path] = []
    for given in map(Path, run_dirs):
        shards = find_shards(given) if not (given / "run.db").exists() else {}
        if len({n for _, n in shards}) > 1:
            raise UsageError(f"{given} holds shards of different splits "
                             f"({', '.join(p.name for p in shards.values())}): name the "
                             "shard directories of one N")
        dirs += list(shards.values()) if shards else [given]
    built = build_report(dirs, group_by)
    if fmt == "html":
        from batchgen.outputs.html import render_html

        click.echo(render_html(built, dirs), nl=False)
        return
    click.echo(render(built, fmt), nl=False)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "jsonl", "parquet"]),
              help="Default: the format of -o's extension, else the job's table format "
                   "(its data file's), else csv.")
@click.option("-o", "--output", "dest", type=click.Path(dir_okay=False),
              help="Where to write it ('-': standard output). Default: the job's table "
                   "(<run dir>/table.<ext>, or output.table).")
@_errors
def export(run_dir: str, fmt: str | None, dest: str | None) -> None:
    """Write a run's table: one row per data row (or per request, for a job
    without data:), in job order, with the kept input columns, then id,
    status, content, reasoning, finish_reason, prompt_tokens,
    completion_tokens, cost and error. Reads the run store only; safe while
    a run writes it. A sharded job's directory stands for all its shards."""
    from batchgen.outputs.files import written_through
    from batchgen.outputs.table import write_table

    written = write_table(Path(run_dir), fmt, Path(dest) if dest else None)
    if not written_through(written):  # not where the table itself went (-, /dev/stdout)
        click.echo(str(written))


# allocations between collections of the youngest generation (Python: 700),
# and collections of each generation between those of the next (10, 10)
GC_THRESHOLDS = (20_000, 20, 10)


def entry() -> None:
    """The ``batchgen`` command (and ``python -m batchgen``): the click group,
    then an exit without the interpreter's teardown.

    When a command returns, everything it wrote is written, synced and closed
    (the run store, texts, results, reports; a local server stopped), yet
    Python's own teardown — freeing the modules of aiohttp, pydantic-core, PyYAML
    and the rest, joining idle worker threads — took another 0.2–0.3 s of every
    run here. So the exit code the command chose is handed to ``os._exit`` once
    the standard streams and logging are flushed. An exception that escapes a
    command leaves the usual way, with its traceback.

    The cyclic garbage collector runs less often (:data:`GC_THRESHOLDS`). A
    run's requests leave no cycles behind (retry.py), so the collector only
    re-walks live objects; at Python's default it still did so ~500 times per
    2,000 short requests and ~1,900 times over a 10,000-prompt job (1.4 s of
    its 21 s of CPU); at these thresholds ~20 times (0.07 s), with the same
    peak memory.
    """
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        main()
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
        if not isinstance(code, int):
            raise  # a message to print: Python's own exit does that
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed pipe: nothing left to say
                stream.flush()
        logging.shutdown()
        os._exit(code)
