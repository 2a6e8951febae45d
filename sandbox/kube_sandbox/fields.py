"""Server-side apply: field ownership (metadata.managedFields, fieldsV1), conflicts and the apply merge.

A field set is a set of leaf paths. Path elements are fieldsV1 keys: `f:name` for a map key, `k:{...}` for
an item of a keyed list, `v:...` for an item of a set list; atomic lists are leaves.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from kube_sandbox import schema as k8s

Path = tuple[str, ...]
# Fields the apiserver owns, never a manager.
_IGNORED_META = {
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
}


# List-map keys with a default in kube's OpenAPI: structured-merge-diff reads an applied item that leaves them out
# as having the default, so `{port: 80}` applied again matches the stored `{port: 80, protocol: TCP}` instead of
# being added beside it. (ContainerPort, ServicePort and EndpointPort: protocol defaults to TCP.)
_KEY_DEFAULTS = {"protocol": "TCP"}


def _item_key(item: dict[str, Any], keys: list[str]) -> str:
    values = {k: item[k] if k in item else _KEY_DEFAULTS[k] for k in keys if k in item or k in _KEY_DEFAULTS}
    return "k:" + json.dumps(values, separators=(",", ":"), sort_keys=True)


def field_set(obj: Any, schema: dict[str, Any] | None, prefix: Path = (), *, top: bool = True) -> set[Path]:
    """Leaf paths of `obj`, keyed lists and sets described as fieldsV1 does."""
    out: set[Path] = set()
    if isinstance(obj, dict):
        if not obj and prefix:
            out.add(prefix)
        for key, value in obj.items():
            if top and key in ("apiVersion", "kind"):
                continue
            if prefix == ("f:metadata",) and key in _IGNORED_META:
                continue
            out |= field_set(value, k8s.child(schema, key), (*prefix, f"f:{key}"), top=False)
        return out
    if isinstance(obj, list):
        keys = k8s.list_keys(schema)
        if keys and all(isinstance(i, dict) for i in obj):
            item_schema = k8s.child(schema, "*")
            for item in obj:
                item_path = (*prefix, _item_key(item, keys))
                out.add((*item_path, "."))
                out |= field_set(item, item_schema, item_path, top=False)
            return out
        if k8s.is_set_list(schema):
            return {(*prefix, "v:" + json.dumps(item, sort_keys=True)) for item in obj} or {prefix}
    out.add(prefix)
    return out


def value_at(obj: Any, path: Path) -> Any:
    """The value at a field path (`_MISSING` if absent)."""
    node = obj
    for element in path:
        if element == ".":
            return node
        if element.startswith("f:") and isinstance(node, dict):
            if element[2:] not in node:
                return _MISSING
            node = node[element[2:]]
        elif element.startswith("k:") and isinstance(node, list):
            wanted = json.loads(element[2:])
            node = next(
                (
                    i
                    for i in node
                    if isinstance(i, dict) and all(i.get(k, _KEY_DEFAULTS.get(k)) == v for k, v in wanted.items())
                ),
                _MISSING,
            )
        elif element.startswith("v:") and isinstance(node, list):
            value = json.loads(element[2:])
            return value if value in node else _MISSING
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def prune(obj: Any, removed: set[Path], *, kept: set[Path]) -> None:
    """Remove the fields an applier stopped applying, as structured-merge-diff's Updater.prune does (remove
    what the applier owned last time, then add back what any manager owns now): a field that is still the
    parent of an owned field stays (`data: {}` applied, then `data: {k: v}`: `data` stays with k). Deepest
    first, and a list item before its key fields (its key finds it)."""
    parents = {path[:i] for path in kept for i in range(1, len(path))}
    for path in sorted(removed, key=lambda p: (-len(p), p[-1] != ".")):
        if path in parents or (path[-1] == "." and path[:-1] in parents):
            continue
        remove_path(obj, path)


def remove_path(obj: Any, path: Path) -> None:
    """Delete the field at `path` (and empty maps left behind are kept, as the apiserver keeps them)."""
    if not path:
        return
    parent = value_at(obj, path[:-1]) if len(path) > 1 else obj
    last = path[-1]
    if last == ".":
        grand = value_at(obj, path[:-2]) if len(path) > 2 else obj
        item = parent
        if isinstance(grand, list) and item in grand:
            grand.remove(item)
        return
    if last.startswith("f:") and isinstance(parent, dict):
        parent.pop(last[2:], None)
    elif last.startswith("v:") and isinstance(parent, list):
        value = json.loads(last[2:])
        if value in parent:
            parent.remove(value)


def to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    """A field set as the nested fieldsV1 map the apiserver stores."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for element in path:
            node = node.setdefault(element, {})
    return root


def from_fields_v1(tree: dict[str, Any], prefix: Path = ()) -> set[Path]:
    """fieldsV1 → a field set."""
    out: set[Path] = set()
    for key, sub in tree.items():
        path = (*prefix, key)
        if sub:
            out |= from_fields_v1(sub, path)
        else:
            out.add(path)
    return out


def apply_merge(live: Any, applied: Any, schema: dict[str, Any] | None) -> Any:
    """Merge an applied configuration into the live object: maps and keyed lists merge, the rest replaces."""
    if isinstance(applied, dict) and isinstance(live, dict):
        out = dict(live)
        for key, value in applied.items():
            out[key] = apply_merge(live.get(key), value, k8s.child(schema, key))
        return out
    if isinstance(applied, list) and isinstance(live, list):
        keys = k8s.list_keys(schema)
        if keys and all(isinstance(i, dict) for i in applied + live):
            item_schema = k8s.child(schema, "*")
            out_list = list(live)
            for item in applied:
                key = _item_key(item, keys)
                index = next((n for n, old in enumerate(out_list) if _item_key(old, keys) == key), None)
                if index is None:
                    out_list.append(copy.deepcopy(item))
                else:
                    out_list[index] = apply_merge(out_list[index], item, item_schema)
            return out_list
        if k8s.is_set_list(schema):
            return list(live) + [copy.deepcopy(i) for i in applied if i not in live]
    return copy.deepcopy(applied)


@dataclass(frozen=True)
class Conflict:
    manager: str
    api_version: str
    path: Path

    @property
    def field(self) -> str:
        return "." + ".".join(e[2:] if e.startswith("f:") else f"[{e[2:]}]" for e in self.path if e != ".")

    def describe(self) -> str:
        return f'conflict with "{self.manager}" using {self.api_version}: {self.field}'


def conflicts(
    live: Any, applied: Any, applied_set: set[Path], owners: dict[tuple[str, str], set[Path]]
) -> list[Conflict]:
    """Leaf fields the applied configuration would change that another manager owns."""
    found = []
    for (manager, api_version), owned in owners.items():
        for path in sorted(owned & applied_set):
            if path[-1] != "." and value_at(live, path) != value_at(applied, path):
                found.append(Conflict(manager, api_version, path))
    return found
