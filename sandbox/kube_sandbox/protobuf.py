"""Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), for every built-in kind served.

The wire format is the `k8s\\x00` magic, then a runtime.Unknown envelope {typeMeta, raw}, where raw is the
object's message from k8s.io/api's generated.proto. Decoded to the same dict the JSON form would give, by the
field table protobuf_types.json (made by sandbox/scripts/protobuf_types.py from k8s.io/api's Go types) and the
apimachinery types written out here; as Go's JSON would, a non-pointer scalar left at its zero value is dropped
when its field is `omitempty` (gogo-protobuf writes such fields always).
"""

from __future__ import annotations

import base64
import datetime
import functools
import importlib.resources
import json
import struct
from typing import Any

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """A body that is not a Kubernetes protobuf message of a known kind."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) for every field of one message."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    value: Any
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


# A message spec: field number → (json name, type, repeated). Types: str, bytes, int, bool, a nested spec,
# ("map", value type).
Spec = dict[int, tuple[str, Any, bool]]

TIME: Spec = {1: ("seconds", int, False), 2: ("nanos", int, False)}
OWNER: Spec = {
    1: ("kind", str, False),
    3: ("name", str, False),
    4: ("uid", str, False),
    5: ("apiVersion", str, False),
    6: ("controller", bool, False),
    7: ("blockOwnerDeletion", bool, False),
}
MANAGED: Spec = {
    1: ("manager", str, False),
    2: ("operation", str, False),
    3: ("apiVersion", str, False),
    4: ("time", TIME, False),
    6: ("fieldsType", str, False),
    7: ("fieldsV1", {1: ("Raw", bytes, False)}, False),
    8: ("subresource", str, False),
}
META: Spec = {
    1: ("name", str, False),
    2: ("generateName", str, False),
    3: ("namespace", str, False),
    4: ("selfLink", str, False),
    5: ("uid", str, False),
    6: ("resourceVersion", str, False),
    7: ("generation", int, False),
    8: ("creationTimestamp", TIME, False),
    9: ("deletionTimestamp", TIME, False),
    10: ("deletionGracePeriodSeconds", int, False),
    11: ("labels", ("map", str), False),
    12: ("annotations", ("map", str), False),
    13: ("ownerReferences", OWNER, True),
    14: ("finalizers", str, True),
    17: ("managedFields", MANAGED, True),
}
# k8s.io/api authorization/v1 and authentication/v1 generated.proto: what `kubectl auth can-i|whoami` and
# `kubectl create token` send
RESOURCE_ATTRIBUTES: Spec = {
    1: ("namespace", str, False),
    2: ("verb", str, False),
    3: ("group", str, False),
    4: ("version", str, False),
    5: ("resource", str, False),
    6: ("subresource", str, False),
    7: ("name", str, False),
}
NON_RESOURCE_ATTRIBUTES: Spec = {1: ("path", str, False), 2: ("verb", str, False)}
KINDS: dict[str, Spec] = {
    "SelfSubjectAccessReview": {
        1: ("metadata", META, False),
        2: (
            "spec",
            {
                1: ("resourceAttributes", RESOURCE_ATTRIBUTES, False),
                2: ("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES, False),
            },
            False,
        ),
    },
    "SelfSubjectRulesReview": {1: ("metadata", META, False), 2: ("spec", {1: ("namespace", str, False)}, False)},
    "SelfSubjectReview": {1: ("metadata", META, False)},
    "TokenRequest": {
        1: ("metadata", META, False),
        2: (
            "spec",
            {
                1: ("audiences", str, True),
                3: (
                    "boundObjectRef",
                    {
                        1: ("kind", str, False),
                        2: ("apiVersion", str, False),
                        3: ("name", str, False),
                        4: ("uid", str, False),
                    },
                    False,
                ),
                4: ("expirationSeconds", int, False),
            },
            False,
        ),
    },
    "Secret": {
        1: ("metadata", META, False),
        2: ("data", ("map", bytes), False),
        3: ("type", str, False),
        4: ("stringData", ("map", str), False),
        5: ("immutable", bool, False),
    },
    "ConfigMap": {
        1: ("metadata", META, False),
        2: ("data", ("map", str), False),
        3: ("binaryData", ("map", bytes), False),
        4: ("immutable", bool, False),
    },
    "Namespace": {
        1: ("metadata", META, False),
        2: ("spec", {1: ("finalizers", str, True)}, False),
        3: ("status", {1: ("phase", str, False)}, False),
    },
    "ServiceAccount": {1: ("metadata", META, False), 3: ("automountServiceAccountToken", bool, False)},
    "DeleteOptions": {
        1: ("gracePeriodSeconds", int, False),
        2: ("preconditions", {1: ("uid", str, False), 2: ("resourceVersion", str, False)}, False),
        3: ("orphanDependents", bool, False),
        4: ("propagationPolicy", str, False),
        5: ("dryRun", str, True),
    },
}


def _scalar(kind: Any, wire: int, value: Any) -> Any:
    if kind is str:
        return bytes(value).decode()
    if kind is bytes:
        return base64.b64encode(bytes(value)).decode()
    if kind is int:
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind is bool:
        return bool(value)
    raise ProtobufError(f"unexpected field type {kind!r} (wire type {wire})")


def _time(message: dict[str, Any]) -> str:
    moment = datetime.datetime.fromtimestamp(message.get("seconds", 0), datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def decode_message(data: bytes, spec: Spec) -> dict[str, Any]:
    """One message as the dict its JSON form would be."""
    out: dict[str, Any] = {}
    for number, wire, value in fields(data):
        if number not in spec:
            continue
        name, kind, repeated = spec[number]
        if isinstance(kind, tuple):  # map<string, T>: entries {1: key, 2: value}
            entry = {n: v for n, _, v in fields(value)}
            out.setdefault(name, {})[bytes(entry.get(1, b"")).decode()] = _scalar(kind[1], 2, entry.get(2, b""))
            continue
        if isinstance(kind, dict):
            item: Any = decode_message(value, kind)
            if kind is TIME:
                item = _time(item)
            elif name == "fieldsV1":
                raw = item.get("Raw")
                item = json.loads(base64.b64decode(raw)) if raw else {}
        else:
            item = _scalar(kind, wire, value)
        if repeated:
            out.setdefault(name, []).append(item)
        else:
            out[name] = item
    return out


LABEL_SELECTOR: Spec = {
    1: ("matchLabels", ("map", str), False),
    2: ("matchExpressions", {1: ("key", str, False), 2: ("operator", str, False), 3: ("values", str, True)}, True),
}
CONDITION: Spec = {
    1: ("type", str, False),
    2: ("status", str, False),
    3: ("observedGeneration", int, False),
    4: ("lastTransitionTime", TIME, False),
    5: ("reason", str, False),
    6: ("message", str, False),
}
META_KINDS: dict[str, Spec] = {
    "ObjectMeta": META,
    "ListMeta": {1: ("selfLink", str, False), 2: ("resourceVersion", str, False), 3: ("continue", str, False)},
    "LabelSelector": LABEL_SELECTOR,
    "LabelSelectorRequirement": LABEL_SELECTOR[2][1],
    "Condition": CONDITION,
    "OwnerReference": OWNER,
}
_ZEROS = ("", 0, False)
_SCALAR_KINDS = {"string": str, "bytes": bytes, "int": int, "bool": bool}


@functools.cache
def _table() -> dict[str, dict[str, list[str]]]:
    types: dict[str, dict[str, list[str]]] = json.loads(
        importlib.resources.files("kube_sandbox").joinpath("protobuf_types.json").read_text()
    )["types"]
    return types


def type_name(api_version: str, kind: str) -> str | None:
    """The table's message for a kind: `apps/v1` Deployment → apps/v1.Deployment, `v1` Pod → core/v1.Pod,
    `rbac.authorization.k8s.io/v1` Role → rbac/v1.Role."""
    group, _, version = api_version.rpartition("/")
    name = f"{group.split('.')[0] or 'core'}/{version}.{kind}"
    return name if name in _table() else None


def _go_duration(nanos: int) -> str:
    """time.Duration.String(), for the whole seconds and minutes metav1.Duration fields hold."""
    if nanos == 0:
        return "0s"
    sign, nanos = ("-", -nanos) if nanos < 0 else ("", nanos)
    hours, rest = divmod(nanos, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = rest / 10**9
    text = f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _typed_value(kind: str, wire: int, value: Any, field: str) -> Any:  # noqa: PLR0911, PLR0912 - one branch a kind
    scalar = _SCALAR_KINDS.get(kind)
    if scalar is not None:
        return _scalar(scalar, wire, value)
    if kind == "double":
        return struct.unpack("<d", bytes(value))[0]
    if kind == "float":
        return struct.unpack("<f", bytes(value))[0]
    parts = {n: v for n, _, v in fields(value)} if wire == 2 else {}
    if kind == "quantity":
        return bytes(parts.get(1, b"")).decode()
    if kind == "intorstring":  # {type: 0 int, 1 string; intVal; strVal}
        return bytes(parts.get(3, b"")).decode() if parts.get(1) == 1 else _scalar(int, 0, parts.get(2, 0))
    if kind in ("time", "microtime"):
        moment = datetime.datetime.fromtimestamp(parts.get(1, 0), datetime.UTC)
        if kind == "time":
            return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parts.get(2, 0) // 1000:06d}Z"
    if kind == "duration":
        return _go_duration(_scalar(int, 0, parts.get(1, 0)))
    if kind == "rawext":
        raw = bytes(parts.get(1, b""))
        return json.loads(raw) if raw else None
    if kind.startswith("meta:"):
        if kind == "meta:DeleteOptions":
            return decode_message(value, KINDS["DeleteOptions"])
        return decode_message(value, META_KINDS[kind[len("meta:") :]])
    if kind.startswith("msg:"):
        return decode_typed(bytes(value), kind[len("msg:") :])
    if kind.startswith("wrapped:"):  # a named slice (ExtraValue): {repeated items = 1}, a plain array in JSON
        inner = kind[len("wrapped:") :]
        return [_typed_value(inner, w, v, field) for n, w, v in fields(value) if n == 1]
    raise ProtobufError(f"the field {field!r} ({kind}) is not decoded by the sandbox; send JSON")


def decode_typed(data: bytes, name: str) -> dict[str, Any]:
    """One message of the table's type `name` as the dict its JSON form would be."""
    spec = _table()[name]
    out: dict[str, Any] = {}
    for number, wire, value in fields(data):
        entry = spec.get(str(number))
        if entry is None:
            continue
        field, kind, flags = entry
        if kind.startswith("map:"):  # map<string, T>: entries {1: key, 2: value}
            pair = {n: (w, v) for n, w, v in fields(value)}
            key = bytes(pair.get(1, (2, b""))[1]).decode()
            wire_value = pair.get(2, (2, b""))
            out.setdefault(field, {})[key] = _typed_value(kind[len("map:") :], wire_value[0], wire_value[1], field)
            continue
        if "r" in flags:
            items = out.setdefault(field, [])
            if wire == 2 and kind in ("int", "bool"):
                pos, packed = 0, bytes(value)
                while pos < len(packed):
                    number_, pos = _varint(packed, pos)
                    items.append(_scalar(int if kind == "int" else bool, 0, number_))
            else:
                items.append(_typed_value(kind, wire, value, field))
            continue
        item = _typed_value(kind, wire, value, field)
        if "i" in flags:
            out.update(item)
        else:
            out[field] = item
    for field, kind, flags in spec.values():  # Go's JSON: `omitempty` drops a non-pointer scalar's zero value
        scalar = kind in _SCALAR_KINDS and "p" not in flags and "r" not in flags
        if scalar and "o" in flags and field in out and out[field] in _ZEROS:
            del out[field]
    return out


def decode_request(body: bytes) -> dict[str, Any]:
    """A protobuf request body → the object dict (apiVersion, kind and fields)."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf magic prefix")
    envelope = {n: v for n, _, v in fields(body[len(MAGIC) :])}
    type_meta = {n: bytes(v).decode() for n, _, v in fields(envelope.get(1, b""))}
    api_version, kind = type_meta.get(1, ""), type_meta.get(2, "")
    name = type_name(api_version, kind) if kind != "DeleteOptions" else None
    if name is not None:
        obj = decode_typed(bytes(envelope.get(2, b"")), name)
    elif kind in KINDS:
        obj = decode_message(envelope.get(2, b""), KINDS[kind])
    else:
        raise ProtobufError(f"protobuf bodies of kind {kind!r} are not supported by the sandbox; send JSON")
    if kind != "DeleteOptions" or api_version:
        obj = {"apiVersion": api_version, "kind": kind, **obj}
    return obj
