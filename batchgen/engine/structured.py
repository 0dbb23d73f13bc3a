"""An answer that must be JSON fitting a schema: watched while it streams, and
checked when it ends.

While it streams (:func:`watched`): an answer whose first characters cannot
begin JSON — one of ``{ [ " - 0-9 t f n`` — nor a Markdown fence (three
backticks), after a ``<think>...</think>`` block if it begins with one (a
reasoning model served without a reasoning parser), or that has streamed only
whitespace for
:data:`MAX_LEADING_SPACE` characters (JSON mode can stall that way until
``max_tokens``), is left at once with :class:`NotJson`: it cannot become
valid, and every further token would be paid for.

When it ends (:meth:`AnswerCheck.problem`): the text is parsed (such a
``<think>`` block and a fence around it, ```` ```json ... ``` ````, are taken
off) and validated against the
schema (Draft 2020-12, jsonschema-rs). What is wrong is said as the first few
errors, each with its JSON pointer.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from batchgen.jobs.structured import THINK_CLOSE, THINK_OPEN, unfenced

MAX_LEADING_SPACE = 256
MAX_ERRORS = 3
JSON_STARTS = frozenset('{["-0123456789tfn')


class NotJson(Exception):
    """Raised from the text callback: this answer cannot become valid JSON."""


def watched(on_text: Callable[[str, str], None]) -> Callable[[str, str], None]:
    """``on_text`` with the start of the content watched (the text is passed on
    first, so what streamed is journaled before the stream is left)."""
    start = _Start()

    def watch(content: str, reasoning: str) -> None:
        on_text(content, reasoning)
        if content and not start.settled:
            start.feed(content)

    return watch


class _Start:
    """The first characters of an answer, until they show it may be JSON."""

    def __init__(self) -> None:
        self.spaces = 0
        self.head = ""
        self.settled = False
        self.thinking = False  # inside a leading <think> block: not the answer yet

    def feed(self, content: str) -> None:
        head = self.head + content if self.head else content.lstrip()
        if self.thinking or head.startswith(THINK_OPEN):
            end = head.find(THINK_CLOSE)
            if end < 0:  # keep only what may hold the start of </think>
                self.thinking, self.head = True, head[-len(THINK_CLOSE):]
                return
            self.thinking, self.head = False, ""
            rest = head[end + len(THINK_CLOSE):]
            if rest:
                self.feed(rest)
            return
        if head and THINK_OPEN.startswith(head) and len(head) < len(THINK_OPEN):
            self.head = head  # "<thi": the start of <think>, perhaps
            return
        if not head:
            self.spaces += len(content)
            if self.spaces >= MAX_LEADING_SPACE:
                raise NotJson(f"only whitespace for {self.spaces} characters")
            return
        self.head = head
        if head[0] in JSON_STARTS or head.startswith("```"):
            self.settled = True
        elif head[0] != "`" or len(head) >= 3:
            raise NotJson(f"begins with {head[:20]!r}, which cannot begin JSON")


class AnswerCheck:
    """One schema, compiled once, applied to every answer that must fit it."""

    def __init__(self, schema: dict[str, Any]) -> None:
        import jsonschema_rs  # for jobs with a schema only

        self.validator = jsonschema_rs.Draft202012Validator(schema)

    def parse(self, text: str) -> Any:
        """The JSON value of an answer that fits (a fence taken off)."""
        return json.loads(unfenced(text))

    def problem(self, text: str) -> str | None:
        """Why ``text`` is not a valid answer, or ``None`` when it is."""
        try:
            value = self.parse(text)
        except ValueError as exc:
            return f"is not JSON: {exc}"
        if self.validator.is_valid(value):
            return None
        errors = sorted(self.validator.iter_errors(value),
                        key=lambda e: (list(map(str, e.instance_path)), e.message))
        shown = [f"{_pointer(e.instance_path)}: {e.message}" for e in errors[:MAX_ERRORS]]
        more = f" (and {len(errors) - MAX_ERRORS} more)" if len(errors) > MAX_ERRORS else ""
        return "does not fit the schema: " + "; ".join(shown) + more


def _pointer(path: Any) -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "/" + "/".join(parts) if parts else "/"


@functools.lru_cache(maxsize=64)
def check_for(schema_json: str) -> AnswerCheck:
    """The compiled check of a schema (as the store keeps it: JSON text)."""
    return AnswerCheck(json.loads(schema_json))
