"""Turn validation failures into job-file problems a user can act on."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from typing import Any, get_args, get_origin

from pydantic_core import ValidationError

from batchgen.errors import Problem
from batchgen.jobs.headers import ENV_REF, RESERVED
from batchgen.jobs.schema import ID_PATTERN, PROVIDER_KEYS
from batchgen.jobs.spec import Spec

_SECRET_KEY_NAMES = re.compile(r"(api[_-]?key|apikey|secret|password|token|authorization)$", re.I)
_SECRET_VALUE = re.compile(r"^(sk-[A-Za-z0-9_\-]{16,}|Bearer\s+\S{16,})$")

USE_ENV = (
    "looks like a literal API key; never put keys in job files: export it in an "
    "environment variable and name that variable in endpoint.api_key_env"
)


HEADER_USE_ENV = (
    "looks like a literal key; never put keys in job files: export it in an environment "
    "variable (a *_API_KEY one) and write ${THAT_VARIABLE} in the header's value"
)


def path_str(path: Iterable[Any]) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def looks_like_secret(value: object) -> bool:
    return isinstance(value, str) and bool(_SECRET_VALUE.match(value.strip()))


def secret_problems(
    data: object, file: str, line_of: Callable[[tuple[Any, ...]], int | None]
) -> list[Problem]:
    """Literal keys anywhere outside prompt text: refuse them, never echo them."""
    found: list[Problem] = []

    def walk(obj: object, path: tuple[Any, ...]) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                sub = (*path, key)
                named = isinstance(key, str) and bool(_SECRET_KEY_NAMES.search(key))
                if key in ("prompts", "messages", "prompt", "system"):
                    continue
                if sub == ("endpoint", "headers") and isinstance(value, dict):
                    found.extend(_header_secrets(value, file, line_of))
                    continue
                if (named and key != "api_key_env" and isinstance(value, str)) or (
                    looks_like_secret(value)
                ):
                    found.append(Problem(file, line_of(sub), path_str(sub), USE_ENV))
                else:
                    walk(value, sub)
        elif isinstance(obj, list):
            for i, value in enumerate(obj):
                walk(value, (*path, i))

    walk(data, ())
    return found


def _header_secrets(headers: dict[Any, Any], file: str,
                    line_of: Callable[[tuple[Any, ...]], int | None]) -> list[Problem]:
    """A header's key comes from ``${VARIABLE}``: a value that, but for those
    parts, looks like a key, or a key-named header with no such part, is refused."""
    found = []
    for name, text in headers.items():
        if not isinstance(text, str) or str(name).lower() in RESERVED:
            continue  # the schema says what is wrong with it
        literal = ENV_REF.sub("", text)
        named = isinstance(name, str) and bool(_SECRET_KEY_NAMES.search(name))
        if looks_like_secret(literal) or (named and literal.strip() and literal == text):
            sub = ("endpoint", "headers", name)
            found.append(Problem(file, line_of(sub), path_str(sub), HEADER_USE_ENV))
    return found


def _unknown_key_hint(key: str, model: type[Spec] | None) -> str:
    if key in PROVIDER_KEYS:
        return f"{key!r} is a provider parameter: put it under `extra_body:`"
    if key in ("api_key", "key", "apikey"):
        return USE_ENV
    if key in ("stream", "stream_options"):
        return (f"{key!r} is batchgen's to set: every request is streamed, with its usage "
                "(stream: true, stream_options.include_usage); leave it out")
    known = sorted(model.keys()) if model is not None else []
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    hint = f"unknown key {key!r}"
    if close:
        return f"{hint}; did you mean {close[0]!r}?"
    if model is not None and known:
        return (
            f"{hint}; known keys: {', '.join(known)} "
            "(provider-specific parameters go under `extra_body:`)"
        )
    return hint


def _message(err: dict[str, Any], model: type[Spec] | None) -> str:
    kind = err["type"]
    loc = err["loc"]
    last = loc[-1] if loc else None
    if kind == "extra_forbidden" and isinstance(last, str):
        return _unknown_key_hint(last, model)
    if kind == "missing":
        return f"missing required key {last!r}"
    if kind == "string_pattern_mismatch":
        if last in ("id", "custom_id", "name"):
            return (
                f"{last} {_shown(err.get('input'))} must match {ID_PATTERN} (letters, digits, "
                "'.', '_', '-'; starts with a letter or digit; at most 128): it names files"
            )
        if last == "api_key_env":
            return (
                "api_key_env names an environment variable (like DASHSCOPE_API_KEY), "
                "not the key itself"
            )
    if last == "n" and kind in ("less_than_equal", "greater_than_equal"):
        return ("n must be 1: a request streams one answer; for several answers to one "
                "prompt, list it several times (each is its own request, with its own id)")
    if kind == "dict_type":
        return f"expected a mapping (key: value lines), got {_shown(err.get('input'))}"
    if kind == "list_type":
        return f"expected a list (- item lines), got {_shown(err.get('input'))}"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"wrong type: {msg[:1].lower() + msg[1:]} (got {_shown(err.get('input'))})"
    return msg


def _shown(value: object) -> str:
    if looks_like_secret(value):
        return "<hidden>"
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def model_at(root: type[Spec], loc: tuple[Any, ...]) -> type[Spec] | None:
    """The section that owns the keys at ``loc`` below ``root``."""
    current: Any = root
    for step in loc:
        if _is_spec(current):
            current = current.keys().get(step) if isinstance(step, str) else None
            if current is None:
                return None
        current = _unwrap(current)
    return current if _is_spec(current) else None


def _is_spec(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Spec)


def _unwrap(annotation: Any) -> Any:
    """list[X] / dict[str, X] / X | None -> X, so a path can step through them."""
    seen = 0
    while seen < 5:
        seen += 1
        args = [a for a in get_args(annotation) if a is not type(None)]
        origin = get_origin(annotation)
        if origin in (list, tuple) and args:
            annotation = args[0]
        elif origin is dict and len(args) == 2:
            annotation = args[1]
        elif args and any(_is_spec(a) for a in args):
            annotation = next(a for a in args if _is_spec(a))
        else:
            break
    return annotation


def _is_type_tag(step: Any) -> bool:
    # pydantic-core names union branches in the location: ('stop', 'list[str]')
    return isinstance(step, str) and (
        "[" in step or step in {"str", "int", "float", "bool", "dict", "list", "none"}
    )


def from_validation(
    exc: ValidationError,
    *,
    file: str,
    prefix: tuple[Any, ...],
    line_of: Callable[[tuple[Any, ...]], int | None],
    model: type[Spec],
) -> list[Problem]:
    """One :class:`Problem` per wrong key, located by ``line_of``."""
    grouped: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for err in exc.errors(include_url=False):
        steps: list[Any] = []
        for step in err["loc"]:
            if _is_type_tag(step):
                break
            steps.append(step)
        grouped.setdefault(tuple(steps), []).append(dict(err))
    problems = []
    for loc, errs in grouped.items():
        owner = model_at(model, loc[:-1])
        if len(errs) > 1:
            tags = sorted({str(s) for e in errs for s in e["loc"][len(loc) :][:1]})
            message = _message({**errs[0], "msg": f"expected {' or '.join(tags)}"}, owner)
        else:
            message = _message(errs[0], owner)
        full = (*prefix, *loc)
        problems.append(Problem(file, line_of(full), path_str(full) or None, message))
    return problems
