"""Budget guard and dry-run plan: worst-case cost before anything is spent.

Before a request starts, what the run directory has spent so far plus the
worst case of every request in flight (its prompt estimate at the input price
and its ``max_tokens`` at the higher of the output and thinking prices) must
fit under ``max_cost``. A request that fits but for what requests in flight
hold waits for them to end; when nothing is in flight and it still does not
fit, the run stops, writes its report, says why (:func:`over_budget_note`)
and exits 3. A further attempt of a request — a retry, a continuation's next
segment, an answer asked again for its schema — goes only while what was
spent and what is held still fit. A request without ``max_tokens`` is assumed
to produce at most 8,192 tokens here; set ``max_tokens`` for a hard bound.

Through the provider's Batch API (``--via batch``) a batch is paid for as a
whole once submitted, so the same rule decides what goes into a new batch:
what the run has spent plus the worst case, at the batch price, of every
request in a batch still open and of the request itself (:class:`BatchBudget`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from batchgen.cost.pricing import LOCAL_LIST, ModelPrice, PriceBook, PriceList, StoreCosts
from batchgen.errors import UsageError
from batchgen.jobs.load import Job
from batchgen.jobs.records import Budget, Request
from batchgen.jobs.sources import is_jsonl_job
from batchgen.store.records import Usage
from batchgen.store.runstore import Pending, RunStore
from batchgen.tokens.estimator import Estimator
from batchgen.tokens.ledger import load_calibration
from batchgen.tokens.static import output_bound


def worst_case(price: ModelPrice, body: dict[str, Any], estimator: Estimator | None = None
               ) -> float:
    prompt = (estimator or Estimator()).prompt(body)[0]
    return price.worst_case(prompt, output_bound(body))


def endpoint_list(job: Job, book: PriceBook) -> PriceList | None:
    return book.list_for(job.endpoint.base_url, job.endpoint.region, job.endpoint.local)


def check_budget(job: Job, book: PriceBook) -> Budget:
    """A budget needs a price, in its currency, for every model of the job; one
    given without a currency (``--max-cost`` alone) takes its models' one."""
    budget = job.budget
    assert budget is not None  # noqa: S101 - an invariant, for the type checker
    plist = endpoint_list(job, book)
    priced: dict[str, str] = {}  # currency: the first model priced in it
    for model in job.info.models:
        price = book.price(plist, model)
        if price is None:
            where = "" if plist is not None else (
                f" ({job.endpoint.base_url} is in no price list: for a gateway in front of "
                "one, name the list with endpoint.region: "
                f"{', '.join(n for n in book.lists if n != LOCAL_LIST)})")
            how = "add it under `pricing:` in the job file"
            if is_jsonl_job(job.path):  # which has neither `pricing:` nor `endpoint:`
                how = ("a JSONL job file has no `pricing:` (nor `endpoint:`), so write a YAML "
                       f"job file with `prompts_file: {job.path.name}` and a `pricing:` block "
                       "(or endpoint.region)")
            raise UsageError(
                f"a budget is set but model {model!r} has no price on this endpoint{where}; "
                + how)
        if plist is not None and plist.free and price.list_name == plist.name:
            continue  # costs nothing, in any currency (the local endpoint)
        priced.setdefault(price.currency, model)
    if not budget.currency:
        if not priced:  # every model free: the budget cannot be reached
            return replace(budget, currency=plist.currency if plist is not None else "USD")
        if len(priced) == 1:
            return replace(budget, currency=next(iter(priced)))
        both = " and ".join(f"{c} ({m})" for c, m in priced.items())
        raise UsageError(f"--max-cost needs a currency: the job's models are priced in {both}; "
                         "pass --currency")
    for currency, model in priced.items():
        if currency != budget.currency:
            raise UsageError(
                f"the budget is in {budget.currency} but {model!r} is priced in "
                f"{currency}; give the budget in {currency} (budget.currency, or --currency)"
            )
    return budget


def spent(store: RunStore, book: PriceBook, currency: str) -> float:
    """What every attempt in the store cost, in ``currency`` (batch attempts at
    the batch price)."""
    StoreCosts(store, book)  # lends the store its prices
    return store.spent(currency)


class BudgetGuard:
    """Admits a request only while spent + in-flight worst cases fit."""

    def __init__(self, budget: Budget, job: Job, book: PriceBook, store: RunStore,
                 estimator: Estimator | None = None) -> None:
        self.budget = budget
        self.estimator = estimator or Estimator()
        self.book = book
        self.plist = endpoint_list(job, book)  # every model priced: see check_budget
        self.spent = spent(store, book, budget.currency)
        self.reserved: dict[str, float] = {}
        self.refused: str | None = None  # why the last request was not admitted

    def _price(self, model: str) -> ModelPrice:
        price = self.book.price(self.plist, model)
        assert price is not None  # noqa: S101 - checked for every model of the job in __init__
        return price

    def admit(self, p: Pending) -> str | None:
        """None to go ahead (and reserve), or the reason to stop."""
        worst = worst_case(self._price(p.model), p.body, self.estimator)
        held = sum(self.reserved.values())
        if self.spent + held + worst > self.budget.max_cost:
            self.refused = over_budget_note(self.budget, self.spent, p, worst)
            return "budget"
        self.reserved[p.id] = worst
        return None

    async def admit_settling(self, p: Pending, in_flight: Callable[[], set[asyncio.Task[None]]],
                             stopping: Callable[[], bool]) -> str | None:
        """:meth:`admit`, waiting while ``p`` would fit but for what requests in
        flight hold: each holds its worst case until it ends, and most cost far
        less. The reason to stop comes only when nothing is in flight and ``p``
        still does not fit; None (nothing reserved) once the run is stopping."""
        while True:
            reason = self.admit(p)
            tasks = in_flight()
            if reason is None or not tasks:
                return reason
            await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
            if stopping():
                return None

    def again(self, p: Pending) -> str | None:
        """None while a further attempt of ``p`` under way (a retry, a
        continuation's next segment, an answer asked again) still fits what was
        spent and what is held; else why not, in figures."""
        if self.spent + sum(self.reserved.values()) <= self.budget.max_cost:
            return None
        return over_budget_note(self.budget, self.spent, p, self.reserved.get(p.id, 0.0),
                                again=True)

    def charge(self, p: Pending, usage: Usage | None) -> None:
        if usage is not None:
            self.spent += self._price(p.model).cost(
                usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens,
                usage.cached_tokens, audio_in=usage.audio_prompt_tokens,
                audio_out=usage.audio_completion_tokens)

    def release(self, p: Pending) -> None:
        self.reserved.pop(p.id, None)


def over_budget_note(budget: Budget, used: float, p: Pending, worst: float, *,
            batch: bool = False, again: bool = False) -> str:
    """Why ``p`` does not fit, in figures, and what would let it. ``used``: what
    the run has spent (``batch``: and what its open batches may still cost,
    every figure at the Batch API's price); ``again``: a further attempt of a
    request under way (a retry, a continuation's next segment, a re-ask)."""
    cur = budget.currency
    what = (f"the next attempt of {p.id} ({p.model}: a retry, a continuation or a re-ask)"
            if again else f"the next request ({p.id}, {p.model})")
    line = (f"budget: {used:.4f} {cur} {'spent or held in open batches' if batch else 'spent'} "
            f"of {budget.max_cost:.4f} {cur}; {what} may cost up "
            f"to {worst:.4f} {cur}{' at the batch price' if batch else ''}, with its prompt "
            f"and {output_bound(p.body):,} output tokens")
    if not (p.body.get("max_tokens") or p.body.get("max_completion_tokens")):
        line += " (it sets no max_tokens: a lower one lets more run)"
    if not used and not again:
        line += "; not one request fits: set a lower max_tokens or raise the budget"
    return line


class BatchBudget:
    """What the budget leaves for new batches (``--via batch``).

    A batch cannot be stopped half-way once submitted, so a request goes into a
    new one only while the run's spending, the worst case of every request in a
    batch still open, and its own worst case — all at the batch price — fit.
    Asked afresh before each round of new batches: a collected batch's actual
    cost replaces its worst case, which may make room for more. Worst cases are
    kept by request id; a body is read from the store only for a request
    batched before this process started.
    """

    def __init__(self, budget: Budget, job: Job, book: PriceBook, store: RunStore,
                 estimator: Estimator | None = None) -> None:
        self.budget = budget
        self.book = book
        self.store = store
        self.estimator = estimator or Estimator()
        self.plist = endpoint_list(job, book)  # every model priced: see check_budget
        self._worst: dict[str, float] = {}

    def worst(self, request_id: str, model: str, body: dict[str, Any]) -> float:
        if request_id not in self._worst:
            price = self.book.price(self.plist, model)
            assert price is not None  # noqa: S101 - an invariant
            self._worst[request_id] = (worst_case(price, body, self.estimator)
                                       * price.batch_discount)
        return self._worst[request_id]

    def room(self) -> float:
        held = 0.0
        for rid in self.store.batched_ids():
            if rid not in self._worst:
                model, body = self.store.request_model_body(rid)
                self.worst(rid, model, body)
            held += self._worst[rid]
        return self.budget.max_cost - spent(self.store, self.book, self.budget.currency) - held

    def over_budget_note(self, p: Pending, worst: float, room: float) -> str:
        """Why ``p`` waits outside new batches (``room``: what the budget leaves,
        spending and the open batches' worst cases taken off)."""
        return over_budget_note(self.budget, self.budget.max_cost - room, p, worst, batch=True)


@dataclass
class Plan:
    """What ``run --dry-run`` prints: nothing was called or written."""

    to_run: int = 0
    to_skip: int = 0
    prompt_tokens: int = 0
    worst_case: dict[str, float] = field(default_factory=dict)
    unknown_cost: set[str] = field(default_factory=set)
    models: dict[str, int] = field(default_factory=dict)
    changed: int = 0  # of to_run: answered before, in a version of the request since changed


def plan(job: Job) -> Plan:
    book = PriceBook(job.pricing)
    plist = endpoint_list(job, book)
    db = job.run_dir / "run.db"
    store = RunStore(db, readonly=True) if db.exists() else None
    estimator = Estimator(load_calibration(store) if store is not None else None)
    result = Plan()
    try:
        for req in _skipping_done(job.requests(), store, result):
            result.to_run += 1
            result.models[req.model] = result.models.get(req.model, 0) + 1
            result.prompt_tokens += estimator.prompt(req.body)[0]
            price = book.price(plist, req.model)
            if price is None:
                result.unknown_cost.add(req.model)
            else:
                share = price.batch_discount if job.run.via == "batch" else 1.0
                result.worst_case[price.currency] = (
                    result.worst_case.get(price.currency, 0.0)
                    + worst_case(price, req.body, estimator) * share)
    finally:
        if store is not None:
            store.close()
    return result


LOOKUP = 500  # ids per query of the store: well under SQLite's limit on parameters


def _skipping_done(requests: Iterator[Request], store: RunStore | None,
                   result: Plan) -> Iterator[Request]:
    """The requests the store has not finished with this very fingerprint
    (counted into ``result.to_skip``), asked about ``LOOKUP`` at a time."""
    while chunk := list(itertools.islice(requests, LOOKUP)):
        done: set[tuple[str, str]] = set()
        answered: dict[str, set[str]] = {}  # id -> the versions (fingerprints) answered
        if store is not None:
            ids = [req.id for req in chunk]
            done = store.done_among(ids)
            for request_id, fingerprint in store.answered_among(ids):
                answered.setdefault(request_id, set()).add(fingerprint)
        for req in chunk:
            if (req.id, req.fingerprint) in done:
                result.to_skip += 1
                continue
            if answered.get(req.id, set()) - {req.fingerprint}:
                result.changed += 1
            yield req
