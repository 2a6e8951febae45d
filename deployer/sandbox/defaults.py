"""Defaulting as kube-apiserver does it for the kinds apps deploy, so objects read back as a cluster returns them."""

from __future__ import annotations

import base64
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


def apply_defaults(kind: str, obj: dict[str, Any]) -> None:
    """Fill the fields the apiserver defaults, in place."""
    spec = obj.get("spec")
    if kind == "Deployment" and isinstance(spec, dict):
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
    elif kind in ("ReplicaSet", "StatefulSet", "DaemonSet") and isinstance(spec, dict):
        if kind != "DaemonSet":
            spec.setdefault("replicas", 1)
        _template(spec)
    elif kind == "Job" and isinstance(spec, dict):
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("manualSelector", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        if "completions" not in spec and "parallelism" not in spec:
            spec["completions"] = 1
        spec.setdefault("parallelism", 1)
        _template(spec, restart_policy="Never")
    elif kind == "CronJob" and isinstance(spec, dict):
        spec.setdefault("concurrencyPolicy", "Allow")
        spec.setdefault("suspend", False)
        spec.setdefault("successfulJobsHistoryLimit", 3)
        spec.setdefault("failedJobsHistoryLimit", 1)
    elif kind == "Pod" and isinstance(spec, dict):
        pod_spec(spec)
    elif kind == "Service" and isinstance(spec, dict):
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    elif kind == "Secret":
        _secret(obj)
    elif kind == "Namespace":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
