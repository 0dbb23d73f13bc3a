"""``report.html``: the cost report as one page someone looks at.

One self-contained file — inline CSS and SVG, no script, stylesheet, font or
image from anywhere — so it can be mailed, kept as a CI artifact, or opened
offline years later. It works without JavaScript; a few lines of inline
script only add sorting to the tables. The figures are the ones of
``report.json`` (``batchgen.outputs.report``); the page adds what a reviewer takes in
at a glance: charts of cost, throughput, latency, outcomes and the cost of
each invocation over time, the failed requests, and what was estimated and
how. The page is rendered with Jinja2 (autoescaped) from
``batchgen/templates/report.html``; the charts come from ``batchgen.outputs.charts``.
Both libraries are imported only when a report is written.
"""

from __future__ import annotations

import contextlib
import functools
import random
from array import array
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from batchgen.cost.pricing import PriceBook, StoreCosts, overrides_from_json
from batchgen.outputs import charts
from batchgen.outputs.report import Report, build_report, unfinished_line
from batchgen.secrets import printable
from batchgen.store.records import ESTIMATED, METHODS
from batchgen.store.runstore import RunStore

if TYPE_CHECKING:
    import jinja2

MAX_FAILURES = 200  # failed requests listed on the page (all are in failed.jsonl)
# latencies kept per model for the distributions: a random 1,000 put the median
# within ~0.04 standard deviations of the whole's, and a 4,000-request run's page
# is 145 kB rather than 336 kB (each value beyond the whiskers is a point)
SAMPLE = 1000
BUCKETS = 40

METHOD_NOTES = {
    "exact": "reported by the server",
    "derived": "reported by the server for another attempt of the same request with the "
               "same messages",
    "tokenizer": "counted with the model's own tokenizer (Qwen's BPE, or llama-server's "
                 "/tokenize)",
    "calibrated": "estimated from the text, scaled by what this run's finished requests "
                  "reported",
    "static": "estimated from the text by characters per token (ASCII 4, CJK 1.6, other 2.5)",
}


@dataclass
class Details:
    """What the page shows beyond ``report.json``."""

    names: list[str] = field(default_factory=list)
    endpoints: set[str] = field(default_factory=set)
    started: float | None = None
    ended: float | None = None
    # the timeline's points, one per attempt / request: flat arrays (8 bytes a
    # number, where a list of tuples took ~100 bytes an attempt at 100k)
    finished_at: array[float] = field(default_factory=lambda: array("d"))  # attempt ended
    finished_tokens: array[float] = field(default_factory=lambda: array("d"))  # its output tokens
    latest: float | None = None  # when the latest invocation started (the timeline's start)
    requests_done: array[float] = field(default_factory=lambda: array("d"))
    ttft: dict[str, list[float]] = field(default_factory=dict)
    duration: dict[str, list[float]] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    invocations: list[tuple[float, dict[str, float], int]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    failure_count: int = 0
    continued: int = 0


def _stamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _host(base_url: str, endpoint: str) -> str:
    if endpoint.startswith("local:"):
        return f"local llama.cpp ({endpoint.removeprefix('local:')})"
    return urlsplit(base_url).hostname or base_url


def _keep(values: list[float], value: float, rng: random.Random, seen: int) -> None:
    """Reservoir sampling: memory stays flat however many attempts there are."""
    if len(values) < SAMPLE:
        values.append(value)
    else:
        slot = rng.randrange(seen)
        if slot < SAMPLE:
            values[slot] = value


def collect(run_dirs: list[Path]) -> Details:
    details = Details()
    rng = random.Random(0)
    seen: dict[str, int] = {}
    for run_dir in run_dirs:
        with RunStore.reading(run_dir) as store:
            _collect_store(store, run_dir, details, rng, seen)
    details.invocations.sort()
    return details


def _collect_store(store: RunStore, run_dir: Path, d: Details, rng: random.Random,
                   seen: dict[str, int]) -> None:
    d.names.append(run_dir.name)
    costs = StoreCosts(store, PriceBook(overrides_from_json(store.meta("pricing"))))
    runs: dict[int, tuple[float, dict[str, float], int]] = {}
    for run in store.runs():
        d.endpoints.add(_host(run["base_url"], run["endpoint"]))
        d.started = min(d.started or run["started"], run["started"])
        end = run["ended"] or run["started"]
        d.ended = max(d.ended or end, end)
        runs[run["id"]] = (run["started"], {}, 0)
    if runs:
        newest = max(started for started, _, _ in runs.values())
        d.latest = newest if d.latest is None else min(d.latest, newest)
    for a in store.attempts_with_usage():
        label = "done" if a["status"] == "done" else f"{a['status']}: {a['error_class']}"
        d.outcomes[label] = d.outcomes.get(label, 0) + 1
        started, spent, count = runs.get(a["run_id"], (a["started"], {}, 0))
        price = costs.price(a["run_id"], a["model"])
        cost = costs.cost(a["run_id"], a["model"], a["prompt_tokens"], a["completion_tokens"],
                          a["reasoning_tokens"], a["cached_tokens"], a["mode"],
                          audio_in=a["audio_prompt_tokens"],
                          audio_out=a["audio_completion_tokens"])
        if price is not None and cost is not None:
            spent[price.currency] = spent.get(price.currency, 0.0) + cost
        runs[a["run_id"]] = (started, spent, count + 1)
        if a["ended"] is not None and a["completion_tokens"]:
            d.finished_at.append(a["ended"])
            d.finished_tokens.append(a["completion_tokens"])
        if a["status"] != "done" or a["ended"] is None:
            continue
        d.requests_done.append(a["ended"])
        d.continued += a["mode"] == "continue"
        n = seen[a["model"]] = seen.get(a["model"], 0) + 1
        _keep(d.duration.setdefault(a["model"], []), a["ended"] - a["started"], rng, n)
        if a["first_token"] is not None:
            _keep(d.ttft.setdefault(a["model"], []), a["first_token"] - a["started"], rng, n)
    d.invocations += list(runs.values())
    for fail in store.failed_in_order():
        d.failure_count += 1
        if len(d.failures) < MAX_FAILURES:
            d.failures.append({
                "id": fail["id"], "run": run_dir.name, "error_class": fail["error_class"],
                "http_status": fail["http_status"], "code": fail["error_code"],
                "message": printable(fail["error_message"] or "")[:500]})


def _timeline(d: Details) -> list[tuple[float, float, int]]:
    """The latest invocation (tonight's cron run) in BUCKETS slices: each
    slice's start, output tokens per second in it, and requests finished by
    its end."""
    start = d.latest if d.latest is not None else 0.0
    end = max((t for t in d.finished_at if t >= start), default=None)
    if end is None:
        return []
    width = max((end - start) / BUCKETS, 1.0)
    count = min(BUCKETS, int((end - start) / width) + 1)
    rates = [0.0] * count
    for t, n in zip(d.finished_at, d.finished_tokens, strict=True):
        if t >= start:
            rates[min(count - 1, int((t - start) / width))] += n / width
    finished_in = [0] * count  # requests done in (edge before, edge]
    for t in d.requests_done:
        if t < start or t > start + count * width:
            continue
        b = max(0, min(count - 1, int((t - start) / width)))
        while b > 0 and t <= start + b * width:  # exactly on an edge: the slice before
            b -= 1
        while b < count - 1 and t > start + (b + 1) * width:
            b += 1
        finished_in[b] += 1
    out, so_far = [], 0
    for b in range(count):
        so_far += finished_in[b]
        out.append((start + b * width, rates[b], so_far))
    return out


@functools.cache
def _template() -> jinja2.Template:
    import jinja2

    source = (resources.files("batchgen.outputs") / "templates" / "report.html").read_text("utf-8")
    # Compiling the template costs ~30 ms a run; Jinja2's bytecode cache (in a
    # folder of the user's own under the system's temp dir, keyed by the
    # template's checksum) keeps the compiled code for the next run (bench P6).
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined,
                             loader=jinja2.DictLoader({"report.html": source}),
                             bytecode_cache=_bytecode_cache())
    return env.get_template("report.html")


def _bytecode_cache() -> Any:
    import jinja2

    class OptionalCache(jinja2.FileSystemBytecodeCache):
        """A cache never fails the report: a write the disk refuses is skipped."""

        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            with contextlib.suppress(OSError):
                super().dump_bytecode(bucket)

    try:
        return OptionalCache()
    except (OSError, RuntimeError):  # no private temp folder to be had: compile each time
        return None


def prepare() -> None:
    """Import what drawing the report needs and compile its template.

    A run calls this from a thread while its requests stream (see
    :func:`batchgen.outputs.files.prepare_reports`): ~0.3 s of work that would
    otherwise come after the last answer. Whatever fails here is done again,
    and reported, when the report is written.
    """
    try:
        charts.prepare()
        _template()
    except Exception:  # a head start only
        return


def render_html(report: Report, run_dirs: list[Path]) -> str:
    d = collect(run_dirs)
    methods: dict[str, int] = {}
    for r in report.rows:
        for method, n in r.tokens_by_method.items():
            methods[method] = methods.get(method, 0) + n
    total_tokens = sum(methods.values()) or 1
    priced = [(r.key, r.currency, r.cost) for r in report.rows
              if r.currency is not None and r.cost is not None]
    figures = []
    if priced:
        figures.append(("Cost by model", charts.cost_by_model(priced)))
    timeline = _timeline(d)
    if timeline:
        figures.append(("Throughput of the latest invocation", charts.throughput(timeline)))
    if any(d.ttft.values()):
        figures.append(("Time to first token", charts.distribution(
            "Time to first token per model", "seconds", d.ttft)))
    if any(d.duration.values()):
        figures.append(("Duration of finished attempts", charts.distribution(
            "Duration of finished attempts per model", "seconds", d.duration)))
    if d.outcomes:
        figures.append(("Attempts by outcome", charts.outcomes(d.outcomes)))
    if d.invocations:
        figures.append(("Cost per invocation", charts.invocations(
            [(t, costs) for t, costs, _ in d.invocations])))
    return _template().render(
        report=report, details=d, figures=figures, started=_stamp(d.started),
        ended=_stamp(d.ended), generated=report.generated_at,
        methods=[(m, methods.get(m, 0), methods.get(m, 0) / total_tokens, METHOD_NOTES[m])
                 for m in METHODS if methods.get(m)],
        estimated_share=sum(n for m, n in methods.items() if m in ESTIMATED) / total_tokens,
        invocations=[(_stamp(t), costs, n) for t, costs, n in d.invocations],
        unfinished=unfinished_line(report) if report.unfinished else None,
    )


def write_html(run_dirs: list[Path], group_by: str = "model") -> str:
    return render_html(build_report(run_dirs, group_by), run_dirs)
