"""Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!key`) and field selectors, as the apiserver reads them."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Matcher = Callable[[dict[str, Any]], bool]

_FIELDS_BY_KIND = {
    "Pod": {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
        "spec.hostNetwork",
    },
    "Event": {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    "Secret": {"type"},
    "Namespace": {"status.phase"},
    "ReplicaSet": {"status.replicas"},
    "Job": {"status.successful"},
    "Node": {"spec.unschedulable"},
}


class SelectorError(ValueError):
    """A selector the apiserver would refuse (400)."""


def _split_top(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


_LABEL_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"


def _requirement(text: str) -> Matcher:
    match = re.fullmatch(rf"({_LABEL_KEY})\s+(in|notin)\s+\((.*)\)", text)
    if match:
        key, op, values = match.group(1), match.group(3), {v.strip() for v in match.group(4).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    match = re.fullmatch(rf"({_LABEL_KEY})\s*(==|=|!=)\s*(.*)", text)
    if match:
        key, op, value = match.group(1), match.group(3), match.group(4).strip()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    match = re.fullmatch(rf"(!?)\s*({_LABEL_KEY})", text)
    if match:
        negate, key = match.group(1) == "!", match.group(2)
        return lambda labels: (key in labels) != negate
    raise SelectorError(f"unable to parse requirement: {text!r}")


def label_matcher(selector: str | None) -> Matcher:
    """A function of an object's labels telling whether the selector matches."""
    if not selector:
        return lambda labels: True
    requirements = [_requirement(part) for part in _split_top(selector)]
    return lambda labels: all(r(labels) for r in requirements)


def _label_equals(key: str, value: Any) -> Matcher:
    return lambda labels: labels.get(key) == value


def _expression(key: str, operator: str, values: set[str]) -> Matcher:
    if operator == "In":
        return lambda labels: labels.get(key) in values
    if operator == "NotIn":
        return lambda labels: labels.get(key) not in values
    if operator == "Exists":
        return lambda labels: key in labels
    if operator == "DoesNotExist":
        return lambda labels: key not in labels
    return lambda labels: False


def match_labels_selector(selector: dict[str, Any] | None) -> Matcher:
    """A LabelSelector object (matchLabels, matchExpressions) as a matcher; an empty one matches all."""
    if not selector:
        return lambda labels: True
    checks = [_label_equals(k, v) for k, v in (selector.get("matchLabels") or {}).items()]
    checks += [
        _expression(str(e.get("key")), str(e.get("operator")), set(e.get("values") or []))
        for e in selector.get("matchExpressions") or []
    ]
    return lambda labels: all(c(labels) for c in checks)


def _field(obj: dict[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, bool):
        return "true" if node else "false"
    return "" if node is None else str(node)


def field_matcher(selector: str | None, kind: str) -> Callable[[dict[str, Any]], bool]:
    """A function of an object telling whether the field selector matches; unsupported fields are refused."""
    if not selector:
        return lambda obj: True
    allowed = {"metadata.name", "metadata.namespace"} | _FIELDS_BY_KIND.get(kind, set())
    checks: list[Callable[[dict[str, Any]], bool]] = []
    for part in _split_top(selector):
        match = re.fullmatch(r"([A-Za-z0-9.]+)\s*(==|=|!=)\s*(.*)", part)
        if not match:
            raise SelectorError(f"invalid selector: {part!r}; can't understand {part!r}")
        path, op, value = match.groups()
        if path not in allowed:
            raise SelectorError(f"field label not supported: {path}")
        checks.append(_field_check(path, value, negate=op == "!="))
    return lambda obj: all(c(obj) for c in checks)


def _field_check(path: str, value: str, *, negate: bool) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (_field(obj, path) == value) != negate
