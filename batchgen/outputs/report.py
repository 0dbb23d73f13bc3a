"""The cost report: every attempt's tokens, priced; per model (or tag), per currency.

Built from one or more run stores (shards of one job merge into one report).
Every attempt counts — failed and aborted ones were billed too. Figures from
estimated usage are reported separately, so a reader sees how much of a cost
is an estimate. Models without a price are *unknown cost*, never 0. CNY and
USD are never added together.

``report.json`` (``schema: batchgen.report/1``) is a stable shape::

    {"schema", "generated_at", "runs": [dir], "group_by": "model" | "tag",
     "rows": [{"key", "currency" (null when unknown), "requests_done",
               "requests_failed", "attempts", "prompt_tokens",
               "completion_tokens", "reasoning_tokens", "cached_tokens",
               "estimated_tokens", "cost" (null when unknown),
               "estimated_cost", "tokens_by_method": {method: tokens},
               "audio_prompt_tokens", "audio_completion_tokens"}],
     "totals": [{"currency", "cost", "estimated_cost"}],
     "unknown_cost": [model], "prices": [{"list", "model", "as_of", "source"}],
     "warnings": [text],
     "batch": {"requests", "cost": {currency: amount}, "saved": {currency: amount}},
     "failed": [{"id", "error_class", "http_status", "error_code", "message"}],
     "stopped_at_the_cap": requests done with finish_reason "length",
     "apart": [{"kind", "key", "currency", "attempts", "prompt_tokens",
                "completion_tokens", "cost"}],
     "unfinished": requests of the job neither done nor failed,
     "stopped": [how the latest invocation ended, where it left some:
                 "stopped:budget", "stopped:interrupt", "running", "killed", ...]}

``apart`` shows, per kind and model (or tag), attempts whose tokens bought
nothing usable — already counted in ``rows`` and ``totals``, shown again on
their own line so they are never hidden inside "done": ``loops stopped``
(attempts the repetition guard aborted) and ``invalid answers`` (answers that
did not fit the job's schema).

``failed`` lists the requests that failed for good and why (the first
:data:`MAX_FAILED`; all are in ``failed.jsonl``): ``repetition`` for a
degenerate loop the guard stopped, the provider's class and code otherwise.

Each token counts under how it was obtained (``tokens_by_method``): ``exact``
(reported by the server), ``derived`` (reported for another attempt of the
same request with the same messages), ``tokenizer``, ``calibrated`` or
``static`` (estimates; see ``batchgen.tokens.estimator``). ``estimated_tokens`` are
the last three.
"""

from __future__ import annotations

import csv
import io
import json
import time
import unicodedata
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchgen.cost.pricing import PriceBook, StoreCosts, overrides_from_json
from batchgen.store.lock import RunLock
from batchgen.store.records import ESTIMATED, METHODS
from batchgen.store.runstore import RunStore

SCHEMA = "batchgen.report/1"
MAX_FAILED = 200  # failed requests listed in report.json (all are in failed.jsonl)
NO_TAG = "(no tag)"
# attempt error classes whose spending is also shown on a line of its own
APART = {"repetition": "loops stopped", "schema": "invalid answers"}


@dataclass
class Apart:
    kind: str
    key: str
    currency: str | None
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = 0.0


@dataclass
class Row:
    key: str
    currency: str | None
    requests_done: int = 0
    requests_failed: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    estimated_tokens: int = 0
    cost: float | None = 0.0
    estimated_cost: float = 0.0
    tokens_by_method: dict[str, int] = field(default_factory=dict)
    # of prompt and completion tokens: audio heard and speech said (audio prices)
    audio_prompt_tokens: int = 0
    audio_completion_tokens: int = 0


@dataclass
class Report:
    runs: list[str]
    group_by: str
    rows: list[Row] = field(default_factory=list)
    totals: list[dict[str, Any]] = field(default_factory=list)
    unknown_cost: list[str] = field(default_factory=list)
    prices: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    generated_at: str = ""
    # requests answered through the provider's Batch API: how many, what they
    # cost, and what the same tokens would have cost streamed (per currency)
    batch: dict[str, Any] = field(default_factory=lambda: {"requests": 0, "cost": {},
                                                           "saved": {}})
    failed: list[dict[str, Any]] = field(default_factory=list)
    stopped_at_the_cap: int = 0  # done with finish_reason "length": cut at the output cap
    apart: list[Apart] = field(default_factory=list)
    # requests of the job neither done nor failed, and how each directory's latest
    # invocation ended where it left some (runs.status: stopped:budget, ...)
    unfinished: int = 0
    stopped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "generated_at": self.generated_at, "runs": self.runs,
            "group_by": self.group_by, "rows": [asdict(r) for r in self.rows],
            "totals": self.totals, "unknown_cost": self.unknown_cost, "prices": self.prices,
            "warnings": self.warnings, "batch": self.batch, "failed": self.failed,
            "stopped_at_the_cap": self.stopped_at_the_cap,
            "apart": [asdict(a) for a in self.apart],
            "unfinished": self.unfinished, "stopped": self.stopped,
        }


def _keys(group_by: str, model: str, tags_json: str | None) -> list[str]:
    if group_by == "model":
        return [model]
    tags = json.loads(tags_json) if tags_json else []
    return tags or [NO_TAG]


def build_report(run_dirs: list[Path], group_by: str = "model") -> Report:
    report = Report(runs=[str(d) for d in run_dirs], group_by=group_by,
                    generated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    rows: dict[tuple[str, str | None], Row] = {}
    seen_prices: dict[tuple[str, str], dict[str, Any]] = {}
    unknown: set[str] = set()
    text_priced: dict[tuple[str, str], int] = {}  # (model, price key missing) -> tokens
    apart: dict[tuple[str, str, str | None], Apart] = {}

    def row(key: str, currency: str | None) -> Row:
        return rows.setdefault((key, currency), Row(key, currency))

    def apart_row(kind: str, key: str, currency: str | None) -> Apart:
        return apart.setdefault((kind, key, currency), Apart(kind, key, currency))

    for run_dir in run_dirs:
        with RunStore.reading(run_dir) as store:
            _add_store(store, group_by, row, apart_row, seen_prices, unknown, report.batch,
                       text_priced)
            report.stopped_at_the_cap += store.at_the_cap()
            counts = store.counts()
            left = counts["pending"] + counts["batched"]
            status = store.latest_status() if left else None
            if status == "running" and not RunLock.is_held(run_dir):
                status = "killed"  # its process died before it could say how it ended
            report.unfinished += left
            if status and status not in ("done", "failed") and status not in report.stopped:
                report.stopped.append(status)
            for fail in store.failed_in_order():
                if len(report.failed) >= MAX_FAILED:
                    break
                report.failed.append({
                    "id": fail["id"], "error_class": fail["error_class"],
                    "http_status": fail["http_status"], "error_code": fail["error_code"],
                    "message": fail["error_message"]})

    report.rows = sorted(rows.values(), key=lambda r: (r.currency or "~", r.key))
    report.apart = sorted(apart.values(), key=lambda a: (a.kind, a.currency or "~", a.key))
    totals: dict[str, dict[str, Any]] = {}
    for r in report.rows:
        if r.currency is None or r.cost is None:
            continue
        total = totals.setdefault(r.currency, {"currency": r.currency, "cost": 0.0,
                                               "estimated_cost": 0.0})
        total["cost"] += r.cost
        total["estimated_cost"] += r.estimated_cost
    report.totals = list(totals.values())
    report.unknown_cost = sorted(unknown)
    report.prices = sorted(seen_prices.values(), key=lambda p: (p["list"], p["model"]))
    for model in report.unknown_cost:
        report.warnings.append(
            f"no price for model {model!r} on this endpoint: its cost is unknown (not 0); "
            "add it to the job's `pricing:` block (or, for a gateway in front of a "
            "provider, name its price list with endpoint.region)"
        )
    for (model, key), tokens in sorted(text_priced.items()):
        heard = key == "audio_input"
        report.warnings.append(
            f"no {key} price for model {model!r}: its {tokens:,} audio tokens "
            f"{'heard' if heard else 'said'} are priced at its text "
            f"{'input' if heard else 'output'} price, which for speech is usually far lower; "
            f"add `{key}` (per 1M tokens) to its entry in the job's `pricing:` block"
        )
    return report


def _count_batch(batch: dict[str, Any], a: Any, currency: str, cost: float,
                 streamed: float | None) -> None:
    if a["status"] == "done":
        batch["requests"] += 1
    batch["cost"][currency] = batch["cost"].get(currency, 0.0) + cost
    if streamed is not None:
        batch["saved"][currency] = batch["saved"].get(currency, 0.0) + streamed - cost


def _add_store(store: RunStore, group_by: str, row: Callable[[str, str | None], Row],
               apart_row: Callable[[str, str, str | None], Apart],
               seen_prices: dict[tuple[str, str], dict[str, Any]], unknown: set[str],
               batch: dict[str, Any], text_priced: dict[tuple[str, str], int]) -> None:
    """Add one run store's attempts and requests to the report's rows, and to
    ``text_priced`` the audio tokens priced at text prices (no audio price)."""
    book = PriceBook(overrides_from_json(store.meta("pricing")))
    costs = StoreCosts(store, book)
    currency_of: dict[str, str | None] = {}
    for a in store.attempts_with_usage():
        price = costs.price(a["run_id"], a["model"])
        currency = price.currency if price else None
        currency_of.setdefault(a["model"], currency)
        if price is None:
            unknown.add(a["model"])
        else:
            seen_prices.setdefault((price.list_name, price.model), {
                "list": price.list_name, "model": price.model, "as_of": price.as_of,
                "source": price.source})
        audio = (a["audio_prompt_tokens"], a["audio_completion_tokens"])
        if price is not None and (audio[0] or audio[1]):
            tier = price.tier(a["prompt_tokens"] or 0)
            for key, tokens, rate in (("audio_input", audio[0], tier.audio_input),
                                      ("audio_output", audio[1], tier.audio_output)):
                if tokens and rate is None:
                    text_priced[a["model"], key] = text_priced.get((a["model"], key), 0) + tokens
        cost = costs.cost(a["run_id"], a["model"], a["prompt_tokens"],
                          a["completion_tokens"], a["reasoning_tokens"],
                          a["cached_tokens"], a["mode"], audio_in=audio[0], audio_out=audio[1])
        if a["mode"] == "batch" and price is not None and cost is not None:
            _count_batch(batch, a, price.currency, cost,
                         costs.cost(a["run_id"], a["model"], a["prompt_tokens"],
                                    a["completion_tokens"], a["reasoning_tokens"],
                                    a["cached_tokens"]))
        kind = APART.get(a["error_class"]) if a["status"] != "done" else None
        for key in _keys(group_by, a["model"], a["tags"]):
            if kind is not None:
                _add_apart(apart_row(kind, key, currency), a, cost)
            r = row(key, currency)
            r.attempts += 1
            if a["prompt_tokens"] is None:
                continue
            r.prompt_tokens += a["prompt_tokens"]
            r.completion_tokens += a["completion_tokens"]
            r.reasoning_tokens += a["reasoning_tokens"] or 0
            r.cached_tokens += a["cached_tokens"] or 0
            r.audio_prompt_tokens += audio[0] or 0
            r.audio_completion_tokens += audio[1] or 0
            old = "static" if a["estimated"] else "exact"  # a store from before schema 2
            for tokens, method in ((a["prompt_tokens"], a["prompt_method"] or old),
                                   (a["completion_tokens"], a["completion_method"] or old)):
                r.tokens_by_method[method] = r.tokens_by_method.get(method, 0) + tokens
                if method in ESTIMATED:
                    r.estimated_tokens += tokens
            if cost is None or r.cost is None:
                r.cost = None
            else:
                r.cost += cost
                if a["estimated"]:
                    r.estimated_cost += cost
    for req in store.finished_requests():
        currency = currency_of.get(req["model"])
        for key in _keys(group_by, req["model"], req["tags"]):
            r = row(key, currency)
            if req["state"] == "done":
                r.requests_done += 1
            else:
                r.requests_failed += 1


def _add_apart(line: Apart, a: Any, cost: float | None) -> None:
    line.attempts += 1
    line.prompt_tokens += a["prompt_tokens"] or 0
    line.completion_tokens += a["completion_tokens"] or 0
    if a["prompt_tokens"] is not None:
        line.cost = None if cost is None or line.cost is None else line.cost + cost


# ------------------------------------------------------------------ rendering


def _money(value: float | None, currency: str | None) -> str:
    if value is None or currency is None:
        return "unknown"
    return f"{value:,.4f} {currency}"


COLUMNS = ["key", "currency", "requests_done", "requests_failed", "attempts", "prompt_tokens",
           "completion_tokens", "reasoning_tokens", "cached_tokens", "estimated_tokens", "cost",
           "estimated_cost"]


def _table_rows(report: Report) -> list[list[str]]:
    out = []
    for r in report.rows:
        est = f"{r.estimated_cost:,.4f}" if r.estimated_cost else "-"
        out.append([r.key, str(r.requests_done), str(r.requests_failed), str(r.attempts),
                    f"{r.prompt_tokens:,}", f"{r.completion_tokens:,}", f"{r.reasoning_tokens:,}",
                    f"{r.cached_tokens:,}", _money(r.cost, r.currency), est])
    return out


HEADER = ["", "done", "failed", "attempts", "prompt", "completion", "reasoning", "cached",
          "cost", "of it estimated"]


def _footer(report: Report) -> list[str]:
    lines = [f"total: {_money(t['cost'], t['currency'])}"
             + (f" (of it estimated: {t['estimated_cost']:,.4f})" if t["estimated_cost"] else "")
             for t in report.totals]
    if not report.totals:
        lines.append("total: nothing priced")
    if report.unknown_cost:
        lines.append("unknown cost: " + ", ".join(report.unknown_cost))
    methods: dict[str, int] = {}
    for r in report.rows:
        for method, count in r.tokens_by_method.items():
            methods[method] = methods.get(method, 0) + count
    if set(methods) - {"exact"}:
        lines.append("tokens: " + ", ".join(f"{methods[m]:,} {m}" for m in METHODS
                                            if methods.get(m)))
    dates = sorted({f"{p['list']} as of {p['as_of']}" for p in report.prices if p["as_of"]})
    if dates:
        lines.append("prices: " + "; ".join(dates))
    if report.batch["requests"]:
        saved = "; ".join(f"{v:,.4f} {c}" for c, v in sorted(report.batch["saved"].items()))
        lines.append(f"by batch: {report.batch['requests']:,} requests through the provider's "
                     f"Batch API, at its lower price: saved {saved or 'unknown'}")
    for r in report.rows:
        if r.audio_prompt_tokens or r.audio_completion_tokens:
            lines.append(f"audio: {r.key}: {r.audio_prompt_tokens:,} prompt tokens heard, "
                         f"{r.audio_completion_tokens:,} completion tokens said (at the model's "
                         "audio prices where it has them; in the tokens above)")
    for a in report.apart:
        lines.append(f"{a.kind}: {a.key}: {a.attempts:,} attempt{'s' if a.attempts != 1 else ''}, "
                     f"{a.prompt_tokens:,} prompt + "
                     f"{a.completion_tokens:,} completion tokens, "
                     f"{_money(a.cost, a.currency)} (in the total above)")
    if report.unfinished:
        lines.append(unfinished_line(report))
    if report.stopped_at_the_cap:
        n = report.stopped_at_the_cap
        lines.append(f"stopped at the output cap: {n:,} answer{'s end' if n != 1 else ' ends'} "
                     "with finish_reason length")
    lines += [f"warning: {w}" for w in report.warnings]
    return lines


# how a run that left requests unfinished ended (runs.status), in words
STOPPED = {
    "stopped:budget": "stopped at the budget (exit 3)",
    "stopped:interrupt": "was interrupted (exit 130)",
    "stopped:unavailable": "stopped waiting for the endpoint: run.outage_timeout (exit 69)",
    "stopped:fatal": "stopped on an error that stops the run (exit 4)",
    "stopped:storage": "stopped: the disk refused a write (exit 74)",
    "stopped:submitted": "left requests in batches at the provider (exit 5)",
    "running": "is still running",
    "killed": "ended without a word (killed, or it crashed)",
}


def unfinished_line(report: Report) -> str:
    """``not finished: 32 requests pending; the latest run stopped at the budget
    (exit 3)``: a report read after a cron run must not look complete."""
    n = report.unfinished
    said = [STOPPED.get(s, s) for s in report.stopped]
    why = (f"; the latest run {said[0]}" if len(said) == 1 else
           f"; the latest runs (one per directory): {', '.join(said)}" if said else "")
    return (f"not finished: {n:,} request{'s' if n != 1 else ''} pending{why}; "
            "run the job again to go on")


def render(report: Report, fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([*COLUMNS, *(f"tokens_{m}" for m in METHODS)])
        for r in report.rows:
            data = asdict(r)
            writer.writerow(["" if data[c] is None else data[c] for c in COLUMNS]
                            + [r.tokens_by_method.get(m, 0) for m in METHODS])
        return buf.getvalue()
    header = [report.group_by, *HEADER[1:]]
    body = _table_rows(report)
    if fmt == "md":
        lines = [f"# Cost report: {', '.join(report.runs)}", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(map(_md_cell, cells)) + " |" for cells in body]
        lines += ["", *[f"- {line}" for line in _footer(report)], ""]
        return "\n".join(lines)
    table = [header, *body]
    widths = [max(_width(cells[i]) for cells in table) for i in range(len(header))]
    lines = ["  ".join(c + " " * (w - _width(c)) for c, w in zip(cells, widths, strict=True))
             .rstrip() for cells in table]
    return "\n".join([*lines, "", *_footer(report)]) + "\n"


def _width(text: str) -> int:
    """Columns a terminal gives ``text``: two for a wide character (Chinese,
    Japanese, Korean: tags in them line up), none for a combining mark."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else
               0 if unicodedata.combining(ch) else 1 for ch in text)


def _md_cell(text: str) -> str:
    """A table cell of report.md: a tag's ``|`` or line break would end it."""
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")
