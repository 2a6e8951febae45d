"""Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), for the types helm and kubectl send.

The wire format is the `k8s\\x00` magic, then a runtime.Unknown envelope {typeMeta, raw}, where raw is the
object's message from k8s.io/api's generated.proto. Decoded to the same dict the JSON form would give.
"""

from __future__ import annotations

import base64
import datetime
import json
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


def decode_request(body: bytes) -> dict[str, Any]:
    """A protobuf request body → the object dict (apiVersion, kind and fields)."""
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf magic prefix")
    envelope = {n: v for n, _, v in fields(body[len(MAGIC) :])}
    type_meta = {n: bytes(v).decode() for n, _, v in fields(envelope.get(1, b""))}
    api_version, kind = type_meta.get(1, ""), type_meta.get(2, "")
    spec = KINDS.get(kind)
    if spec is None:
        raise ProtobufError(f"protobuf bodies of kind {kind!r} are not supported by the sandbox; send JSON")
    obj = decode_message(envelope.get(2, b""), spec)
    if kind != "DeleteOptions" or api_version:
        obj = {"apiVersion": api_version, "kind": kind, **obj}
    return obj
