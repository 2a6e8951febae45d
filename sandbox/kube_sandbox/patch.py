"""The apiserver's patch types: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch.

Strategic merge patch merges lists by the key the schema names (containers by name, ports by containerPort,
volumeMounts by mountPath, ...) and understands the directives kubectl sends: `$patch`, `$retainKeys`,
`$setElementOrder/<field>` and `$deleteFromPrimitiveList/<field>`.
"""

from __future__ import annotations

import copy
from typing import Any

from kube_sandbox import schema as k8s


class PatchError(ValueError):
    """The patch cannot be applied (a bad pointer, a failed test, a malformed directive)."""


# --- JSON patch ------------------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"path /{'/'.join(parts)} does not exist")
    return node, parts[-1]


def _get(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return doc
    parent, last = _parent(doc, parts)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise PatchError(f"path /{'/'.join(parts)} does not exist")


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent, last = _parent(doc, parts)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent):
            raise PatchError(f"index {last} is out of range")
        parent.insert(index, value)
    else:
        raise PatchError(f"cannot add below a {type(parent).__name__}")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    parent, last = _parent(doc, parts)
    _get(doc, parts)
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 patch to a copy of `doc`."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid operation {op!r}")
        parts = _pointer(op["path"])
        kind = op["op"]
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, parts)
        elif kind == "replace":
            _get(doc, parts)
            doc = _add(_remove(doc, parts), parts, copy.deepcopy(op.get("value"))) if parts else op.get("value")
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = copy.deepcopy(_get(doc, source))
            if kind == "move":
                doc = _remove(doc, source)
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _get(doc, parts) != op.get("value"):
                raise PatchError(f"test failed at {op['path']}")
        else:
            raise PatchError(f"unknown operation {kind!r}")
    return doc


# --- JSON merge patch ------------------------------------------------------------------------------------


def merge_patch(doc: Any, patch: Any) -> Any:
    """RFC 7386: maps merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# --- strategic merge patch -------------------------------------------------------------------------------


def strategic_merge_patch(doc: Any, patch: Any, schema: dict[str, Any] | None) -> Any:
    """Kubernetes' strategic merge patch of `doc` by `patch`, lists merged as `schema` says."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be an object")
    return _smp_map(copy.deepcopy(doc) if isinstance(doc, dict) else {}, patch, schema)


def _smp_map(doc: dict[str, Any], patch: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            doc[field] = [item for item in doc.get(field) or [] if item not in value]
        elif key.startswith(("$setElementOrder/", "$patch", "$retainKeys")):
            continue
        elif value is None:
            doc.pop(key, None)
        else:
            doc[key] = _smp_value(doc.get(key), value, k8s.child(schema, key))
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") and isinstance(doc.get(key.split("/", 1)[1]), list):
            field = key.split("/", 1)[1]
            doc[field] = _order(doc[field], value, k8s.list_keys(k8s.child(schema, field)))
    if isinstance(retain, list):
        doc = {k: v for k, v in doc.items() if k in retain}
    return doc


def _smp_value(current: Any, value: Any, schema: dict[str, Any] | None) -> Any:
    if isinstance(value, dict):
        if value.get("$patch") == "delete":
            return None
        return _smp_map(current if isinstance(current, dict) else {}, value, schema)
    if isinstance(value, list):
        return _smp_list(current if isinstance(current, list) else [], value, schema)
    return copy.deepcopy(value)


def _smp_list(current: list[Any], patch: list[Any], schema: dict[str, Any] | None) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and i.get("$patch") == "replace")]
    keys = k8s.list_keys(schema)
    if keys and all(isinstance(item, dict) for item in patch):
        out = copy.deepcopy(current)
        item_schema = k8s.child(schema, "*")
        for item in patch:
            match = next((i for i, old in enumerate(out) if isinstance(old, dict) and _same_key(old, item, keys)), None)
            if item.get("$patch") == "delete":
                if match is not None:
                    del out[match]
            elif match is None:
                out.append(_smp_map({}, item, item_schema))
            else:
                out[match] = _smp_map(out[match], item, item_schema)
        return out
    if k8s.is_set_list(schema):
        return copy.deepcopy(current) + [copy.deepcopy(i) for i in patch if i not in current]
    return copy.deepcopy(patch)


def _same_key(old: dict[str, Any], new: dict[str, Any], keys: list[str]) -> bool:
    present = [k for k in keys if k in new]
    return bool(present) and all(old.get(k) == new.get(k) for k in present)


def _order(items: list[Any], order: list[Any], keys: list[str] | None) -> list[Any]:
    def rank(item: Any) -> int:
        for index, wanted in enumerate(order):
            if keys and isinstance(item, dict) and isinstance(wanted, dict) and _same_key(item, wanted, keys):
                return index
            if item == wanted:
                return index
        return len(order)

    return sorted(items, key=rank)
