"""A chart with an HorizontalPodAutoscaler: the HPA scales the primary, the canary gets its own, and no release
writes `replicas` of a Deployment an HPA targets (managedFields show the HPA owning it after promotion)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from kube_sandbox.testing import Running, wait_for
from kubernetes import client
from test_release import DEPLOY, TEMPLATES, start_deploy

pytestmark = pytest.mark.sandbox_only  # CPU figures are set through the sandbox's metrics API

HPA = """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: shop}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: shop}
  minReplicas: 2
  maxReplicas: 5
  metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}}]
  behavior: {scaleDown: {stabilizationWindowSeconds: 0}}
"""


@pytest.fixture
def autoscaled(sandbox_factory: Callable[..., Running]) -> Running:
    return sandbox_factory(hpa_sync_period=0.5)


@pytest.fixture
def app(tmp_path: Path, autoscaled: Running) -> Path:
    client.CoreV1Api(autoscaled.api()).create_namespace(
        {"metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}}
    )
    repo = tmp_path / "shop"
    (repo / "templates").mkdir(parents=True)
    deploy = DEPLOY.format(namespace="shop", steps="[50]", interval="8s", threshold=1, grace="0s")
    (repo / "deploy.yaml").write_text(deploy)
    (repo / "Dockerfile").write_text("FROM scratch\n")
    deployment = (
        TEMPLATES["deployment.yaml.j2"]
        .replace("  replicas: 2\n", "")
        .replace("ports: [{containerPort: 8080}]", "ports: [{containerPort: 8080}], resources: {requests: {cpu: 100m}}")
    )
    (repo / "templates" / "deployment.yaml.j2").write_text(deployment)
    (repo / "templates" / "service.yaml.j2").write_text(TEMPLATES["service.yaml.j2"])
    (repo / "templates" / "hpa.yaml.j2").write_text(HPA)
    return repo


def replicas(api: client.ApiClient, name: str) -> int:
    return int(client.AppsV1Api(api).read_namespaced_deployment(name, "shop").spec.replicas)


def cpu(sandbox: Running, track: str, value: str) -> None:
    sandbox.control("/sandbox/metrics", {"namespace": "shop", "selector": f"deployer.dev/track={track}", "cpu": value})


def test_the_canary_is_autoscaled_and_the_primarys_replicas_stay_the_hpas(autoscaled: Running, app: Path) -> None:
    api = autoscaled.api()
    first = start_deploy(app, autoscaled, "v1")
    assert first.wait(timeout=60) == 0, first.stderr.read() if first.stderr else ""
    assert replicas(api, "shop-primary") == 2, "a new primary starts at the HPA's minimum"
    hpa = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler("shop", "shop")
    assert hpa.spec.scale_target_ref.name == "shop-primary"
    cpu(autoscaled, "primary", "200m")  # app and sidecar request 200m: 100%, twice the target
    wait_for(lambda: replicas(api, "shop-primary") == 4, what="the HPA to scale the primary to 4")

    proc = start_deploy(app, autoscaled, "v2")
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["message"] == "weights stable 50% / canary 50%":
            break
    assert replicas(api, "shop-canary") == 2, "the canary starts at the HPA's minimum"
    cpu(autoscaled, "canary", "200m")
    wait_for(lambda: replicas(api, "shop-canary") == 4, what="the canary's own HPA to scale it")
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""

    assert replicas(api, "shop-primary") == 4, "promotion left the HPA's replicas standing"
    owners = {
        (f.manager, f.operation, f.subresource or ""): "f:replicas" in str(f.fields_v1)
        for f in client.AppsV1Api(api).read_namespaced_deployment("shop-primary", "shop").metadata.managed_fields
    }
    assert owners[("kube-controller-manager", "Update", "scale")] is True
    assert owners[("deployer", "Apply", "")] is False, "the deployer's applies never hold replicas"
    names = {
        h.metadata.name for h in client.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler("shop").items
    }
    assert names == {"shop"}, "the canary's HPA is gone with the canary"
