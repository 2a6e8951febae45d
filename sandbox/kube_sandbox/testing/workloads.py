"""Workloads the data-plane and mesh tests run: Deployments, Services, and applying them as a user would."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import yaml
from kubernetes import client

from kube_sandbox.testing.cluster import Running
from kube_sandbox.testing.waiting import wait_for

KUBECTL = shutil.which("kubectl") or "kubectl"
HTTPD = "mkdir -p /tmp/www && echo $TRACK > /tmp/www/index.html && exec httpd -f -v -p 8080 -h /tmp/www"
# answers every path with a 500, from busybox httpd's index.cgi
BROKEN = (
    "mkdir -p /tmp/www/cgi-bin && "
    "printf '#!/bin/sh\\necho \"Status: 500 Internal Server Error\"\\necho\\necho broken\\n'"
    " > /tmp/www/cgi-bin/index.cgi && chmod +x /tmp/www/cgi-bin/index.cgi && exec httpd -f -p 8080 -h /tmp/www"
)


def deployment(name: str, image: str, command: str, *, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "web",
        "image": image,
        "command": ["sh", "-c", command],
        "env": [{"name": "TRACK", "value": labels.get("track", name)}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            **spec,
        },
    }


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def apply(cluster: Running, namespace: str, objects: list[dict[str, Any]]) -> None:
    """`kubectl apply --server-side`, as a user would."""
    manifest = yaml.safe_dump_all(objects)
    applied = subprocess.run(
        [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), "apply", "--server-side", "-n", namespace, "-f", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr


def ready_pods(api: client.ApiClient, namespace: str, selector: str, count: int = 1) -> list[client.V1Pod]:
    def ready() -> list[client.V1Pod] | None:
        pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
        good = [
            p
            for p in pods
            if any(
                c.type == "Ready" and c.status == "True" for c in ((p.status.conditions if p.status else None) or [])
            )
        ]
        return good if len(good) >= count else None

    return wait_for(ready, timeout=60, what=f"{count} ready pod(s) {selector}")


def kubectl(cluster: Running, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def autoscaler(name: str, *, maximum: int, metric: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """An autoscaling/v2 HorizontalPodAutoscaler of the Deployment `name`, from 1 to `maximum` replicas."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": maximum,
            "metrics": [metric],
            **spec,
        },
    }
