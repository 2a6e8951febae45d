"""Every rendered object against the Kubernetes schema, before anything touches a cluster.

The schemas are kubernetes-validate's strict ones (unknown fields are errors, as with kubectl's default
--validate=strict) for one pinned Kubernetes version. Names and labels get the apiserver's own checks,
which the schema does not express.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match
from referencing import Registry, Resource

from deployer.errors import DeployError
from deployer.render.manifests import RenderedObject

# helm v4.1.4 renders with Kubernetes 1.35 capabilities; validate against the same version.
KUBERNETES_VERSION = "1.35"

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME_KINDS = frozenset({"Namespace"})
_DNS1035_KINDS = frozenset({"Service"})


def _schema_dir(version: str) -> Any:
    return importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"


@functools.cache
def _registry(version: str) -> Registry[Any]:
    definitions = json.loads((_schema_dir(version) / "_definitions.json").read_text(encoding="utf-8"))
    return Resource.from_contents(definitions) @ Registry()


@functools.cache
def _validator(version: str, kind: str, api_version: str) -> jsonschema.protocols.Validator | None:
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = _schema_dir(version) / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text(encoding="utf-8"))
    registry = Resource.from_contents(schema) @ _registry(version)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def has_schema(kind: str, api_version: str, *, version: str = KUBERNETES_VERSION) -> bool:
    """Whether the pinned schema knows this kind (custom resources such as VirtualService do not)."""
    return _validator(version, kind, api_version) is not None


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(object)"


def _check_metadata(item: RenderedObject) -> None:
    meta = item.obj["metadata"]
    name = item.name
    pattern, rule = (
        (_DNS1035_LABEL, "a DNS-1035 label")
        if item.kind in _DNS1035_KINDS
        else (_DNS1123_LABEL, "a DNS-1123 label")
        if item.kind in _LABEL_NAME_KINDS
        else (_DNS1123_SUBDOMAIN, "a DNS-1123 subdomain")
    )
    limit = 63 if item.kind in _DNS1035_KINDS | _LABEL_NAME_KINDS else 253
    if len(name) > limit or not pattern.match(name):
        raise DeployError(
            f"{item.ref}: metadata.name {name!r} must be {rule} of at most {limit} characters",
            where=item.source,
        )
    for field in ("labels",):
        for key, value in (meta.get(field) or {}).items():
            _check_label(item, field=f"metadata.{field}", key=key, value=value)


def _check_label(item: RenderedObject, *, field: str, key: Any, value: Any) -> None:
    prefix, _, name = str(key).rpartition("/")
    if (
        (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)))
        or len(name) > 63
        or not _LABEL_NAME.match(name)
    ):
        raise DeployError(f"{item.ref}: {field} key {key!r} is not a valid label name", where=item.source)
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise DeployError(
            f"{item.ref}: {field}.{key} value {value!r} is not a valid label value "
            "(a string of at most 63 characters: letters, digits, '-', '_', '.')",
            where=item.source,
        )


def validate_object(item: RenderedObject, *, version: str = KUBERNETES_VERSION) -> bool:
    """Raise DeployError for the first problem (kind/name, field path, template file); False if no schema."""
    _check_metadata(item)
    validator = _validator(version, item.kind, item.obj["apiVersion"])
    if validator is None:
        return False
    error = best_match(validator.iter_errors(item.obj))
    if error is not None:
        message = error.message
        if error.validator == "type":
            wanted = [
                t
                for t in ([error.validator_value] if isinstance(error.validator_value, str) else error.validator_value)
                if t != "null"
            ]
            message = f"{error.instance!r} is not of type {' or '.join(wanted)}"
        elif error.validator == "additionalProperties":
            message = message.replace("Additional properties are not allowed", "unknown field")
        raise DeployError(f"{item.ref}: {_path(error.absolute_path)}: {message}", where=item.source)
    return True


def validate_objects(items: list[RenderedObject], *, version: str = KUBERNETES_VERSION) -> list[str]:
    """Validate all; return `Kind/name` of objects that had no schema (checked for metadata only)."""
    return [item.ref for item in items if not validate_object(item, version=version)]
