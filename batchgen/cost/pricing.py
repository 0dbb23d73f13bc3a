"""Prices: the packaged ``prices.yaml``, a job's ``pricing:`` overrides, and cost.

Cost of one attempt, prices per 1M tokens of the tier its prompt falls in::

    (prompt - cached) × input + cached × cached_input
        + completion × (thinking_output if the model reasoned else output)

``completion`` includes reasoning tokens, as providers bill it. A model with
no price is *unknown*, never 0; the local endpoint is free.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from batchgen.jobs.schema import PriceSpec
from batchgen.jobs.spec import dump
from batchgen.jobs.yamlmarks import safe_load

if TYPE_CHECKING:
    from batchgen.store.runstore import RunStore

LOCAL_LIST = "local"


@dataclass(frozen=True)
class Tier:
    max_prompt_tokens: int | None
    input: float
    output: float
    thinking_output: float | None = None
    cached_input: float | None = None
    audio_input: float | None = None  # audio heard, per 1M tokens (else input's price)
    audio_output: float | None = None  # speech said, per 1M tokens (else output's price)


@dataclass(frozen=True)
class ModelPrice:
    model: str
    currency: str
    tiers: tuple[Tier, ...]
    source: str | None = None
    as_of: str | None = None
    list_name: str = ""
    batch_discount: float = 1.0  # the share of the price a Batch API request pays

    def tier(self, prompt_tokens: int) -> Tier:
        for tier in self.tiers:
            if tier.max_prompt_tokens is None or prompt_tokens <= tier.max_prompt_tokens:
                return tier
        return self.tiers[-1]

    def cost(self, prompt: int, completion: int, reasoning: int | None = None,
             cached: int | None = None, batch: bool = False, audio_in: int | None = None,
             audio_out: int | None = None) -> float:
        """``batch``: sent through the provider's Batch API, at ``batch_discount``
        of the price and without the cached-input discount. ``audio_in`` /
        ``audio_out``: the audio tokens among the prompt's and the completion's,
        at the audio prices where the tier has them."""
        tier = self.tier(prompt)
        heard = min(max(audio_in or 0, 0), prompt)
        said = min(max(audio_out or 0, 0), completion)
        text_in = prompt - heard
        hit = 0 if batch else min(max(cached or 0, 0), text_in)
        cached_price = tier.cached_input if tier.cached_input is not None else tier.input
        out_price = tier.output
        if (reasoning or 0) > 0 and tier.thinking_output is not None:
            out_price = tier.thinking_output
        cost = ((text_in - hit) * tier.input + hit * cached_price
                + (completion - said) * out_price
                + heard * (tier.audio_input if tier.audio_input is not None else tier.input)
                + said * (tier.audio_output if tier.audio_output is not None
                          else tier.output)) / 1e6
        return cost * self.batch_discount if batch else cost

    def worst_case(self, prompt: int, max_output: int) -> float:
        tier = self.tier(prompt + max_output)
        out_price = max(tier.output, tier.thinking_output or 0.0)
        return (prompt * tier.input + max_output * out_price) / 1e6


@dataclass(frozen=True)
class PriceList:
    name: str
    currency: str
    hosts: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    free: bool = False
    source: str | None = None
    as_of: str | None = None
    models: dict[str, ModelPrice] = field(default_factory=dict)
    batch_discount: float = 1.0
    batch_source: str | None = None


def _model_price(name: str, spec: dict[str, Any] | PriceSpec, currency: str, list_name: str,
                 source: str | None, as_of: str | None) -> ModelPrice:
    data = dump(spec) if isinstance(spec, PriceSpec) else dict(spec)
    tiers_raw = data.get("tiers") or [
        {k: data.get(k) for k in ("input", "output", "thinking_output", "cached_input",
                                  "audio_input", "audio_output")}
    ]
    tiers = tuple(
        Tier(t.get("max_prompt_tokens"), float(t["input"]), float(t["output"]),
             *(None if t.get(k) is None else float(t[k])
               for k in ("thinking_output", "cached_input", "audio_input", "audio_output")))
        for t in tiers_raw
    )
    return ModelPrice(
        model=name, currency=str(data.get("currency") or currency).upper(), tiers=tiers,
        source=data.get("source") or source, as_of=str(data.get("as_of") or as_of or "") or None,
        list_name=list_name,
    )


def load_lists() -> dict[str, PriceList]:
    """The packaged price table (read once a process: a run prices at its
    start and again in each report)."""
    return dict(_packaged_lists())


@functools.cache
def _packaged_lists() -> dict[str, PriceList]:
    text = resources.files("batchgen.cost").joinpath("prices.yaml").read_text(encoding="utf-8")
    data = safe_load(text)
    out: dict[str, PriceList] = {}
    for name, raw in data["lists"].items():
        currency = str(raw["currency"]).upper()
        discount = float(raw.get("batch_discount", 1.0))
        models = {
            model: replace(_model_price(model, spec, currency, name, raw.get("source"),
                                        str(raw.get("as_of"))), batch_discount=discount)
            for model, spec in (raw.get("models") or {}).items()
        }
        out[name] = PriceList(
            name=name, currency=currency, hosts=tuple(raw.get("hosts") or ()),
            aliases=tuple(raw.get("aliases") or ()), free=bool(raw.get("free")),
            source=raw.get("source"), as_of=str(raw.get("as_of")), models=models,
            batch_discount=discount, batch_source=raw.get("batch_source"),
        )
    return out


class PriceBook:
    """Finds the price of a model on an endpoint, job overrides first."""

    def __init__(self, overrides: dict[str, PriceSpec] | None = None,
                 lists: dict[str, PriceList] | None = None) -> None:
        self.lists = lists if lists is not None else load_lists()
        self.overrides = {
            name: _model_price(name, spec, spec.currency, "job pricing", spec.source, spec.as_of)
            for name, spec in (overrides or {}).items()
        }

    def list_for(self, base_url: str, region: str | None = None,
                 local: bool = False) -> PriceList | None:
        if local:
            return self.lists.get(LOCAL_LIST)
        if region:
            for plist in self.lists.values():
                if region == plist.name or region in plist.aliases:
                    return plist
            return None
        host = (urlsplit(base_url).hostname or "").lower()
        for plist in self.lists.values():
            if any(host == h or host.endswith("." + h) for h in plist.hosts):
                return plist
        return None

    def price(self, plist: PriceList | None, model: str) -> ModelPrice | None:
        """Exact name, else the longest listed name it extends (``qwen-plus-latest``)."""
        if model in self.overrides:
            return self.overrides[model]
        if plist is None:
            return None
        if plist.free:
            return ModelPrice(model, plist.currency, (Tier(None, 0.0, 0.0),), plist.source,
                              plist.as_of, plist.name)
        if model in plist.models:
            return plist.models[model]
        best: str | None = None
        for name in plist.models:
            if model.startswith(name + "-") and (best is None or len(name) > len(best)):
                best = name
        return plist.models[best] if best else None

    def misspelt(self, plist: PriceList | None, model: str) -> str | None:
        """The listed model ``model`` is likely a misspelling of, when it has no
        price: one typing slip away (a letter wrong, missing, added, or two
        swapped: ``qwen-plsu`` for ``qwen-plus``), a mistake the first request's
        "model not found" would otherwise tell. A newer model (``qwen3.5-plus``)
        is further from every listed name than that."""
        if plist is None or plist.free or len(model) < 6 or \
                self.price(plist, model) is not None:
            return None
        return next((name for name in sorted(plist.models) if _one_slip(model, name)), None)


def _one_slip(a: str, b: str) -> bool:
    """Whether ``a`` becomes ``b`` by one letter changed, removed, added, or two
    neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    start = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                 min(len(a), len(b)))
    a_rest, b_rest = a[start:], b[start:]
    return (a_rest[1:] == b_rest[1:] or a_rest[1:] == b_rest or a_rest == b_rest[1:]
            or (len(a_rest) > 1 and a_rest[:2] == b_rest[1::-1] and a_rest[2:] == b_rest[2:]))


def misspelt_notes(book: PriceBook, plist: PriceList | None, models: Iterable[str]) -> list[str]:
    """What ``validate`` and ``--dry-run`` say of models that look misspelt."""
    notes = []
    for model in models:
        if (near := book.misspelt(plist, model)) is not None and plist is not None:
            notes.append(f"model {model!r} is not in the {plist.name} price list: did you mean "
                         f"{near!r}? (a model newer than the list needs its price in "
                         "`pricing:`)")
    return notes


class StoreCosts:
    """Prices the attempts of one run store (each run by its endpoint's price
    list), and lends the store its ``bg_cost`` / ``bg_currency`` for SQL."""

    def __init__(self, store: RunStore, book: PriceBook) -> None:
        self.book = book
        self.run_lists: dict[int, PriceList | None] = {}
        for run in store.runs():
            local = str(run["endpoint"]).startswith("local:")
            self.run_lists[run["id"]] = book.list_for(run["base_url"], run["region"], local)
        self._cache: dict[tuple[int, str], ModelPrice | None] = {}
        store.price_with(self)

    def price(self, run_id: int, model: str) -> ModelPrice | None:
        key = (run_id, model)
        if key not in self._cache:
            self._cache[key] = self.book.price(self.run_lists.get(run_id), model)
        return self._cache[key]

    def cost(self, run_id: int, model: str, prompt: int | None, completion: int | None,
             reasoning: int | None, cached: int | None, mode: str | None = None, *,
             audio_in: int | None = None, audio_out: int | None = None) -> float | None:
        if prompt is None or completion is None:
            return 0.0  # no usage row: nothing was billed (an error before any output)
        price = self.price(run_id, model)
        return None if price is None else price.cost(prompt, completion, reasoning, cached,
                                                     batch=mode == "batch", audio_in=audio_in,
                                                     audio_out=audio_out)

    def currency(self, run_id: int, model: str) -> str | None:
        price = self.price(run_id, model)
        return None if price is None else price.currency


def overrides_to_json(overrides: dict[str, PriceSpec]) -> str:
    return json.dumps({k: dump(v, exclude_none=True) for k, v in overrides.items()},
                      sort_keys=True)


def overrides_from_json(text: str | None) -> dict[str, PriceSpec]:
    if not text:
        return {}
    return {k: PriceSpec.validate(v) for k, v in json.loads(text).items()}
