"""The job-file sections' machinery (batchgen/jobs/spec.py): strict checks,
which keys count as given, extras kept, fresh defaults, and what it refuses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from pydantic_core import ValidationError

from batchgen.jobs.schema import EndpointSpec, JobSpec, PriceSpec, PromptSpec
from batchgen.jobs.spec import Spec, dump, field, updated


def _errors(cls: type[Spec], data: Any) -> list[tuple[str, tuple[Any, ...]]]:
    with pytest.raises(ValidationError) as info:
        cls.validate(data)
    return [(e["type"], tuple(e["loc"])) for e in info.value.errors(include_url=False)]


def test_no_text_is_read_as_a_number_and_no_bool_as_an_int() -> None:
    assert _errors(PromptSpec, {"prompt": "x", "max_tokens": "100"}) == [
        ("int_type", ("max_tokens",))]
    assert _errors(PromptSpec, {"prompt": "x", "max_tokens": True}) == [
        ("int_type", ("max_tokens",))]
    assert _errors(PromptSpec, {"prompt": "x", "temperature": "0.5"}) == [
        ("float_type", ("temperature",))]
    spec = PromptSpec.validate({"prompt": "x", "temperature": 1})
    assert spec.temperature == 1.0 and isinstance(spec.temperature, float)


def test_unknown_keys_missing_keys_and_bounds_are_located() -> None:
    assert _errors(JobSpec, {"prompts": [], "run": {"concurency": 3}}) == [
        ("extra_forbidden", ("run", "concurency"))]
    assert _errors(JobSpec, {"prompts": [], "budget": {"max_cost": 1}}) == [
        ("missing", ("budget", "currency"))]
    assert _errors(JobSpec, {"prompts": [], "run": {"guard": {"min_span": 1}}}) == [
        ("greater_than_equal", ("run", "guard", "min_span"))]
    # a check across fields speaks for the section it belongs to
    assert _errors(JobSpec, {"prompts": [], "pricing": {"m": {"currency": "CNY"}}}) == [
        ("value_error", ("pricing", "m"))]


def test_only_what_the_file_gives_counts_as_given() -> None:
    spec = PromptSpec.validate({"id": 7, "prompt": "x", "schema": {"type": "object"},
                                "temperature": None})
    # by field name (the alias `schema` is answer_schema); an explicit null counts
    assert spec.fields_set == {"id", "prompt", "answer_schema", "temperature"}
    assert spec.id == "7" and spec.max_tokens is None
    job = JobSpec.validate({"prompts": [{"prompt": "x"}]})
    assert job.fields_set == {"prompts"} and job.run.fields_set == frozenset()
    assert job.run.concurrency == 8 and job.run.guard.min_span == 10
    changed = updated(job.defaults, model="qwen-plus")
    assert changed.model == "qwen-plus" and changed.fields_set == {"model"}
    assert job.defaults.model is None  # the original is left as it was


def test_defaults_made_by_a_factory_are_fresh_per_section() -> None:
    one = JobSpec.validate({"prompts": []})
    two = JobSpec.validate({"prompts": []})
    assert one.endpoint.server_args == [] and one.endpoint.server_args is not \
        two.endpoint.server_args
    assert one == two and one.endpoint == EndpointSpec()


def test_a_message_keeps_provider_fields_and_dump_drops_nulls() -> None:
    spec = PromptSpec.validate({"messages": [
        {"role": "assistant", "content": "x", "partial": True, "name": None}]})
    assert dump(spec.messages, exclude_none=True) == [
        {"role": "assistant", "content": "x", "partial": True}]
    price = PriceSpec.validate({"currency": "CNY", "tiers": [{"input": 1, "output": 2}]})
    assert PriceSpec.validate(dump(price, exclude_none=True)) == price


def test_a_field_of_a_type_it_cannot_check_is_refused_not_passed() -> None:
    @dataclass(frozen=True, kw_only=True)
    class Odd(Spec):
        ids: set[int] = field(None)

    with pytest.raises(TypeError, match="no schema"):
        Odd.validate({"ids": [1]})
