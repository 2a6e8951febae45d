"""Defaulting as kube-apiserver does it for the kinds apps deploy, so objects read back as a cluster returns them."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any


def _container(container: dict[str, Any]) -> None:
    image = str(container.get("image", ""))
    tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
    container.setdefault("imagePullPolicy", "Always" if not tagged or image.endswith(":latest") else "IfNotPresent")
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if isinstance(container.get(probe), dict):
            spec = container[probe]
            for key, value in (
                ("timeoutSeconds", 1),
                ("periodSeconds", 10),
                ("successThreshold", 1),
                ("failureThreshold", 3),
            ):
                spec.setdefault(key, value)
            if isinstance(spec.get("httpGet"), dict):
                spec["httpGet"].setdefault("scheme", "HTTP")
                spec["httpGet"].setdefault("path", "/")


def pod_spec(spec: dict[str, Any], *, restart_policy: str = "Always") -> None:
    spec.setdefault("restartPolicy", restart_policy)
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if isinstance(container, dict):
            _container(container)
    for volume in spec.get("volumes") or []:
        # a volume naming no source is an emptyDir (SetDefaults_Volume, pkg/apis/core/v1/defaults.go)
        if isinstance(volume, dict) and not set(volume) - {"name"}:
            volume["emptyDir"] = {}


def quantity(value: Any) -> float:
    """A Kubernetes quantity as a number (cpu in cores: "250m" is 0.25)."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 1024.0, "Mi": 1024.0**2, "Gi": 1024.0**3}
    suffixes["Ti"] = 1024.0**4
    for suffix, factor in sorted(suffixes.items(), key=lambda s: -len(s[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _requests_from_limits(spec: dict[str, Any]) -> None:
    """A Pod's container with a limit and no request for a resource requests its limit (SetDefaults_Pod in
    pkg/apis/core/v1/defaults.go; Pods only: templates keep what they say)."""
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        resources = container.get("resources") if isinstance(container, dict) else None
        if isinstance(resources, dict) and isinstance(resources.get("limits"), dict) and resources["limits"]:
            requests = resources.setdefault("requests", {})
            for name, value in resources["limits"].items():
                requests.setdefault(name, value)


def qos_class(spec: dict[str, Any]) -> str:
    """A pod's QoS class as kube computes it (pkg/apis/core/helper/qos/qos.go ComputePodQOS): cpu, memory and
    hugepages count; Guaranteed when every container limits cpu and memory and the summed requests equal the
    summed limits; BestEffort with no request and no limit; else Burstable."""
    requests: dict[str, float] = {}
    limits: dict[str, float] = {}
    guaranteed = True
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        resources = (container.get("resources") if isinstance(container, dict) else None) or {}
        found: set[str] = set()
        for kind, total in (("requests", requests), ("limits", limits)):
            for name, value in (resources.get(kind) or {}).items():
                if name not in ("cpu", "memory") and not str(name).startswith("hugepages-"):
                    continue
                amount = quantity(value)
                if amount > 0:
                    total[name] = total.get(name, 0.0) + amount
                    if kind == "limits":
                        found.add(name)
        if not {"cpu", "memory"} <= found:
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    equal = all(name in limits and limits[name] == amount for name, amount in requests.items())
    return "Guaranteed" if guaranteed and equal and len(requests) == len(limits) else "Burstable"


# What a created object's status is before any controller writes it: each strategy's PrepareForCreate sets an
# empty status (pkg/registry/*/strategy.go), and the JSON of an empty Go struct keeps its fields without
# `omitempty` (ReplicaSetStatus.replicas, ServiceStatus.loadBalancer, ...).
_CREATED_STATUS: dict[str, dict[str, Any]] = {
    "Deployment": {},
    "ReplicaSet": {"replicas": 0},
    "StatefulSet": {"replicas": 0, "availableReplicas": 0},
    "DaemonSet": {"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0},
    "Job": {},
    "CronJob": {},
    "Service": {"loadBalancer": {}},
    "Ingress": {"loadBalancer": {}},
    "HorizontalPodAutoscaler": {"desiredReplicas": 0},
    "PodDisruptionBudget": {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0},
    "PersistentVolumeClaim": {"phase": "Pending"},
    "ReplicationController": {"replicas": 0},
    "ResourceQuota": {},  # pkg/registry/core/resourcequota strategy PrepareForCreate: an empty status
    "PersistentVolume": {"phase": "Pending"},
}


def created_status(kind: str, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The status a new object of a built-in kind has when create answers (None: it has none)."""
    if kind == "Pod":
        return {"phase": "Pending", "qosClass": qos_class(obj.get("spec") or {})}
    found = _CREATED_STATUS.get(kind)
    return dict(found) if found is not None else None


def _template(spec: dict[str, Any], *, restart_policy: str = "Always") -> None:
    template = spec.get("template")
    if isinstance(template, dict):
        template.setdefault("metadata", {})
        if isinstance(template.get("spec"), dict):
            pod_spec(template["spec"], restart_policy=restart_policy)


def _secret(obj: dict[str, Any]) -> None:
    """stringData is write-only: the apiserver folds it into data (base64) and never stores it."""
    plain = obj.pop("stringData", None)
    if isinstance(plain, dict) and plain:
        data: dict[str, Any] = obj["data"] if isinstance(obj.get("data"), dict) else {}
        data.update({k: base64.b64encode(str(v).encode()).decode() for k, v in plain.items()})
        obj["data"] = data
    obj.setdefault("type", "Opaque")


def _deployment(spec: dict[str, Any]) -> None:
    spec.setdefault("replicas", 1)
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxSurge", "25%")
        rolling.setdefault("maxUnavailable", "25%")
    _template(spec)


def _replicated(spec: dict[str, Any]) -> None:
    spec.setdefault("replicas", 1)
    _template(spec)


def _job(spec: dict[str, Any]) -> None:
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", False)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    if "completions" not in spec and "parallelism" not in spec:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    _template(spec, restart_policy="Never")


def _cronjob(spec: dict[str, Any]) -> None:
    spec.setdefault("concurrencyPolicy", "Allow")
    spec.setdefault("suspend", False)
    spec.setdefault("successfulJobsHistoryLimit", 3)
    spec.setdefault("failedJobsHistoryLimit", 1)


def _pod(spec: dict[str, Any]) -> None:
    pod_spec(spec)
    _requests_from_limits(spec)


def _service(spec: dict[str, Any]) -> None:
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))


def _crd(spec: dict[str, Any]) -> None:
    """SetDefaults_CustomResourceDefinitionSpec (apiextensions-apiserver pkg/apis/apiextensions/v1/defaults.go)."""
    names = spec.get("names")
    if isinstance(names, dict) and names.get("kind"):
        names.setdefault("singular", str(names["kind"]).lower())
        names.setdefault("listKind", f"{names['kind']}List")


_SPEC_DEFAULTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "Deployment": _deployment,
    "ReplicaSet": _replicated,
    "StatefulSet": _replicated,
    "DaemonSet": _template,
    "Job": _job,
    "CronJob": _cronjob,
    "Pod": _pod,
    "Service": _service,
    "CustomResourceDefinition": _crd,
}


def apply_defaults(kind: str, obj: dict[str, Any]) -> None:
    """Fill the fields the apiserver defaults, in place."""
    spec = obj.get("spec")
    if kind in _SPEC_DEFAULTS and isinstance(spec, dict):
        _SPEC_DEFAULTS[kind](spec)
    elif kind == "Secret":
        _secret(obj)
    elif kind == "Namespace":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
