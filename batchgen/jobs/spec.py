"""What a job file's sections are: frozen dataclasses, validated by pydantic-core.

A section is a :class:`Spec` dataclass whose fields say their constraints
through :func:`field` (bounds, a pattern, a length, an alias, a function run
before or after the field's own check). The first time a class validates,
its annotations become a pydantic-core schema (strict: no text read as a
number, unknown keys refused), built once; a wrong value is a
:class:`pydantic_core.ValidationError` whose errors carry the key's location,
which :mod:`batchgen.jobs.problems` turns into the file's line.

Why not pydantic's models: importing pydantic and building the job models'
validators took 0.13 s of CPU in a fresh process, against 0.05 s for
pydantic-core and these classes; a one-request run went from 0.40 to 0.36 s
(bench P6). pydantic-core is the validator pydantic itself runs; the errors,
their types and messages are the same.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from pydantic_core import SchemaValidator, core_schema

S = TypeVar("S", bound="Spec")

_RULE = "batchgen.rule"
_EXTRAS = "batchgen.extras"


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one field checks beyond its type."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    alias: str | None = None  # the key as the job file writes it
    before: Callable[[Any], Any] | None = None  # on the value as written
    after: Callable[[Any], Any] | None = None  # on the value once checked


_NO_RULE = Rule()


def field(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None,
          **rule: Any) -> Any:
    """A field with a default (or ``factory``) and the checks of :class:`Rule`."""
    meta = {_RULE: Rule(**rule)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def extras() -> Any:
    """The field that keeps the keys beyond a section's own (``unknown_keys = "allow"``)."""
    return dataclasses.field(default_factory=dict, metadata={_EXTRAS: True})


class Spec:
    """Base of the sections. Subclasses are ``@dataclass(frozen=True, kw_only=True)``."""

    # "forbid": an unknown key is an error (a typo never becomes a default);
    # "allow": kept in the class's extras() field
    unknown_keys: ClassVar[Literal["forbid", "allow"]] = "forbid"
    # the fields the job file gave (a default does not count), as names
    fields_set: frozenset[str] = frozenset()

    def check(self) -> None:
        """Checks across fields, run once the fields are valid; raise ValueError."""

    @classmethod
    def validate(cls: type[S], data: Any) -> S:
        """``data`` (from YAML or JSON) as this section; ValidationError if it is not one."""
        found = _VALIDATORS.get(cls)
        if found is None:
            found = _VALIDATORS[cls] = SchemaValidator(_spec_schema(cls))
        result: S = found.validate_python(data)
        return result

    @classmethod
    def keys(cls) -> dict[str, Any]:
        """Each key as the job file writes it, to its field's annotation."""
        hints = _hints(cls)
        return {_rule(f).alias or f.name: hints[f.name] for f in _fields(cls)}

    @classmethod
    def names(cls) -> frozenset[str]:
        """The fields' names."""
        return frozenset(f.name for f in _fields(cls))


_VALIDATORS: dict[type[Spec], SchemaValidator] = {}
_HINTS: dict[type[Spec], dict[str, Any]] = {}


def updated(spec: S, **changes: Any) -> S:
    """``spec`` with ``changes``, which count as given."""
    out = dataclasses.replace(spec, **changes)  # type: ignore[type-var]
    object.__setattr__(out, "fields_set", spec.fields_set | changes.keys())
    return out


def dump(value: Any, exclude_none: bool = False) -> Any:
    """A section (or a value holding sections) as plain dicts and lists, by field name."""
    if isinstance(value, Spec):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):  # type: ignore[arg-type]
            item = getattr(value, f.name)
            if f.metadata.get(_EXTRAS):
                out.update({k: dump(v, exclude_none) for k, v in item.items()
                            if not (exclude_none and v is None)})
            elif not (exclude_none and item is None):
                out[f.name] = dump(item, exclude_none)
        return out
    if isinstance(value, list):
        return [dump(item, exclude_none) for item in value]
    if isinstance(value, dict):
        return {key: dump(item, exclude_none) for key, item in value.items()}
    return value


def _fields(cls: type[Spec]) -> Iterable[dataclasses.Field[Any]]:
    return (f for f in dataclasses.fields(cls) if not f.metadata.get(_EXTRAS))  # type: ignore[arg-type]


def _rule(f: dataclasses.Field[Any]) -> Rule:
    rule: Rule = f.metadata.get(_RULE, _NO_RULE)
    return rule


def _hints(cls: type[Spec]) -> dict[str, Any]:
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = get_type_hints(cls)
    return found


def _spec_schema(cls: type[Spec]) -> core_schema.CoreSchema:
    """The schema of a section: its keys, then the dataclass built and checked.

    The keys' schema fills in no defaults, so what it returns is what the job
    file gave (by field name): that is ``fields_set``, and the defaults are
    laid under it. The instance is made without ``__init__``, its attributes
    set at once (a frozen dataclass's ``__init__`` sets them one by one, 3x the
    cost of validating a prompt).
    """
    hints = _hints(cls)
    fields: dict[str, core_schema.TypedDictField] = {}
    defaults: dict[str, Any] = {}
    factories: list[tuple[str, Callable[[], Any]]] = []
    for f in _fields(cls):
        rule = _rule(f)
        schema = _type_schema(hints[f.name], rule)
        if rule.before is not None:
            schema = core_schema.no_info_before_validator_function(rule.before, schema)
        if rule.after is not None:
            schema = core_schema.no_info_after_validator_function(rule.after, schema)
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            factories.append((f.name, f.default_factory))
        required = f.name not in defaults and f.default_factory is dataclasses.MISSING
        fields[f.name] = core_schema.typed_dict_field(schema, required=required,
                                                      validation_alias=rule.alias)
    keys = core_schema.typed_dict_schema(fields, extra_behavior=cls.unknown_keys, strict=True,
                                         total=False)
    names = cls.names()
    extras_field = next((f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                         if f.metadata.get(_EXTRAS)), None)

    def build(given: dict[str, Any]) -> Spec:
        spec = cls.__new__(cls)
        attrs = spec.__dict__
        attrs.update(defaults)
        for name, factory in factories:
            attrs[name] = factory()
        if extras_field is None:
            attrs.update(given)
            attrs["fields_set"] = frozenset(given)
        else:
            own = {k: v for k, v in given.items() if k in names}
            attrs.update(own)
            attrs[extras_field] = {k: v for k, v in given.items() if k not in names}
            attrs["fields_set"] = frozenset(own)
        spec.check()
        return spec

    return core_schema.no_info_after_validator_function(build, keys)


def _type_schema(annotation: Any, rule: Rule) -> core_schema.CoreSchema:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        inner = (_type_schema(rest[0], rule) if len(rest) == 1 else
                 core_schema.union_schema([_type_schema(a, rule) for a in rest]))
        return core_schema.nullable_schema(inner) if len(rest) < len(args) else inner
    if origin is Literal:
        return core_schema.literal_schema(list(args))
    if origin is list:
        return core_schema.list_schema(_type_schema(args[0], _NO_RULE), strict=True,
                                       min_length=rule.min_length)
    if origin is dict:
        return core_schema.dict_schema(_type_schema(args[0], _NO_RULE),
                                       _type_schema(args[1], _NO_RULE), strict=True)
    if annotation is Any:
        return core_schema.any_schema()
    if annotation is str:
        return core_schema.str_schema(pattern=rule.pattern, min_length=rule.min_length,
                                      max_length=rule.max_length, strict=True)
    if annotation is bool:
        return core_schema.bool_schema(strict=True)
    if annotation is int:
        return core_schema.int_schema(ge=_int(rule.ge), gt=_int(rule.gt), le=_int(rule.le),
                                      strict=True)
    if annotation is float:
        return core_schema.float_schema(ge=rule.ge, gt=rule.gt, le=rule.le, strict=True)
    if isinstance(annotation, type) and issubclass(annotation, Spec):
        return _spec_schema(annotation)
    raise TypeError(f"no schema for {annotation!r}")  # a field this module cannot check


def _int(bound: float | None) -> int | None:
    return None if bound is None else int(bound)
