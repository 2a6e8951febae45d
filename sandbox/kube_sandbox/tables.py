"""Table responses for custom resources (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), as the
apiextensions-apiserver's table convertor makes them (pkg/registry/customresource/tableconvertor): a Name column,
then the version's additionalPrinterColumns (an Age column where it declares none), each cell read with the
column's JSONPath; rows carry the object's metadata (PartialObjectMetadata). This is what `kubectl get` prints.
Built-in kinds are answered as plain lists, which kubectl prints as NAME and AGE.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name automatically. Name is "
    "primarily intended for creation idempotence and configuration definition. Cannot be updated.",
    "priority": 0,
}
DEFAULT_COLUMNS = [
    {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
        "description": "CreationTimestamp is a timestamp representing the server time when this object was created.",
    }
]


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def _value(obj: Any, path: str) -> Any:
    """A simple JSONPath (`.spec.hosts`, `.status.conditions[0].type`), as the convertor supports; None if absent."""
    current = obj
    for part in re.findall(r"\.([^.\[\]]+)|\[(\d+)\]", path):
        key, index = part
        if key:
            current = current.get(key) if isinstance(current, dict) else None
        else:
            current = current[int(index)] if isinstance(current, list) and int(index) < len(current) else None
        if current is None:
            return None
    return current


def human_duration(seconds: float) -> str:  # noqa: PLR0911 - the function it follows, step by step
    """k8s.io/apimachinery/pkg/util/duration HumanDuration: how `kubectl get` shows an age."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        return f"{hours // 24 // 365}y{rest}d" if rest else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _cell(column: dict[str, Any], obj: dict[str, Any]) -> Any:
    """The convertor's cell: a string column prints what jsonpath prints (a string as it is, anything else as
    JSON); integer, number and boolean columns keep a value of their type; a date is an age (cellForJSONValue)."""
    value = _value(obj, str(column.get("jsonPath", "")))
    kind = column.get("type", "string")
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if kind == "date":
        try:
            moment = datetime.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        except ValueError:
            return "<invalid>"
        return human_duration((datetime.datetime.now(datetime.UTC) - moment).total_seconds())
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    numeric = (int,) if kind == "integer" else (int, float) if kind == "number" else ()
    return value if numeric and isinstance(value, numeric) and not isinstance(value, bool) else None


def table(
    objects: list[dict[str, Any]], columns: list[dict[str, Any]], *, resource_version: str, cont: str = ""
) -> dict[str, Any]:
    used = columns or DEFAULT_COLUMNS
    definitions = [NAME_COLUMN] + [
        {
            "name": c["name"],
            "type": c.get("type", "string"),
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": int(c.get("priority", 0)),
        }
        for c in used
    ]
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if cont:
        metadata["continue"] = cont
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": [
            {
                "cells": [obj["metadata"]["name"], *(_cell(c, obj) for c in used)],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            }
            for obj in objects
        ],
    }
