"""Discovery (/version, /api, /apis, group versions) and OpenAPI v3, as kubectl, helm and client-go read them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kube_sandbox import schema as k8s
from kube_sandbox.resources import Registry, ResourceType

VERSION = {
    "major": "1",
    "minor": k8s.KUBERNETES_VERSION.split(".")[1],
    "gitVersion": f"v{k8s.KUBERNETES_VERSION}.0",
    "gitCommit": "sandbox",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def api_versions(address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(registry: Registry) -> dict[str, Any]:
    groups = [_group(name, versions) for name, versions in sorted(registry.groups().items()) if name]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, name: str) -> dict[str, Any] | None:
    versions = registry.groups().get(name)
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)} if versions and name else None


def _resource_entries(rt: ResourceType) -> list[dict[str, Any]]:
    main = {
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(rt.verbs) if rt.kind != "Namespace" else [v for v in rt.verbs if v != "deletecollection"],
        "storageVersionHash": _hash(rt.qualified),
    }
    if rt.short_names:
        main["shortNames"] = list(rt.short_names)
    if rt.categories:
        main["categories"] = list(rt.categories)
    out = [main]
    for sub in rt.subresources:
        entry: dict[str, Any] = {
            "name": f"{rt.plural}/{sub}",
            "singularName": "",
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": ["get", "patch", "update"],
        }
        if sub == "scale":
            entry.update(kind="Scale", group="autoscaling", version="v1")
        elif sub == "log":
            entry.update(kind="Pod", verbs=["get"])
        elif sub == "proxy":
            entry.update(kind="PodProxyOptions", verbs=["create", "delete", "get", "patch", "update"])
        elif sub == "token":
            entry.update(kind="TokenRequest", group="authentication.k8s.io", version="v1", verbs=["create"])
        out.append(entry)
    return out


def resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = [rt for rt in registry.all() if rt.group == group and version in rt.versions]
    if not types:
        return None
    group_version = f"{group}/{version}" if group else version
    resources = [entry for rt in sorted(types, key=lambda r: r.plural) for entry in _resource_entries(rt)]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def openapi_v3_index(registry: Registry) -> dict[str, Any]:
    paths = {}
    for group, versions in registry.groups().items():
        for version in versions:
            path = _gv_path(group, version)
            paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={_hash(path + str(len(registry.all())))}"}
    return {"paths": paths}


def _patch_operation(rt: ResourceType, version: str) -> dict[str, Any]:
    gvk = {"group": rt.group, "version": version, "kind": rt.kind}
    params = [
        {"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        for n in ("dryRun", "fieldManager", "fieldValidation", "force")
    ]
    return {
        "operationId": f"patch{rt.kind}",
        "parameters": params,
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": gvk,
        "responses": {"200": {"description": "OK"}},
    }


def _crd_component(rt: ResourceType, version: str) -> tuple[str, dict[str, Any]]:
    name = f"{'.'.join(reversed(rt.group.split('.')))}.{version}.{rt.kind}"
    body = json.loads(json.dumps(rt.crd_schemas.get(version) or {"type": "object"}))
    body.setdefault("properties", {}).update(
        {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        }
    )
    body["x-kubernetes-group-version-kind"] = [{"group": rt.group, "version": version, "kind": rt.kind}]
    return name, body


def openapi_v3_document(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = [rt for rt in registry.all() if rt.group == group and version in rt.versions]
    if not types:
        return None
    paths: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for rt in types:
        base = f"/{_gv_path(group, version)}"
        item = (
            f"{base}/namespaces/{{namespace}}/{rt.plural}/{{name}}" if rt.namespaced else f"{base}/{rt.plural}/{{name}}"
        )
        paths[item] = {"patch": _patch_operation(rt, version)}
        if not rt.builtin:
            name, body = _crd_component(rt, version)
            extra[name] = body
    return k8s.openapi_document(title="Kubernetes", paths=paths, extra=extra)
