"""The resource types the sandbox serves: built-ins, Istio's networking CRDs, the Gateway API's, and CRDs applied at
runtime."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True)
class ResourceType:
    """One resource (plural) of one group, served in one or more versions."""

    group: str
    versions: tuple[str, ...]
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    builtin: bool = True
    verbs: tuple[str, ...] = tuple(VERBS)
    stored: bool = True  # False: create-only kinds answered at once, never stored (reviews), as their REST storage
    crd_schemas: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    crd_columns: dict[str, list[dict[str, Any]]] = field(default_factory=dict, compare=False, hash=False)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def storage_version(self) -> str:
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        version = version or self.storage_version
        return f"{self.group}/{version}" if self.group else version

    @property
    def qualified(self) -> str:
        """`deployments.apps`, as apiserver messages name a resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


def _r(
    gv: str,
    kind: str,
    plural: str,
    *,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    sub: tuple[str, ...] = ("status",),
    cats: tuple[str, ...] = (),
    verbs: tuple[str, ...] = tuple(VERBS),
    stored: bool = True,
) -> ResourceType:
    group, _, version = gv.rpartition("/")
    return ResourceType(
        group=group,
        versions=(version,),
        kind=kind,
        plural=plural,
        namespaced=namespaced,
        short_names=short,
        subresources=sub,
        categories=cats,
        verbs=verbs,
        stored=stored,
    )


ALL = ("all",)
BUILTINS: list[ResourceType] = [
    _r("v1", "Namespace", "namespaces", namespaced=False, short=("ns",)),
    _r("v1", "Node", "nodes", namespaced=False, short=("no",)),
    _r("v1", "ConfigMap", "configmaps", short=("cm",), sub=()),
    _r("v1", "Secret", "secrets", sub=()),
    _r("v1", "Service", "services", short=("svc",), cats=ALL),
    _r("v1", "ServiceAccount", "serviceaccounts", short=("sa",), sub=("token",)),
    _r("v1", "Pod", "pods", short=("po",), sub=("status", "log", "proxy"), cats=ALL),
    _r("v1", "Event", "events", short=("ev",), sub=()),
    _r("v1", "Endpoints", "endpoints", short=("ep",), sub=()),
    _r("v1", "PersistentVolumeClaim", "persistentvolumeclaims", short=("pvc",)),
    _r("v1", "PersistentVolume", "persistentvolumes", namespaced=False, short=("pv",)),
    _r("v1", "LimitRange", "limitranges", short=("limits",), sub=()),
    _r("v1", "ResourceQuota", "resourcequotas", short=("quota",)),
    # served (kubectl apply --prune lists it by default); no controller runs them: the sandbox creates no pods
    _r("v1", "ReplicationController", "replicationcontrollers", short=("rc",), cats=ALL),
    _r("apps/v1", "Deployment", "deployments", short=("deploy",), sub=("status", "scale"), cats=ALL),
    _r("apps/v1", "ReplicaSet", "replicasets", short=("rs",), sub=("status", "scale"), cats=ALL),
    _r("apps/v1", "StatefulSet", "statefulsets", short=("sts",), sub=("status", "scale"), cats=ALL),
    _r("apps/v1", "DaemonSet", "daemonsets", short=("ds",), cats=ALL),
    _r("batch/v1", "Job", "jobs", cats=ALL),
    _r("batch/v1", "CronJob", "cronjobs", short=("cj",), cats=ALL),
    _r("networking.k8s.io/v1", "Ingress", "ingresses", short=("ing",)),
    _r("networking.k8s.io/v1", "IngressClass", "ingressclasses", namespaced=False, sub=()),
    _r("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", short=("netpol",), sub=()),
    _r("discovery.k8s.io/v1", "EndpointSlice", "endpointslices", sub=()),
    _r("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", short=("pdb",)),
    _r("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", short=("hpa",), cats=ALL),
    _r("rbac.authorization.k8s.io/v1", "Role", "roles", sub=()),
    _r("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", sub=()),
    _r("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", namespaced=False, sub=()),
    _r("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False, sub=()),
    _r("coordination.k8s.io/v1", "Lease", "leases", sub=()),
    _r("scheduling.k8s.io/v1", "PriorityClass", "priorityclasses", namespaced=False, short=("pc",), sub=()),
    _r("storage.k8s.io/v1", "StorageClass", "storageclasses", namespaced=False, short=("sc",), sub=()),
    _r("apiregistration.k8s.io/v1", "APIService", "apiservices", namespaced=False),
    # answered from the request's user (pkg/registry/authorization, pkg/registry/authentication): never stored
    _r(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        namespaced=False,
        sub=(),
        verbs=("create",),
        stored=False,
    ),
    _r(
        "authorization.k8s.io/v1",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        namespaced=False,
        sub=(),
        verbs=("create",),
        stored=False,
    ),
    _r(
        "authentication.k8s.io/v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        namespaced=False,
        sub=(),
        verbs=("create",),
        stored=False,
    ),
    _r(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        namespaced=False,
        short=("crd", "crds"),
    ),
]

_OPEN = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


_AGE_COLUMN = {
    "name": "Age",
    "type": "date",
    "jsonPath": ".metadata.creationTimestamp",
    "description": "CreationTimestamp is a timestamp representing the server time when this object was created.",
}
# manifests/charts/base/files/crd-all.gen.yaml: the columns `kubectl get` shows for Istio's kinds
_ISTIO_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "VirtualService": [
        {
            "name": "Gateways",
            "type": "string",
            "jsonPath": ".spec.gateways",
            "description": "The names of gateways and sidecars that should apply these routes",
        },
        {
            "name": "Hosts",
            "type": "string",
            "jsonPath": ".spec.hosts",
            "description": "The destination hosts to which traffic is being sent",
        },
        _AGE_COLUMN,
    ],
    "DestinationRule": [
        {
            "name": "Host",
            "type": "string",
            "jsonPath": ".spec.host",
            "description": "The name of a service from the service registry",
        },
        _AGE_COLUMN,
    ],
}


def _istio_crd(kind: str, plural: str, short: tuple[str, ...], group: str = "networking.istio.io") -> dict[str, Any]:
    schema = {"openAPIV3Schema": {"type": "object", "properties": {"spec": _OPEN, "status": _OPEN}}}
    columns = {"additionalPrinterColumns": _ISTIO_COLUMNS[kind]} if kind in _ISTIO_COLUMNS else {}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": {"app": "istio-pilot"}},
        "spec": {
            "group": group,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(short),
                "categories": ["istio-io", f"{group.split('.', maxsplit=1)[0]}-istio-io"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": schema,
                    "subresources": {"status": {}},
                    **columns,
                },
                {
                    "name": "v1beta1",
                    "served": True,
                    "storage": False,
                    "schema": schema,
                    "subresources": {"status": {}},
                    **columns,
                },
            ],
        },
    }


def _gateway_api_crds() -> list[dict[str, Any]]:
    """The Gateway API's standard CRDs as released (scripts/gateway_api_crds.py): GatewayClass, Gateway,
    HTTPRoute, ReferenceGrant. A cluster with Istio has them once its operator applies standard-install.yaml."""
    data = json.loads((Path(__file__).parent / "gateway_api_crds.json").read_text(encoding="utf-8"))
    return list(data["crds"])


PREINSTALLED_CRDS = [
    _istio_crd("VirtualService", "virtualservices", ("vs",)),
    _istio_crd("DestinationRule", "destinationrules", ("dr",)),
    _istio_crd("Gateway", "gateways", ("gw",)),
    _istio_crd("PeerAuthentication", "peerauthentications", ("pa",), group="security.istio.io"),
    *_gateway_api_crds(),
]


def from_crd(crd: dict[str, Any]) -> ResourceType:
    """The resource type a CustomResourceDefinition serves (storage version first)."""
    spec = crd["spec"]
    names = spec["names"]
    served = [v for v in spec.get("versions", []) if v.get("served", True)]
    served.sort(key=lambda v: not v.get("storage", False))
    subresources = set()
    for version in served:
        subresources |= set((version.get("subresources") or {}).keys())
    return ResourceType(
        group=spec["group"],
        versions=tuple(v["name"] for v in served),
        kind=names["kind"],
        plural=names["plural"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        short_names=tuple(names.get("shortNames", [])),
        subresources=tuple(sorted(subresources)),
        categories=tuple(names.get("categories", [])),
        builtin=False,
        crd_schemas={
            v["name"]: _with_root_fields((v.get("schema") or {}).get("openAPIV3Schema", _OPEN)) for v in served
        },
        crd_columns={v["name"]: list(v.get("additionalPrinterColumns") or []) for v in served},
    )


def _with_root_fields(schema: dict[str, Any]) -> dict[str, Any]:
    """Every custom resource has apiVersion, kind and ObjectMeta whatever its schema says."""
    props = dict(schema.get("properties") or {})
    props.update(
        apiVersion={"type": "string"},
        kind={"type": "string"},
        metadata={"$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
    )
    return {**schema, "properties": props}


class Registry:
    """Resource types by (group, plural) and by (group, version, kind)."""

    def __init__(self) -> None:
        self._by_plural: dict[tuple[str, str], ResourceType] = {}
        for rt in BUILTINS:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        self._by_plural[(rt.group, rt.plural)] = rt

    def remove(self, group: str, plural: str) -> None:
        self._by_plural.pop((group, plural), None)

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        rt = self._by_plural.get((group, plural))
        return rt if rt is not None and version in rt.versions else None

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        group, _, version = api_version.rpartition("/")
        for rt in self._by_plural.values():
            if rt.group == group and rt.kind == kind and version in rt.versions:
                return rt
        return None

    def all(self) -> list[ResourceType]:
        return list(self._by_plural.values())

    def groups(self) -> dict[str, list[str]]:
        """Group name → served versions (preferred first), for discovery; the core group is ''."""
        out: dict[str, list[str]] = {}
        for rt in self._by_plural.values():
            versions = out.setdefault(rt.group, [])
            for version in rt.versions:
                if version not in versions:
                    versions.append(version)
        return out
