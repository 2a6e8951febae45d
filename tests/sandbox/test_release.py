"""The canary engine on the sandbox, through `deployer deploy`: first release, a promoted canary with the exact
weight sequence, and a canary that never becomes ready rolled back with the stable version untouched."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client, watch
from sandboxes import Running
from support import run_deployer

pytestmark = pytest.mark.cluster

DEPLOY = """\
app: shop
image: {{repository: 127.0.0.1:5000/shop}}
render: {{templates: {{dir: templates}}}}
environments:
  test:
    branches: [main]
    namespace: {namespace}
    canary: {{steps: [20, 50], interval: 300ms, threshold: 2}}
"""
TEMPLATES = {
    "deployment.yaml.j2": """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers: [{name: shop, image: "{{ deployer.image.ref }}", ports: [{containerPort: 8080}]}]
""",
    "service.yaml.j2": """\
apiVersion: v1
kind: Service
metadata: {name: shop}
spec:
  selector: {app: shop}
  ports: [{name: http, port: 80, targetPort: 8080}]
""",
}


@pytest.fixture
def app(tmp_path: Path, namespace: str) -> Path:
    repo = tmp_path / "shop"
    (repo / "templates").mkdir(parents=True)
    (repo / "deploy.yaml").write_text(DEPLOY.format(namespace=namespace))
    (repo / "Dockerfile").write_text("FROM scratch\n")
    for name, text in TEMPLATES.items():
        (repo / "templates" / name).write_text(text)
    return repo


def deploy(app: Path, cluster: Running, version: str) -> tuple[int, str, str]:
    result = run_deployer(
        "deploy",
        "--env",
        "test",
        "--repo",
        app,
        "--kubeconfig",
        cluster.kubeconfig,
        "--image",
        f"127.0.0.1:5000/shop:{version}",
        "--rollout-timeout",
        "30",
    )
    return result.code, result.out, result.err


def vs_weights(api: client.ApiClient, namespace: str) -> tuple[int, int]:
    vs = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "networking.istio.io", "v1", namespace, "virtualservices", "shop"
    )
    route = vs["spec"]["http"][0]["route"]
    return route[0]["weight"], route[1]["weight"]


def record_weights(api: client.ApiClient, namespace: str) -> tuple[list[tuple[int, int]], Callable[[], None]]:
    seen: list[tuple[int, int]] = []
    stop = threading.Event()

    def follow() -> None:
        stream = watch.Watch().stream(
            client.CustomObjectsApi(api).list_namespaced_custom_object,
            "networking.istio.io",
            "v1",
            namespace,
            "virtualservices",
            timeout_seconds=30,
        )
        for event in stream:
            route = event["object"]["spec"]["http"][0]["route"]
            pair = (route[0]["weight"], route[1]["weight"])
            if not seen or seen[-1] != pair:
                seen.append(pair)
            if stop.is_set():
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return seen, stop.set


def image_of(api: client.ApiClient, namespace: str, name: str) -> str:
    deployment = client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    return str(deployment.spec.template.spec.containers[0].image)


def test_first_release_applies_without_canary_and_routes_all_to_stable(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    code, out, err = deploy(app, cluster, "v1")
    assert code == 0, err
    assert "first release: applying 2 objects without a canary" in out
    assert vs_weights(api, namespace) == (100, 0)
    stable = client.AppsV1Api(api).read_namespaced_deployment("shop", namespace)
    assert stable.spec.selector.match_labels == {"app": "shop", "deployer.dev/track": "stable"}
    assert stable.metadata.labels["deployer.dev/environment"] == "test"
    records = client.CoreV1Api(api).list_namespaced_secret(namespace, label_selector="owner=deployer").items
    assert [
        (r.metadata.labels["deployer.dev/revision"], r.metadata.labels["deployer.dev/status"]) for r in records
    ] == [("1", "deployed")]


def test_a_good_canary_walks_the_weights_and_is_promoted(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    seen, stop = record_weights(api, namespace)
    code, out, err = deploy(app, cluster, "v2")
    stop()
    assert code == 0, err
    assert seen[-4:] == [(100, 0), (80, 20), (50, 50), (100, 0)]
    assert image_of(api, namespace, "shop") == "127.0.0.1:5000/shop:v2"
    names = [d.metadata.name for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items]
    assert names == ["shop"], "the canary is gone after promotion"
    assert "promoting: the new version becomes stable" in out


@pytest.mark.sandbox_only
def test_a_canary_that_never_becomes_ready_is_rolled_back_and_stable_untouched(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    assert deploy(app, cluster, "v1")[0] == 0
    apps = client.AppsV1Api(api)
    before = apps.read_namespaced_deployment("shop", namespace)
    cluster.control("/sandbox/pods", {"image": "127.0.0.1:5000/shop:broken", "behaviour": "never-ready"})
    code, _, err = deploy(app, cluster, "broken")
    assert code == 1
    assert err.splitlines()[0] == (
        f"error: test ({namespace}): canary rolled back: 2 failed rounds (threshold 2); "
        "at 20% readiness shop-canary: 0/2 pods ready"
    )
    after = apps.read_namespaced_deployment("shop", namespace)
    assert after.metadata.generation == before.metadata.generation
    assert image_of(api, namespace, "shop") == "127.0.0.1:5000/shop:v1"
    assert [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items] == ["shop"]
    assert vs_weights(api, namespace) == (100, 0)
    statuses = {
        r.metadata.labels["deployer.dev/revision"]: r.metadata.labels["deployer.dev/status"]
        for r in client.CoreV1Api(api).list_namespaced_secret(namespace, label_selector="owner=deployer").items
    }
    assert statuses == {"1": "deployed", "2": "rolled-back"}
