"""Admission as kube-apiserver does it: decoding (types, unknown fields), defaulting and validation.

Type mismatches and, with fieldValidation=Strict, unknown fields are 400 BadRequest (decoding errors);
unknown fields are otherwise dropped (with a warning under Warn, the default); semantic problems are 422.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

from kube_sandbox import schema as k8s
from kube_sandbox.errors import bad_request, invalid
from kube_sandbox.resources import ResourceType
from kube_sandbox.selectors import match_labels_selector

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i?|[mkMGTPE]|[munk]?)?$")
_JSON_TYPE = {
    "integer": "number",
    "number": "number",
    "string": "string",
    "boolean": "bool",
    "object": "object",
    "array": "array",
}


@dataclass
class Decoded:
    """Problems found while decoding one object against its schema."""

    unknown: list[str] = field(default_factory=list)
    type_errors: list[tuple[str, str, Any]] = field(default_factory=list)  # (path, wanted type, value)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _types(schema: dict[str, Any]) -> list[str]:
    kinds = schema.get("type")
    if kinds is None and "oneOf" in schema:
        return [t for option in schema["oneOf"] for t in _types(option)]
    if isinstance(kinds, str):
        return [kinds]
    return [t for t in (kinds or []) if t != "null"]


@dataclass(frozen=True)
class _Node:
    """What decoding needs of one schema node, worked out once (schemas do not change once loaded)."""

    wanted: tuple[str, ...]
    json_types: frozenset[str]
    integer_only: bool
    preserve: bool
    props: dict[str, Any] | None
    extra: Any
    items: Any


_NODES: dict[int, tuple[dict[str, Any], _Node | None]] = {}  # id(schema) -> (schema, node); holding the schema
# keeps its id from being reused by another dict


def _node(schema: dict[str, Any] | None) -> _Node | None:
    if schema is None:
        return None
    hit = _NODES.get(id(schema))
    if hit is not None and hit[0] is schema:
        return hit[1]
    resolved = k8s.resolve(schema)
    node = None
    if resolved is not None:
        wanted = tuple(_types(resolved))
        node = _Node(
            wanted,
            frozenset(_JSON_TYPE.get(t, t) for t in wanted),
            "integer" in wanted and "number" not in wanted,
            bool(resolved.get("x-kubernetes-preserve-unknown-fields")),
            resolved.get("properties"),
            resolved.get("additionalProperties"),
            resolved.get("items"),
        )
    _NODES[id(schema)] = (schema, node)
    return node


Path = tuple[Any, str | int] | None  # (parent, key or index): joined into "a.b[0].c" only where one is reported


def _joined(path: Path) -> str:
    parts: list[str] = []
    at: Path = path
    while at is not None:
        at, key = at
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return "".join(reversed(parts)).removeprefix(".")


def decode(
    value: Any,
    schema: dict[str, Any] | None,
    path: Path,
    out: Decoded,
    *,
    prune: bool,
    defaults: bool = False,
) -> Any:
    """Check types and find unknown fields below `path`; with `prune`, return the value without them; with
    `defaults` (a CRD's structural schema), fill each missing property that declares a default, as the
    apiserver's structural defaulting does after pruning (apiextensions-apiserver pkg/apiserver/schema/defaulting
    algorithm.go: a default applies where the property is absent, and is itself defaulted below)."""
    node = _node(schema)
    if node is None or value is None:
        return value
    if node.wanted and _json_type(value) not in node.json_types:
        out.type_errors.append((_joined(path), node.wanted[0], value))
        return value
    if node.integer_only and isinstance(value, float) and not value.is_integer():
        out.type_errors.append((_joined(path), "integer", value))
    if isinstance(value, dict):
        return value if node.preserve else _decode_object(value, node, path, out, prune=prune, defaults=defaults)
    if isinstance(value, list):
        items = node.items
        return [decode(item, items, (path, i), out, prune=prune, defaults=defaults) for i, item in enumerate(value)]
    return value


def _decode_object(
    value: dict[str, Any], node: _Node, path: Path, out: Decoded, *, prune: bool, defaults: bool
) -> dict[str, Any]:
    props, extra = node.props, node.extra
    result = {}
    for key, item in value.items():
        if props is not None and key in props:
            result[key] = decode(item, props[key], (path, key), out, prune=prune, defaults=defaults)
        elif isinstance(extra, dict):
            result[key] = decode(item, extra, (path, key), out, prune=prune, defaults=defaults)
        elif props is None and extra is None:
            result[key] = item
        else:
            out.unknown.append(_joined((path, key)))
            if not prune:
                result[key] = item
    if defaults and props:
        _default(result, props, path, out, prune=prune)
    return result


def _default(result: dict[str, Any], props: dict[str, Any], path: Path, out: Decoded, *, prune: bool) -> None:
    """Each missing property that declares a default gets it, itself decoded and defaulted."""
    for key, sub_schema in props.items():
        default = (k8s.resolve(sub_schema) or {}).get("default")
        if key not in result and default is not None:
            result[key] = decode(copy.deepcopy(default), sub_schema, (path, key), out, prune=prune, defaults=True)


def _go_type(wanted: str) -> str:
    return {
        "integer": "int32",
        "number": "float64",
        "string": "string",
        "boolean": "bool",
        "object": "object",
        "array": "slice",
    }.get(wanted, wanted)


def admit_decoding(
    rt: ResourceType, version: str, obj: dict[str, Any], *, mode: str
) -> tuple[dict[str, Any], list[str]]:
    """Decode `obj` as the apiserver does; return the (pruned) object and any warnings."""
    if rt.builtin:
        definition = k8s.definition_for(rt.group, version, rt.kind)
        schema = k8s.definitions().get(definition) if definition else None
    else:
        schema = rt.crd_schemas.get(version)
    result = Decoded()
    pruned = decode(obj, schema, None, result, prune=mode != "Strict", defaults=not rt.builtin)
    result.unknown = [u for u in result.unknown if u not in ("apiVersion", "kind")]
    if result.type_errors:
        path, wanted, value = result.type_errors[0]
        if rt.builtin:
            raise bad_request(
                f'{rt.kind} in version "{version}" cannot be handled as a {rt.kind}: json: cannot unmarshal '
                f"{_json_type(value)} into Go struct field .{path} of type {_go_type(wanted)}"
            )
        raise invalid(
            rt.kind,
            obj.get("metadata", {}).get("name", ""),
            rt.group,
            [
                (
                    "FieldValueTypeInvalid",
                    path,
                    f'Invalid value: "{_json_type(value)}": {path} in body must be of type '
                    f'{wanted}: "{_json_type(value)}"',
                )
            ],
        )
    if result.unknown and mode == "Strict":
        fields = ", ".join(f'unknown field "{u}"' for u in result.unknown)
        raise bad_request(f"strict decoding error: {fields}")
    warnings = [f'unknown field "{u}"' for u in result.unknown] if mode == "Warn" else []
    return pruned, warnings


def check_name(rt: ResourceType, name: str) -> None:
    """metadata.name rules per kind (DNS-1123 subdomain; namespaces a label; services a DNS-1035 label)."""
    if rt.group in ("apiregistration.k8s.io", "rbac.authorization.k8s.io") and rt.builtin:
        # path segment names: APIServices (`v1.`; kube-aggregator ValidateAPIServiceName) and RBAC's kinds
        # (`system:discovery`; pkg/apis/rbac/validation ValidateRBACName), as apimachinery's
        # api/validation/path IsValidPathSegmentName says
        problems = [f"may not be '{name}'"] if name in (".", "..") else []
        problems += [f"may not contain '{c}'" for c in ("/", "%") if c in name and not problems]
        if problems:
            causes = [("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": {p}') for p in problems]
            raise invalid(rt.kind, name, rt.group, causes)
        return
    if rt.kind in ("Namespace",):
        pattern, limit, rule = DNS1123_LABEL, 63, "a lowercase RFC 1123 label"
    elif rt.kind == "Service":
        pattern, limit, rule = DNS1035_LABEL, 63, "a DNS-1035 label"
    else:
        pattern, limit, rule = DNS1123_SUBDOMAIN, 253, "a lowercase RFC 1123 subdomain"
    if not pattern.match(name) or len(name) > limit:
        raise invalid(
            rt.kind,
            name,
            rt.group,
            [
                (
                    "FieldValueInvalid",
                    "metadata.name",
                    f'Invalid value: "{name}": {rule} must consist of lower case alphanumeric characters, '
                    f"'-' or '.', and must start and end with an alphanumeric character (at most {limit} characters)",
                )
            ],
        )


def _pod_spec_causes(spec: dict[str, Any] | None, prefix: str) -> list[tuple[str, str, str]]:
    causes = []
    containers = (spec or {}).get("containers") or []
    if not containers:
        causes.append(("FieldValueRequired", f"{prefix}.containers", "Required value"))
    for index, container in enumerate(containers):
        where = f"{prefix}.containers[{index}]"
        if not DNS1123_LABEL.match(str(container.get("name", ""))):
            causes.append(
                (
                    "FieldValueRequired" if not container.get("name") else "FieldValueInvalid",
                    f"{where}.name",
                    "Required value" if not container.get("name") else "Invalid value",
                )
            )
        if not container.get("image"):
            causes.append(("FieldValueRequired", f"{where}.image", "Required value"))
        for p_index, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort")
            if not isinstance(number, int) or not 1 <= number <= 65535:
                causes.append(
                    (
                        "FieldValueInvalid",
                        f"{where}.ports[{p_index}].containerPort",
                        f"Invalid value: {number}: must be between 1 and 65535, inclusive",
                    )
                )
        for resources in ("limits", "requests"):
            for name, quantity in ((container.get("resources") or {}).get(resources) or {}).items():
                if not _QUANTITY.match(str(quantity)):
                    raise bad_request(
                        f"quantities must match the regular expression "
                        f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' ({name}: {quantity!r})"
                    )
    return causes


Cause = tuple[str, str, str]  # (reason, field, message), as a Status cause


def _workload_causes(kind: str, spec: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    template = spec.get("template") or {}
    selector = spec.get("selector")
    labels = (template.get("metadata") or {}).get("labels") or {}
    causes: list[Cause] = []
    if kind != "Job" and not selector:
        causes.append(("FieldValueRequired", "spec.selector", "Required value"))
    if selector and not match_labels_selector(selector)(labels):
        causes.append(
            (
                "FieldValueInvalid",
                "spec.template.metadata.labels",
                f"Invalid value: {labels}: `selector` does not match template `labels`",
            )
        )
    if isinstance(spec.get("replicas"), int) and spec["replicas"] < 0:
        causes.append(
            (
                "FieldValueInvalid",
                "spec.replicas",
                f"Invalid value: {spec['replicas']}: must be greater than or equal to 0",
            )
        )
    causes += _pod_spec_causes(template.get("spec"), "spec.template.spec")
    if kind == "Job" and (template.get("spec") or {}).get("restartPolicy") not in ("Never", "OnFailure"):
        causes.append(
            (
                "FieldValueRequired",
                "spec.template.spec.restartPolicy",
                'Required value: valid values: "OnFailure", "Never"',
            )
        )
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        causes.append(("FieldValueInvalid", "spec.selector", "Invalid value: field is immutable"))
    return causes


def _service_causes(spec: dict[str, Any], old: dict[str, Any] | None) -> list[Cause]:
    causes: list[Cause] = [
        (
            "FieldValueInvalid",
            f"spec.ports[{index}].port",
            f"Invalid value: {port.get('port')}: must be between 1 and 65535, inclusive",
        )
        for index, port in enumerate(spec.get("ports") or [])
        if not isinstance(port.get("port"), int) or not 1 <= port["port"] <= 65535
    ]
    if not spec.get("ports") and spec.get("clusterIP") != "None" and spec.get("type") != "ExternalName":
        causes.append(("FieldValueRequired", "spec.ports", "Required value"))
    if old is not None and (old.get("spec") or {}).get("clusterIP") not in (None, spec.get("clusterIP")):
        causes.append(("FieldValueInvalid", "spec.clusterIP", "Invalid value: field is immutable"))
    return causes


def _shown(value: Any) -> str:
    return (
        json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    )


def _value_causes(value: Any, schema: dict[str, Any], path: str) -> list[Cause]:
    """The OpenAPI value constraints of one node, with apiextensions-apiserver's messages (validation.go turns
    kube-openapi's errors into field errors: Required, NotSupported, TooLong, TooMany, Invalid)."""
    causes: list[Cause] = []
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_shown(v) for v in schema["enum"])
        causes.append(
            ("FieldValueNotSupported", path, f"Unsupported value: {_shown(value)}: supported values: {supported}")
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            causes.append(
                (
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {_shown(value)}: {path} in body should be greater than or equal to "
                    f"{schema['minimum']}",
                )
            )
        if "maximum" in schema and value > schema["maximum"]:
            causes.append(
                (
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {_shown(value)}: {path} in body should be less than or equal to "
                    f"{schema['maximum']}",
                )
            )
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            causes.append(("FieldValueTooLong", path, f"Too long: may not be more than {schema['maxLength']} bytes"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            causes.append(
                (
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {_shown(value)}: {path} in body should be at least {schema['minLength']} "
                    "chars long",
                )
            )
        if "pattern" in schema and re.search(str(schema["pattern"]), value) is None:
            causes.append(
                (
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {_shown(value)}: {path} in body should match '{schema['pattern']}'",
                )
            )
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append(
                ("FieldValueTooMany", path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items")
            )
        if "minItems" in schema and len(value) < schema["minItems"]:
            causes.append(
                (
                    "FieldValueInvalid",
                    path,
                    f"Invalid value: {len(value)}: {path} in body should have at least {schema['minItems']} items",
                )
            )
    return causes


def schema_causes(value: Any, schema: dict[str, Any] | None, path: str = "") -> list[Cause]:
    """A custom resource against its CRD's structural schema (below metadata): required properties and value
    constraints. CEL rules (x-kubernetes-validations) are not evaluated."""
    schema = k8s.resolve(schema)
    if schema is None or value is None:
        return []
    causes = _value_causes(value, schema, path) if path else []
    if isinstance(value, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema.get("properties") or {}
        for name in schema.get("required") or []:
            if name not in value:
                causes.append(("FieldValueRequired", f"{path}.{name}" if path else name, "Required value"))
        for key, item in value.items():
            if not path and key in ("apiVersion", "kind", "metadata"):
                continue
            sub = props.get(key) or (
                schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None
            )
            causes += schema_causes(item, sub, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            causes += schema_causes(item, schema.get("items"), f"{path}[{index}]")
    return causes


def validate(rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    """Semantic validation (422) for the kinds the deployer and its tests use; a custom resource against its
    CRD's schema."""
    spec = obj.get("spec") or {}
    causes: list[Cause] = []
    if not rt.builtin:
        version = str(obj.get("apiVersion", "")).rpartition("/")[2]
        causes = schema_causes(obj, rt.crd_schemas.get(version) or rt.crd_schemas.get(rt.versions[0]))
    elif rt.kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"):
        causes = _workload_causes(rt.kind, spec, old)
    elif rt.kind == "Pod":
        causes = _pod_spec_causes(spec, "spec")
    elif rt.kind == "Service":
        causes = _service_causes(spec, old)
    elif rt.kind == "Secret" and rt.builtin and obj.get("type") == "kubernetes.io/service-account-token":
        # ValidateSecret: a token Secret names its account; its token comes later, from the tokens controller
        key = "kubernetes.io/service-account.name"
        if not (obj["metadata"].get("annotations") or {}).get(key):
            causes = [("FieldValueRequired", f"metadata.annotations[{key}]", "Required value")]
    if causes:
        raise invalid(rt.kind, obj["metadata"].get("name", ""), rt.group, causes)
