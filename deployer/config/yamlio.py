"""Strict YAML: duplicate keys are errors, errors carry line and column, dates stay strings.

PyYAML silently keeps the last of two equal keys; a deployer must not guess which one the author meant.
Timestamps stay strings because Helm (sigs.k8s.io/yaml) treats them so, and values must mean the same
to us as to Helm.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from deployer.errors import DeployError

Path_ = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"


# libyaml's parser when PyYAML has it (several times faster); construction and resolution stay in Python.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_Base):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses duplicate mapping keys."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: dict[Hashable, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                raise yaml.MarkedYAMLError(problem="a mapping key must be a scalar", problem_mark=key_node.start_mark)
            if key in seen:
                first = seen[key].line + 1
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key!r} (first defined on line {first})",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        mapping: dict[Hashable, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _construct_timestamp_as_str(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return loader.construct_scalar(node)  # type: ignore[arg-type]


def _construct_value_as_str(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    # A bare "=" is YAML 1.1's obscure "value" type; everyone else reads it as a string.
    return loader.construct_scalar(node)  # type: ignore[arg-type]


def _construct_bool(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return str(loader.construct_scalar(node)).lower() in _TRUE  # type: ignore[arg-type]


# Plain scalars resolve as go-yaml v2 (Helm, sigs.k8s.io/yaml) resolves them, not as PyYAML does:
# y/n are booleans, 1e3 and 1.5e3 are floats, 0o17 is octal, 1:20 is a string (no base 60).
_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_TRUE = frozenset({"y", "yes", "true", "on"})
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    _BOOL,
    re.compile(r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"),
    list("yYnNtTfFoO"),
)
_StrictLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0o[0-7_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_StrictLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_StrictLoader.add_constructor(_BOOL, _construct_bool)
_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _construct_timestamp_as_str)
_StrictLoader.add_constructor("tag:yaml.org,2002:value", _construct_value_as_str)


@dataclass(frozen=True)
class Document:
    """A parsed YAML document and where each of its parts starts (1-based line, column)."""

    data: Any
    source: str
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_) -> str:
        """`file:line:col` for the deepest known prefix of `path`, or the file alone."""
        for end in range(len(path), -1, -1):
            pos = self.positions.get(path[:end])
            if pos is not None:
                return f"{self.source}:{pos[0]}:{pos[1]}"
        return self.source


def _error(source: str, exc: yaml.YAMLError) -> DeployError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if mark is not None:
            return DeployError(f"YAML error: {problem}", where=f"{source}:{mark.line + 1}:{mark.column + 1}")
        return DeployError(f"YAML error: {problem}", where=source)
    return DeployError(f"YAML error: {exc}", where=source)


# An alias repeats its anchor's nodes wherever it appears: a few hundred bytes can stand for billions of nodes.
# Everything after parsing (positions, merging values, validation) walks the expansion, so it is measured first,
# in time linear in the document, and refused past these bounds (go-yaml refuses "excessive aliasing" likewise).
MAX_EXPANDED_NODES = 1_000_000
MAX_ALIAS_RATIO = 50  # expanded nodes per node written, once past 10,000 expanded nodes


def _check_expansion(root: Node | None, source: str) -> None:
    """Refuse a document whose aliases expand it beyond the bounds above, or that refers to itself."""
    if root is None:
        return
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise DeployError(
                f"YAML error: an alias refers to a node that contains it (line {node.start_mark.line + 1})",
                where=source,
            )
        open_.add(key)
        if isinstance(node, MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, SequenceNode):
            total = 1 + sum(size(item) for item in node.value)
        else:
            total = 1
        open_.discard(key)
        sizes[key] = min(total, MAX_EXPANDED_NODES + 1)
        return sizes[key]

    expanded = size(root)
    written = len(sizes)
    if expanded > MAX_EXPANDED_NODES or (expanded > 10_000 and expanded > MAX_ALIAS_RATIO * written):
        raise DeployError(
            f"YAML error: aliases expand {written} nodes to {'over ' if expanded > MAX_EXPANDED_NODES else ''}"
            f"{min(expanded, MAX_EXPANDED_NODES):,} (an alias bomb?); write the values out instead",
            where=source,
        )


def _positions(node: Node | None, path: Path_, out: dict[Path_, tuple[int, int]]) -> None:
    if node is None:
        return
    out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode):
                key_path = (*path, key_node.value)
                out[key_path] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                _positions(value_node, key_path, out)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _positions(item, (*path, index), out)


@contextlib.contextmanager
def _reporting(source: str) -> Iterator[None]:
    """Turn YAML parse errors into one DeployError naming `source:line:col`."""
    try:
        yield
    except yaml.YAMLError as exc:
        raise _error(source, exc) from None
    except RecursionError:
        raise DeployError("YAML error: nesting too deep", where=source) from None


def load_document(text: str, *, source: str) -> Document:
    """Parse exactly one YAML document strictly; raise DeployError naming `source:line:col`."""
    loader = _StrictLoader(text)
    try:
        with _reporting(source):
            node = loader.get_single_node()
            _check_expansion(node, source)
            data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    positions: dict[Path_, tuple[int, int]] = {}
    _positions(node, (), positions)
    return Document(data=data, source=source, positions=positions)


def load_all(text: str, *, source: str) -> Iterator[Any]:
    """Parse a stream of YAML documents strictly, yielding each (None for empty documents)."""
    loader = _StrictLoader(text)
    try:
        with _reporting(source):
            while loader.check_node():
                node = loader.get_node()
                _check_expansion(node, source)
                yield loader.construct_document(node)
    finally:
        loader.dispose()


def dump(data: Any) -> str:
    """YAML the way kubectl prints it: block style, keys in their given order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def dump_all(docs: list[Any]) -> str:
    """A multi-document YAML stream, each document introduced by `---`."""
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, explicit_start=True, allow_unicode=True)
