"""Istio's sidecar injection, as its mutating webhooks apply it when a pod is created.

Which pods (istio/istio manifests/charts/istio-control/istio-discovery/templates/mutatingwebhook.yaml): a pod in a
namespace labelled `istio-injection=enabled` (or `istio.io/rev`) unless the pod's label `sidecar.istio.io/inject`
is "false"; a pod labelled `sidecar.istio.io/inject: "true"` in a namespace with neither label. A namespace
labelled `istio-injection=disabled` never. The label decides, not the (deprecated) annotation. Pods using the
host network, and pods in kube-system or istio-system, are not injected.

What (pkg/kube/inject): an `istio-proxy` container, the `sidecar.istio.io/status` annotation, the labels
`security.istio.io/tlsMode: istio`, `service.istio.io/canonical-name` and `-revision`. The sandbox's mesh plays
the proxy: no init container is added (as with Istio's CNI node agent) and no proxy process runs.
"""

from __future__ import annotations

import json
from typing import Any

SIDECAR = "istio-proxy"
PROXY_IMAGE = "docker.io/istio/proxyv2:1.28.0"
STATUS = "sidecar.istio.io/status"
INJECT = "sidecar.istio.io/inject"
_NEVER = ("kube-system", "kube-public", "istio-system")
_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")


def namespace_injected(namespace: dict[str, Any] | None) -> bool:
    """Pods created in this namespace get a sidecar unless they opt out."""
    labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    return labels.get("istio-injection") == "enabled" or (
        "istio.io/rev" in labels and labels.get("istio-injection") != "disabled"
    )


def wants_sidecar(pod: dict[str, Any], namespace: dict[str, Any] | None) -> bool:
    """Istio's webhooks would inject this pod (see the module docstring for the rules)."""
    meta = pod.get("metadata") or {}
    if meta.get("namespace") in _NEVER or (pod.get("spec") or {}).get("hostNetwork"):
        return False
    ns_labels = ((namespace or {}).get("metadata") or {}).get("labels") or {}
    choice = (meta.get("labels") or {}).get(INJECT)
    if ns_labels.get("istio-injection") == "disabled":
        return False
    if namespace_injected(namespace):
        return choice != "false"
    return choice == "true"


def has_sidecar(pod: dict[str, Any]) -> bool:
    """The pod was injected: it runs a proxy, so it is a mesh endpoint."""
    meta = pod.get("metadata") or {}
    return STATUS in (meta.get("annotations") or {}) and any(
        c.get("name") == SIDECAR for c in (pod.get("spec") or {}).get("containers") or []
    )


def is_sidecar(pod: dict[str, Any], container: dict[str, Any]) -> bool:
    return container.get("name") == SIDECAR and STATUS in ((pod.get("metadata") or {}).get("annotations") or {})


def inject(pod: dict[str, Any], namespace: dict[str, Any] | None) -> None:
    """Add the sidecar to a pod being created, if Istio would; idempotent."""
    if not wants_sidecar(pod, namespace) or has_sidecar(pod):
        return
    meta = pod.setdefault("metadata", {})
    labels = meta.setdefault("labels", {})
    workload = labels.get("service.istio.io/workload-name") or _workload_guess(meta)
    labels.setdefault("security.istio.io/tlsMode", "istio")
    labels.setdefault("service.istio.io/canonical-name", _first(labels, _NAME_LABELS) or workload)
    labels.setdefault("service.istio.io/canonical-revision", _first(labels, _REVISION_LABELS) or "latest")
    meta.setdefault("annotations", {})[STATUS] = json.dumps(
        {"initContainers": None, "containers": [SIDECAR], "volumes": ["istio-envoy"], "revision": "default"},
        separators=(",", ":"),
    )
    spec = pod.setdefault("spec", {})
    spec.setdefault("containers", []).append(
        {
            "name": SIDECAR,
            "image": PROXY_IMAGE,
            "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
            "ports": [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}],
            "readinessProbe": {
                "httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
                "periodSeconds": 15,
                "timeoutSeconds": 3,
                "failureThreshold": 4,
                "successThreshold": 1,
            },
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
            "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}],
        }
    )
    spec.setdefault("volumes", []).append({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}})


def _first(labels: dict[str, str], keys: tuple[str, ...]) -> str | None:
    return next((labels[k] for k in keys if k in labels), None)


def _workload_guess(meta: dict[str, Any]) -> str:
    """The workload name Istio derives (pkg/kube/util.go GetDeployMetaFromPod): a ReplicaSet's Deployment."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            name = str(ref.get("name", ""))
            hash_ = (meta.get("labels") or {}).get("pod-template-hash", "")
            if ref.get("kind") == "ReplicaSet" and hash_ and name.endswith(f"-{hash_}"):
                return name[: -len(hash_) - 1]
            return name
    return str(meta.get("name") or meta.get("generateName") or "")
