"""Values layering exactly as Helm does it (pkg/cli/values and pkg/chart/common/util/coalesce).

Helm first merges the user's layers (each values file in order, then every --set) into one map: maps
merge deeply, anything else, lists and nulls included, replaces. It then coalesces that map over the
chart's values.yaml: a null the user set deletes the chart's key. pyhelm3's own merge concatenates
lists, so it is not used.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from deployer.errors import DeployError

RESERVED_KEY = "deployer"
_INT64 = (-(2**63), 2**63 - 1)
_MAX_SET_INDEX = 65536


def merge_maps(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's mergeMaps: `override` wins; two maps merge deeply; lists and nulls replace."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_maps(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def coalesce(user: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Helm's CoalesceValues: chart `defaults` fill what `user` lacks; a user null deletes the default."""
    out = copy.deepcopy(user)
    for key, default in defaults.items():
        if key not in out:
            out[key] = copy.deepcopy(default)
        elif out[key] is None:
            del out[key]
        elif isinstance(out[key], dict) and isinstance(default, dict):
            out[key] = coalesce(out[key], default)
    return out


@dataclass(frozen=True)
class LayeredValues:
    """`user` is what Helm is given (--values -); `final` is what templates see."""

    user: dict[str, Any]
    final: dict[str, Any]


def layer_values(
    *,
    defaults: dict[str, Any],
    files: list[tuple[str, dict[str, Any]]],
    sets: list[str],
    injected: dict[str, Any],
) -> LayeredValues:
    """Chart defaults, then each (name, values) file in order, then each --set, then the injected values."""
    user: dict[str, Any] = {}
    for name, data in files:
        if RESERVED_KEY in data:
            raise DeployError(f"key {RESERVED_KEY!r} is reserved for the values the deployer injects", where=name)
        user = merge_maps(user, data)
    for expr in sets:
        apply_set(user, expr)
        if RESERVED_KEY in user:
            raise DeployError(
                f"key {RESERVED_KEY!r} is reserved for the values the deployer injects", where=f"--set {expr}"
            )
    user[RESERVED_KEY] = copy.deepcopy(injected)
    return LayeredValues(user=user, final=coalesce(user, defaults))


# --- --set, as Helm's strvals parses it --------------------------------------------------------------


def typed_value(text: str) -> Any:
    """Helm's --set typing: true/false/null, base-10 int64 without a leading zero, else a string."""
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    if lowered == "null":
        return None
    if text == "0":
        return 0
    if text and text[0] != "0" and re.fullmatch(r"[+-]?[0-9]+", text):
        number = int(text)
        if _INT64[0] <= number <= _INT64[1]:
            return number
    return text


def _split_unescaped(text: str, sep: str, *, nested: bool = False) -> list[str]:
    """Split on `sep` unless backslash-escaped (or, with `nested`, inside braces); escapes are kept."""
    parts, current, depth, i = [], "", 0, 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current += text[i : i + 2]
            i += 2
            continue
        if nested:
            depth += {"{": 1, "}": -1}.get(char, 0)
        if char == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
        i += 1
    parts.append(current)
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _parse_rhs(raw: str, *, expr: str) -> Any:
    if raw.startswith("{") and raw.endswith("}"):
        inner = raw[1:-1]
        if "{" in inner or "}" in inner:
            raise DeployError("nested lists are not supported in --set", where=f"--set {expr}")
        # Helm reads "{}" as a list holding one empty string, and so do we.
        return [typed_value(_unescape(item)) for item in _split_unescaped(inner, ",")]
    return typed_value(_unescape(raw))


def _parse_key(key: str, *, expr: str) -> list[str | int]:
    path: list[str | int] = []
    for segment in _split_unescaped(key, "."):
        match = re.fullmatch(r"((?:\\.|[^\[\]])*)((?:\[\d+\])*)", segment)
        if match is None or match.group(1) == "":
            raise DeployError(f"key {key!r} is not a dotted path such as image.tag or hosts[0]", where=f"--set {expr}")
        path.append(_unescape(match.group(1)))
        for index in re.findall(r"\[(\d+)\]", match.group(2)):
            if int(index) > _MAX_SET_INDEX:
                raise DeployError(f"list index {index} is too large", where=f"--set {expr}")
            path.append(int(index))
    return path


def _assign(target: Any, *, path: list[str | int], value: Any, expr: str) -> Any:
    """Set `value` at `path` inside `target` (a dict or list), creating maps and lists as Helm does."""
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(target) if isinstance(target, list) else []
        items.extend([None] * (head + 1 - len(items)))
        items[head] = _assign(items[head], path=rest, value=value, expr=expr) if rest else value
        return items
    if target is None:
        target = {}
    if not isinstance(target, dict):
        raise DeployError(f"cannot set {head!r} inside a {type(target).__name__} value", where=f"--set {expr}")
    target[head] = _assign(target.get(head), path=rest, value=value, expr=expr) if rest else value
    return target


def apply_set(values: dict[str, Any], expr: str) -> None:
    """Apply one --set expression (`a.b=1`, `list[0]=x`, `a={x,y}`, `a=1,b=2`) to `values` in place."""
    for assignment in _split_unescaped(expr, ",", nested=True):  # a=1,b={x,y}
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise DeployError(
                "expected KEY=VALUE, such as replicas=3 or image.pullPolicy=Always", where=f"--set {expr}"
            )
        path = _parse_key(key, expr=expr)
        _assign(values, path=path, value=_parse_rhs(raw, expr=expr), expr=expr)
