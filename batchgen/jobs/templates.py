"""``template:``: a prompt whose every string is a Jinja2 template over a row.

Rendered in a sandboxed environment with strict undefined names: a name the
row lacks is an error naming it, never an empty string. A row's values are
data, never templates: Jinja2 inserts what an expression yields as it is, so a
value holding ``{{ x }}``, ``{% %}`` or an unbalanced brace arrives literally.
Strings without ``{{``, ``{%`` or ``{#`` are kept as written (not compiled).

A column whose name is not a name (``First Name``, ``product-id``) is reached
through ``row``: ``{{ row['First Name'] }}``. A null value writes nothing,
and a nested object or list is written as JSON.

``{{ read_text(path) }}`` writes the text of a file (UTF-8; ``path`` relative
to the job file's folder, and inside it or a media root, as ``file://`` media
are): a folder of documents (``data: {glob: ...}``) or a column of file names
becomes prompts. The file is read whenever the job is loaded, so a changed
file is a changed request.

A parameter (any key but the prompt's text, messages, tags, id and model)
written as one expression, ``max_tokens: "{{ max_len }}"``, becomes the number
(or ``true``/``false``) it renders to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from batchgen.errors import Problem
from batchgen.jobs.problems import path_str

TEXT_KEYS = frozenset({"prompt", "system", "messages", "tags", "id", "model"})
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_ONE_EXPRESSION = re.compile(r"\s*\{\{[^{}]*\}\}\s*", re.DOTALL)


def _text(value: Any) -> Any:
    """What ``{{ expression }}`` writes for a value: null as nothing (not
    "None"), a nested object or list as JSON (not Python's repr), the rest as is."""
    if value is None:
        return ""
    if type(value) is dict or type(value) is list:
        return json.dumps(value, ensure_ascii=False)
    return value


_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                            keep_trailing_newline=True, finalize=_text)


_GLOBALS = dict(_ENV.globals)
# the whole row, for a column whose name is no name in a template:
# {{ row['First Name'] }} (a column named "row" wins over it)
ROW = "row"
READ_TEXT = "read_text"  # {{ read_text(path) }}: a file's text
MAX_TEXT_BYTES = 10 * 1024 * 1024  # a file read_text reads: more than any model's context
HIDDEN = frozenset({ROW, READ_TEXT})  # names batchgen gives a template beside the row's


class FileText(ValueError):
    """A file ``read_text`` cannot give: which, and why."""


class RenderError(Exception):
    """A row that does not render: where in the template, and what to fix."""

    def __init__(self, path: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class _Part:
    template: jinja2.Template
    convert: bool  # one expression in a parameter: a number renders to a number
    # text and names, for a template that is only text and {{ name }}s: joined
    # without Jinja2's machinery (~4 µs a string), to the same output
    pieces: tuple[str, ...] | None = None
    path: tuple[Any, ...] = ()  # where it stands in the template, for errors


_NAME = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _plain_pieces(source: str) -> tuple[str, ...] | None:
    """Text and names alternately (text first) when ``source`` is only text and
    ``{{ name }}``; None when Jinja2 must render it (filters, attributes,
    statements, comments)."""
    parts = _NAME.split(source)
    texts = parts[0::2]
    if any("{{" in t or "{%" in t or "{#" in t for t in texts) \
            or any(name in _GLOBALS or name in HIDDEN  # range, dict, ...: Jinja2's
                   for name in parts[1::2]):
        return None
    return tuple(parts)


Compiled = Any  # a tree of dicts, lists, _Part and plain values


class Template:
    """The compiled ``template:`` mapping; :meth:`render` fills it from a row."""

    def __init__(self, spec: dict[str, Any], file: str,
                 line_of: Callable[[tuple[Any, ...]], int | None], base: Path | None = None,
                 roots: tuple[Path, ...] = ()) -> None:
        self.problems: list[Problem] = []
        self.jinja = False  # some string needs Jinja2's render (not only text and names)
        self.files_read = 0  # by read_text, over every render
        self._file, self._line_of = file, line_of
        self._base, self._roots = base or Path(), roots
        self._tree = self._compile(spec, ("template",), convert=False)

    def read_text(self, path: Any) -> str:
        """``{{ read_text(path) }}``: the UTF-8 text of a file inside the job's
        folder or a media root (a byte-order mark dropped)."""
        from batchgen.jobs import media

        if not isinstance(path, str) or not path:
            raise FileText(f"read_text() takes a file's path, not {path!r}")
        try:
            full = media.inside(path, self._base, self._roots)
            if not full.exists():
                raise FileText(f"read_text({path!r}): no such file: {full}")
            if not full.is_file():
                raise FileText(f"read_text({path!r}): {full} is not a file")
            size = full.stat().st_size
            if size > MAX_TEXT_BYTES:
                raise FileText(f"read_text({path!r}): {full} is {size:,} bytes, over the "
                               f"{MAX_TEXT_BYTES:,}-byte cap on a file's text in a prompt")
            data = full.read_bytes()
        except media.MediaProblem as exc:
            raise FileText(f"read_text({path!r}): {exc}") from None
        except OSError as exc:
            raise FileText(f"read_text({path!r}): cannot read: {exc.strerror or exc}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise FileText(f"read_text({path!r}): {full} is not UTF-8 text (byte "
                           f"{exc.start:,}); save it as UTF-8") from None
        self.files_read += 1
        return text

    def _compile(self, value: Any, path: tuple[Any, ...], convert: bool) -> Compiled:
        if isinstance(value, dict):
            return {key: self._compile(item, (*path, key),
                                       convert or (len(path) == 1 and key not in TEXT_KEYS))
                    for key, item in value.items()}
        if isinstance(value, list):
            return [self._compile(item, (*path, i), convert) for i, item in enumerate(value)]
        if not isinstance(value, str) or not ("{{" in value or "{%" in value or "{#" in value):
            return value
        try:
            compiled = _ENV.from_string(value)
        except jinja2.TemplateSyntaxError as exc:
            self.problems.append(Problem(
                self._file, self._line_of(path), path_str(path),
                f"template syntax error: {exc.message} (line {exc.lineno} of the template)"))
            return value
        pieces = _plain_pieces(value)
        self.jinja = self.jinja or pieces is None
        return _Part(compiled, convert and bool(_ONE_EXPRESSION.fullmatch(value)), pieces,
                     path)

    def render(self, row: dict[str, Any]) -> dict[str, Any]:
        """The prompt for ``row``; :class:`RenderError` names the key that failed."""
        # one set of names for every string of the row (the environment's globals,
        # then the row's columns), shared by their contexts rather than copied for
        # each: a third of the time of Template.render, the same output
        names = {**_GLOBALS, ROW: row, READ_TEXT: self.read_text, **row} if self.jinja \
            else row
        out = _render(self._tree, names)
        assert isinstance(out, dict)  # noqa: S101 - a mapping compiles to a mapping
        return out


def _render(node: Compiled, row: dict[str, Any]) -> Any:
    kind = type(node)
    if kind is dict:
        return {key: _render(item, row) for key, item in node.items()}
    if kind is list:
        return [_render(item, row) for item in node]
    if kind is not _Part:
        return node
    path = node.path
    try:
        if node.pieces is not None:
            text = _join(node.pieces, row)
        else:
            template = node.template
            text = "".join(template.root_render_func(template.new_context(row, shared=True)))
    except jinja2.UndefinedError as exc:
        given = [name for name in row if name not in _GLOBALS
                 and not (name == ROW and isinstance(row[name], dict) and ROW not in row[name])
                 and not (name == READ_TEXT and callable(row[name]))]
        columns = ", ".join(given[:12]) + (", ..." if len(given) > 12 else "")
        raise RenderError(path, f"{exc.message}: the row has no such column or key "
                          f"(its columns: {columns}); add it to the data or fix the "
                          "template") from None
    except jinja2.TemplateError as exc:
        raise RenderError(path, f"does not render for this row: {exc}") from None
    except FileText as exc:
        raise RenderError(path, str(exc)) from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise RenderError(path, f"does not render for this row: {type(exc).__name__}: "
                          f"{exc}") from None
    if node.convert:
        return _scalar(text)
    return text


def _join(pieces: tuple[str, ...], names: dict[str, Any]) -> str:
    out = [pieces[0]]
    for i in range(1, len(pieces), 2):
        name = pieces[i]
        if name not in names:
            raise jinja2.UndefinedError(f"{name!r} is undefined")
        value = names[name]
        out.append(value if type(value) is str else str(_text(value)))
        out.append(pieces[i + 1])
    return "".join(out)


def _scalar(text: str) -> Any:
    """A parameter's rendered text as the number or boolean it spells, if it does."""
    stripped = text.strip()
    if _NUMBER.fullmatch(stripped):
        number = float(stripped)
        return int(stripped) if number.is_integer() and "." not in stripped \
            and "e" not in stripped.lower() else number
    if stripped in ("true", "True", "false", "False"):
        return stripped in ("true", "True")
    return text
