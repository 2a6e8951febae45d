"""The Kubernetes OpenAPI definitions the sandbox serves, validates against and merges lists by.

They come from kubernetes-validate's bundle (the apiserver's own OpenAPI, converted to JSON Schema), which
keeps the x-kubernetes-* extensions: group-version-kind, list types and keys, patch strategies.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import re
from typing import Any

import jsonschema
from referencing import Registry, Resource

KUBERNETES_VERSION = "1.35"
_REF = re.compile(r"^(?:/api/_definitions\.json)?#/\$defs/(.+)$")


def _bundle(strict: bool) -> Any:
    suffix = "-strict" if strict else ""
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return root / f"v{KUBERNETES_VERSION}.0-local{suffix}"


@functools.cache
def definitions() -> dict[str, Any]:
    """All definitions by name, e.g. `io.k8s.api.apps.v1.Deployment`."""
    data: dict[str, Any] = json.loads((_bundle(False) / "_definitions.json").read_text(encoding="utf-8"))["$defs"]
    return data


@functools.cache
def definition_for(group: str, version: str, kind: str) -> str | None:
    """The definition name of a built-in kind."""
    for name, schema in definitions().items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            if (gvk.get("group", ""), gvk["version"], gvk["kind"]) == (group, version, kind):
                return name
    return None


@functools.cache
def _strict_registry() -> Registry[Any]:
    defs = json.loads((_bundle(True) / "_definitions.json").read_text(encoding="utf-8"))
    return Resource.from_contents(defs) @ Registry()


@functools.cache
def strict_validator(group: str, version: str, kind: str) -> Any:
    """A strict (unknown fields are errors) validator for a built-in kind, or None."""
    group_version = f"{group.split('.', 1)[0]}-{version}" if group else version
    path = _bundle(True) / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema, registry=Resource.from_contents(schema) @ _strict_registry())


def resolve(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """Follow `$ref`s to a definition."""
    while schema is not None and "$ref" in schema:
        match = _REF.match(schema["$ref"])
        schema = definitions().get(match.group(1)) if match else None
    return schema


def child(schema: dict[str, Any] | None, key: str | int) -> dict[str, Any] | None:
    """The schema of a map value or list item below `schema`."""
    schema = resolve(schema)
    if schema is None:
        return None
    if isinstance(key, int) or key == "*":
        return resolve(schema.get("items"))
    props = schema.get("properties", {})
    if key in props:
        return resolve(props[key])
    extra = schema.get("additionalProperties")
    return resolve(extra) if isinstance(extra, dict) else None


def list_keys(schema: dict[str, Any] | None) -> list[str] | None:
    """Merge keys of a list field: its list-map keys, else its patch merge key; None for atomic lists."""
    if schema is None:
        return None
    if schema.get("x-kubernetes-list-type") == "map":
        return list(schema.get("x-kubernetes-list-map-keys", []))
    if "merge" in str(schema.get("x-kubernetes-patch-strategy", "")) and schema.get("x-kubernetes-patch-merge-key"):
        return [schema["x-kubernetes-patch-merge-key"]]
    return None


def is_set_list(schema: dict[str, Any] | None) -> bool:
    """A list of scalars merged as a set (e.g. finalizers)."""
    return schema is not None and (
        schema.get("x-kubernetes-list-type") == "set"
        or (
            "merge" in str(schema.get("x-kubernetes-patch-strategy", ""))
            and "x-kubernetes-patch-merge-key" not in schema
        )
    )


def _openapi_schema(node: Any) -> Any:
    """JSON Schema (type arrays with null, $defs refs) → OpenAPI 3.0 (nullable, components refs)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                match = _REF.match(value)
                out[key] = f"#/components/schemas/{match.group(1)}" if match else value
            elif key == "type" and isinstance(value, list):
                types = [t for t in value if t != "null"]
                out[key] = types[0] if len(types) == 1 else types
            else:
                out[key] = _openapi_schema(value)
        return out
    if isinstance(node, list):
        return [_openapi_schema(item) for item in node]
    return node


@functools.cache
def openapi_components() -> dict[str, Any]:
    """Every definition in OpenAPI 3.0 form."""
    return {name: _openapi_schema(schema) for name, schema in definitions().items()}


@functools.cache
def swagger_document() -> dict[str, Any]:
    """OpenAPI v2 (swagger 2.0) in JSON, as /openapi/v2 serves it to clients that accept JSON."""
    text = json.dumps(openapi_components()).replace('"#/components/schemas/', '"#/definitions/')
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": f"v{KUBERNETES_VERSION}.0"},
        "paths": {},
        "definitions": json.loads(text),
    }


def openapi_document(*, title: str, paths: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAPI v3 document for one group-version, as /openapi/v3/apis/GROUP/VERSION serves it."""
    schemas = copy.copy(openapi_components())
    schemas.update(extra or {})
    return {
        "openapi": "3.0.0",
        "info": {"title": title, "version": f"v{KUBERNETES_VERSION}.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
