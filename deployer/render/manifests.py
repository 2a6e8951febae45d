"""Rendered text → Kubernetes objects: parsed strictly, flattened, namespaced and sorted in apply order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from deployer.config.yamlio import load_all
from deployer.errors import DeployError

# Apply order (lightkube's sort_objects, Helm's InstallOrder): definitions and the namespace first, then
# identities and config, then services, then workloads, then what routes to them. Unknown kinds last.
APPLY_ORDER = [
    "CustomResourceDefinition",
    "Namespace",
    "PriorityClass",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "DestinationRule",
    "VirtualService",
    "Gateway",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
]
_RANK = {kind: rank for rank, kind in enumerate(APPLY_ORDER)}

CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "Node",
        "PersistentVolume",
        "StorageClass",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "PriorityClass",
        "IngressClass",
        "RuntimeClass",
        "APIService",
        "CSIDriver",
        "CSINode",
        "VolumeAttachment",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "CertificateSigningRequest",
        "FlowSchema",
        "PriorityLevelConfiguration",
    }
)

_SOURCE_COMMENT = re.compile(r"^# Source: (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class RenderedObject:
    """One object and the template file it came from."""

    obj: dict[str, Any]
    source: str

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        return str(self.obj.get("metadata", {}).get("name", ""))

    @property
    def ref(self) -> str:
        """`Kind/name`, as kubectl prints it."""
        return f"{self.kind}/{self.name}"


def split_helm_output(text: str) -> list[tuple[str, str]]:
    """`helm template` output → (source file, document text) pairs, from its `# Source:` comments."""
    out = []
    for chunk in re.split(r"^---\s*$", text, flags=re.MULTILINE):
        match = _SOURCE_COMMENT.search(chunk)
        if chunk.strip():
            out.append((match.group(1) if match else "helm template output", chunk))
    return out


def parse_objects(text: str, *, source: str) -> list[RenderedObject]:
    """Every non-empty document of `text` as an object; `List` kinds are flattened."""
    out: list[RenderedObject] = []
    for index, doc in enumerate(load_all(text, source=f"{source} (rendered)")):
        if doc is None:
            continue
        where = f"{source} (rendered document {index + 1})"
        if not isinstance(doc, dict):
            raise DeployError(
                f"a rendered document must be a Kubernetes object, got a {type(doc).__name__}", where=where
            )
        items = doc.get("items") if str(doc.get("kind", "")).endswith("List") else [doc]
        for item in items if isinstance(items, list) else []:
            out.append(RenderedObject(obj=_check_shape(item, where=where), source=source))
    return out


def _check_shape(obj: Any, *, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DeployError("a list item must be a Kubernetes object", where=where)
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise DeployError(f"object has no {key!r}", where=where)
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise DeployError(f"{obj['kind']} has no metadata.name", where=where)
    return obj


def place_in_namespace(
    objects: list[RenderedObject], namespace: str, *, cluster_scoped: frozenset[str] = frozenset()
) -> list[RenderedObject]:
    """Set the environment's namespace on namespaced objects; refuse objects aimed at another one, and
    cluster-scoped ones unless their kind is in `cluster_scoped` (what the operator allows the app)."""
    out = []
    for item in objects:
        if item.kind in CLUSTER_SCOPED:
            if item.kind not in cluster_scoped:
                raise DeployError(
                    f"{item.ref}: a cluster-scoped {item.kind} is refused: a release stays in its namespace "
                    f"{namespace!r} (an operator may allow the kind for this app: server.yaml "
                    f"apps.APP.clusterScoped, or deployer --allow-cluster-scoped {item.kind})",
                    where=item.source,
                )
            out.append(item)
            continue
        declared = item.obj["metadata"].get("namespace")
        if declared not in (None, "", namespace):
            raise DeployError(
                f"{item.ref}: metadata.namespace is {declared!r}, but this environment deploys to {namespace!r}",
                where=item.source,
            )
        metadata = {"name": item.name, "namespace": namespace, **item.obj["metadata"]}
        metadata["namespace"] = namespace
        out.append(RenderedObject(obj={**item.obj, "metadata": metadata}, source=item.source))
    return out


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def sort_for_apply(objects: list[RenderedObject]) -> list[RenderedObject]:
    """Apply order, then kind, namespace and name, so one commit always renders one sequence."""

    def key(item: RenderedObject) -> tuple[int, str, str, str]:
        meta = item.obj["metadata"]
        return (_RANK.get(item.kind, len(APPLY_ORDER)), item.kind, meta.get("namespace", ""), item.name)

    ordered = sorted(objects, key=key)
    seen: dict[tuple[str, str, str, str], str] = {}
    for item in ordered:
        identity = (
            _group(item.obj["apiVersion"]),
            item.kind,
            item.obj["metadata"].get("namespace", ""),
            item.name,
        )
        if identity in seen:
            raise DeployError(f"{item.ref} is rendered twice (also by {seen[identity]})", where=item.source)
        seen[identity] = item.source
    return ordered
