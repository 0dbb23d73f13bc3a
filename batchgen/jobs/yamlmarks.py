"""Safe YAML loading that remembers where every key came from.

Only PyYAML's safe constructors are used. Aliases are capped and what they add
when expanded is bounded, so an alias bomb ("billion laughs") is refused
before anything walks it. Duplicate keys are errors, not a silent
last-one-wins.

A job's ``prompts:`` list is read one item at a time (:func:`load_yaml` with
``stream=``): the first reading checks every item and keeps none, and
:func:`stream_items` reads them again each time the job's requests are
walked. Memory then holds one prompt's document tree, not the whole job's;
a 10,000-prompt job file needs no more than a 1,000-prompt one.
libyaml's parser (PyYAML's C extension) supplies the events where PyYAML was
built with it, PyYAML's own otherwise; what is built from them is the same.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.events import (
    MappingEndEvent,
    MappingStartEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

MAX_ALIASES = 100
MAX_EXPANDED_NODES = 200_000  # what aliases may add to a document, expanded


_SAFE: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """PyYAML's safe loading through libyaml where built with it (packaged tables)."""
    return yaml.load(text, Loader=_SAFE)  # noqa: S506 - a safe loader, libyaml's or PyYAML's


class YamlProblem(Exception):
    """The document cannot be read; ``line`` is 1-based where known."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class LineMap:
    """Line numbers of containers and of their keys / items (1-based)."""

    lines: dict[int, tuple[int, dict[Any, int]]] = field(default_factory=dict)
    root: Any = None
    start: int | None = None  # the root's own line, whatever it is

    def line_if(self, path: tuple[Any, ...]) -> int | None:
        """The line of ``path`` itself; None where the document has no such part."""
        obj = self.root
        line = None
        for step in path:
            entry = self.lines.get(id(obj))
            line = entry[1].get(step) if entry is not None else None
            if line is None:
                return None
            try:
                obj = obj[step]
            except (KeyError, IndexError, TypeError):
                return None
        return line

    def line_of(self, path: tuple[Any, ...]) -> int | None:
        """The line of the deepest part of ``path`` that exists in the document."""
        obj = self.root
        best: int | None = None
        for step in path:
            entry = self.lines.get(id(obj))
            if entry is None:
                break
            best = entry[0] if best is None else best
            child_line = entry[1].get(step)
            if child_line is None:
                break
            best = child_line
            try:
                obj = obj[step]
            except (KeyError, IndexError, TypeError):
                break
        if best is None:
            entry = self.lines.get(id(self.root))
            best = entry[0] if entry else self.start
        return best


_Events: Any
try:
    from yaml.cyaml import CParser as _Events  # type: ignore[attr-defined]  # libyaml
except ImportError:  # pragma: no cover - PyYAML's wheels ship libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _PureEvents(Reader, Scanner, Parser):
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)

    _Events = _PureEvents


class _Loader(_Events, Composer, SafeConstructor, Resolver):  # type: ignore[misc]
    def __init__(self, stream: str) -> None:
        _Events.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.aliases = 0
        self.composed = 0  # nodes in the text (an alias is not one)
        self.extra = 0  # what aliases added, expanded
        self.in_items = 0  # nodes composed for streamed items (not in the root's tree)
        self.root: Node | None = None
        self.line_map = LineMap()

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                event = self.peek_event()
                raise YamlProblem(
                    f"more than {MAX_ALIASES} YAML aliases; write the values out "
                    "or move prompts to a JSONL prompts_file",
                    event.start_mark.line + 1,
                )
        else:
            self.composed += 1
        return Composer.compose_node(self, parent, index)

    def check_keys(self, node: MappingNode) -> dict[Any, int]:
        keys: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`, merged below
                keys.setdefault("<<", key_node.start_mark.line + 1)
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise YamlProblem(
                    f"key {key!r} is not text; quote it", key_node.start_mark.line + 1
                )
            if key in keys and key != "<<":
                raise YamlProblem(
                    f"duplicate key {key!r} (first on line {keys[key]}); keep one",
                    key_node.start_mark.line + 1,
                )
            keys[key] = key_node.start_mark.line + 1
        return keys

    def construct_marked_map(self, node: MappingNode) -> Iterator[dict[Any, Any]]:
        data: dict[Any, Any] = {}
        yield data
        keys = self.check_keys(node)
        data.update(self.construct_mapping(node))
        self.line_map.lines[id(data)] = (node.start_mark.line + 1, keys)

    def construct_marked_seq(self, node: SequenceNode) -> Iterator[list[Any]]:
        data: list[Any] = []
        yield data
        data.extend(self.construct_sequence(node))
        items = {i: child.start_mark.line + 1 for i, child in enumerate(node.value)}
        self.line_map.lines[id(data)] = (node.start_mark.line + 1, items)


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_marked_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_marked_seq)


def _expanded_size(node: Node, memo: dict[int, int]) -> int:
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = 1  # a cycle counts once; PyYAML refuses recursive objects later
    size = 1
    if isinstance(node, SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo)
    elif isinstance(node, MappingNode):
        for key, value in node.value:
            size += _expanded_size(key, memo) + _expanded_size(value, memo)
    elif not isinstance(node, ScalarNode):  # pragma: no cover - PyYAML has no other kind
        raise YamlProblem("unexpected YAML node", node.start_mark.line + 1)
    memo[id(node)] = size
    return size


def _bounded(loader: _Loader, node: Node, composed_before: int) -> None:
    """Refuse a node whose expansion adds too much to what its text holds."""
    loader.extra += max(0, _expanded_size(node, {}) - (loader.composed - composed_before))
    if loader.extra > MAX_EXPANDED_NODES:
        raise YamlProblem(
            f"aliases expand the document by more than {MAX_EXPANDED_NODES} values "
            "(an alias bomb?); write it without nested aliases",
            node.start_mark.line + 1,
        )


def _build(loader: _Loader, node: Node) -> tuple[Any, LineMap]:
    """Python data for one node, with a line map of its own."""
    loader.line_map = LineMap()
    data = loader.construct_document(node)
    loader.line_map.root = data
    loader.line_map.start = node.start_mark.line + 1
    return data, loader.line_map


def _scalar_is(node: Node, text: str) -> bool:
    return isinstance(node, ScalarNode) and node.value == text


def _document(loader: _Loader, stream: str | None) -> Iterator[tuple[int, Node]]:
    """Compose the one document; the items of the top-level ``stream`` list are
    yielded one by one, kept out of the tree. Sets ``loader.root``."""
    loader.get_event()  # StreamStartEvent
    if loader.check_event(StreamEndEvent):
        loader.root = None
        return
    start: Any = loader.get_event()  # DocumentStartEvent
    if stream is None or not loader.check_event(MappingStartEvent):
        root = loader.compose_node(None, None)
    else:
        root = yield from _mapping(loader, stream)
    loader.get_event()  # DocumentEndEvent
    if not loader.check_event(StreamEndEvent):
        event = loader.get_event()
        raise ComposerError(
            "expected a single document in the stream", start.start_mark,
            "but found another document", event.start_mark)
    loader.root = root


def _mapping(loader: _Loader, stream: str) -> Generator[tuple[int, Node], None, Node]:
    """The top-level mapping, as PyYAML composes it, but for ``stream``'s items."""
    event: Any = loader.get_event()
    tag = event.tag
    if tag is None or tag == "!":
        tag = loader.resolve(MappingNode, None, event.implicit)  # type: ignore[no-untyped-call]
    node = MappingNode(tag, [], event.start_mark, None, flow_style=event.flow_style)
    if event.anchor is not None:
        loader.anchors[event.anchor] = node
    while not loader.check_event(MappingEndEvent):
        key = loader.compose_node(node, None)
        assert key is not None  # noqa: S101 - an invariant, for the type checker
        nxt: Any = loader.peek_event()
        if _scalar_is(key, stream) and isinstance(nxt, SequenceStartEvent):
            if nxt.anchor:
                raise YamlProblem(f"an anchor on `{stream}:` is not supported; anchor the "
                                  "items you want to repeat", key.start_mark.line + 1)
            loader.get_event()
            tag = nxt.tag
            if tag is None or tag == "!":
                tag = loader.resolve(SequenceNode, None,  # type: ignore[no-untyped-call]
                                     nxt.implicit)
            mark: Any = nxt.start_mark
            value: Node = SequenceNode(tag, [], mark, None, flow_style=nxt.flow_style)
            index = 0
            while not loader.check_event(SequenceEndEvent):
                before = loader.composed
                item = loader.compose_node(value, index)
                assert item is not None  # noqa: S101 - an invariant, for the type checker
                _bounded(loader, item, before)
                loader.in_items += loader.composed - before
                yield index, item
                index += 1
            value.end_mark = loader.get_event().end_mark
        else:
            value = loader.compose_node(node, key)  # type: ignore[assignment]
        node.value.append((key, value))
    node.end_mark = loader.get_event().end_mark
    return node


def _char_at(text: str, line: int, column: int) -> str:
    """The character at a 0-based line and column of ``text`` ("" past its end)."""
    start = 0
    for _ in range(line):
        start = text.find("\n", start) + 1
        if start == 0:
            return ""
    end = text.find("\n", start)
    row = text[start:] if end < 0 else text[start:end]
    return row[column:column + 1]


def _read(text: str, stream: str | None) -> Iterator[tuple[int, Any, LineMap]]:
    """Items of ``stream`` as (index, data, line map); then ``(-1, root, map)``."""
    loader = _Loader(text)
    try:
        for index, item in _document(loader, stream):
            yield (index, *_build(loader, item))
        root = loader.root
        if root is None:
            yield -1, None, loader.line_map
            return
        _bounded(loader, root, loader.in_items)
        yield (-1, *_build(loader, root))
    except YamlProblem:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        if mark is not None and "tab" not in what \
                and _char_at(text, mark.line, mark.column) == "\t":
            what += " (a tab: YAML indents with spaces only)"
        start = exc.context_mark
        if start is not None and mark is not None and start.line != mark.line:
            what += f" (what it was reading began on line {start.line + 1})"
        raise YamlProblem(f"YAML syntax error: {what}", line) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"YAML error: {exc}", None) from None
    except RecursionError:
        raise YamlProblem("YAML nests too deeply", None) from None
    finally:
        loader.dispose()


def load_yaml(text: str, stream: str | None = None) -> tuple[Any, LineMap, int]:
    """Parse one YAML document; return the data, where each key was, and how
    many items the top-level ``stream`` list has. That list's items are
    checked and not kept: the data holds an empty list in their place, and
    :func:`stream_items` gives them."""
    count = 0
    for index, data, line_map in _read(text, stream):
        if index < 0:
            return data, line_map, count
        count = index + 1
    raise AssertionError("unreachable: _read ends with the root")  # pragma: no cover


def stream_items(text: str, stream: str) -> Iterator[tuple[int, Any, LineMap]]:
    """The items of the top-level ``stream`` list, one at a time, each with
    its own line map (lines counted in the whole document)."""
    for index, data, line_map in _read(text, stream):
        if index >= 0:
            yield index, data, line_map
