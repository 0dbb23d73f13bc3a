"""Safe YAML loading that remembers where every key came from.

Only PyYAML's safe constructors are used. Aliases are capped and the size of
the document with every alias expanded is bounded, so an alias bomb ("billion
laughs") is refused before anything walks it. Duplicate keys are errors, not a
silent last-one-wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_ALIASES = 100
MAX_EXPANDED_NODES = 200_000


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
            best = entry[0] if entry else None
        return best


class _Loader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.line_map = LineMap()

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise YamlProblem(
                    f"more than {MAX_ALIASES} YAML aliases; write the values out "
                    "or move prompts to a JSONL prompts_file",
                    event.start_mark.line + 1,
                )
        return super().compose_node(parent, index)

    def check_keys(self, node: MappingNode) -> dict[Any, int]:
        keys: dict[Any, int] = {}
        for key_node, _ in node.value:
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
    if size > MAX_EXPANDED_NODES:
        raise YamlProblem(
            f"the document expands to more than {MAX_EXPANDED_NODES} values "
            "(an alias bomb?); write it without nested aliases",
            node.start_mark.line + 1,
        )
    return size


def load_yaml(text: str) -> tuple[Any, LineMap]:
    """Parse one YAML document; return the data and where each key was."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, loader.line_map
        _expanded_size(node, {})
        data = loader.construct_document(node)
    except YamlProblem:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise YamlProblem(f"YAML syntax error: {what}", line) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"YAML error: {exc}", None) from None
    except RecursionError:
        raise YamlProblem("YAML nests too deeply", None) from None
    finally:
        loader.dispose()
    loader.line_map.root = data
    return data, loader.line_map
