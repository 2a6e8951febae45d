"""Canary v2 through the Gateway API (canary.provider gateway-api) on real containers and the sandbox's mesh: the
chart's HTTPRoute on a Gateway is adopted and the mesh gets a GAMMA route, both follow the weights; a pod without
a sidecar reaches stable only; promotion moves every path; HTTP checks reach the canary through the Gateway,
pinned by a header, and a broken canary is rolled back. The Istio counterpart is test_canary_paths.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_sandbox.testing import Running
from kube_sandbox.testing.workloads import BROKEN, apply
from kubernetes import client
from routes import httproute_split
from support import edit, run_deployer
from test_canary_paths import SERVE, TEMPLATES, deploy_args, read_until, start, versions, within

pytestmark = [
    pytest.mark.sandbox_only,  # the sandbox's mesh answers who served each request
    pytest.mark.skipif(
        not (shutil.which("dockerd") and shutil.which("docker-registry")),
        reason="dockerd and docker-registry are installed by `make setup`",
    ),
]
GROUP = "gateway.networking.k8s.io"
DEPLOY = """\
app: web
image: {{repository: 127.0.0.1:5000/web}}
render: {{templates: {{dir: templates}}}}
environments:
  test:
    branches: [main]
    namespace: {namespace}
    values: [values.yaml]
    canary:
      provider: gateway-api
      steps: [10]
      interval: 2m
      threshold: 1
      grace: 2s
"""
PUBLIC = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-public}
spec:
  parentRefs: [{name: public}]
  hostnames: [web.example.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    timeouts: {request: 5s}
    backendRefs: [{name: web, port: 80}]
"""
GATEWAY: dict[str, Any] = {
    "apiVersion": f"{GROUP}/v1",
    "kind": "Gateway",
    "metadata": {"name": "public"},
    "spec": {
        "gatewayClassName": "istio",
        "listeners": [{"name": "http", "protocol": "HTTP", "port": 80, "hostname": "*.example.test"}],
    },
}


@pytest.fixture(scope="module")
def cluster(containers_cluster: Running) -> Running:
    return containers_cluster


@pytest.fixture
def app(tmp_path: Path, cluster: Running, mesh_namespace: str, busybox: str) -> Path:
    apply(cluster, mesh_namespace, [GATEWAY])  # the platform's Gateway; the app's chart attaches its route
    repo = tmp_path / "web"
    (repo / "templates").mkdir(parents=True)
    (repo / "deploy.yaml").write_text(DEPLOY.format(namespace=mesh_namespace))
    (repo / "values.yaml").write_text(yaml.safe_dump({"image": busybox, "version": "v1", "command": SERVE}))
    (repo / "Dockerfile").write_text("FROM scratch\n")
    for name in ("config.yaml.j2", "deployment.yaml.j2", "service.yaml.j2"):
        (repo / "templates" / name).write_text(TEMPLATES[name])
    (repo / "templates" / "public.yaml.j2").write_text(PUBLIC)
    return repo


def route(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return dict(client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, "v1", namespace, "httproutes", name))


def test_at_10_percent_the_gateway_and_the_mesh_follow_the_http_routes_and_promotion_moves_both(
    app: Path, cluster: Running, api: client.ApiClient, mesh_namespace: str, busybox: str
) -> None:
    ns = mesh_namespace
    first = run_deployer(*deploy_args(app, cluster, busybox))
    assert first.code == 0, first.err
    cluster.propagated()
    assert versions(cluster.send("web.example.test", 10)) == {"v1": 10}
    edit(app / "values.yaml", "version: v1", "version: v2")
    proc = start(app, cluster, busybox)
    try:
        read_until(proc, "weights stable 90% / canary 10%")
        cluster.propagated()
        gateway = versions(cluster.send("web.example.test", 1000))
        mesh = versions(cluster.send("web", 1000, source=ns))
        plain = versions(cluster.send("web", 300, source=ns, sidecar=False))
        assert set(gateway) == {"v1", "v2"} and within(gateway["v2"], 1000, 0.1), gateway
        assert set(mesh) == {"v1", "v2"} and within(mesh["v2"], 1000, 0.1), mesh
        assert plain == {"v1": 300}, "a pod without a sidecar reaches the Service's endpoints: stable only"
        public = route(api, ns, "web-public")
        assert public["spec"]["parentRefs"] == [{"group": GROUP, "kind": "Gateway", "name": "public"}]
        assert public["spec"]["hostnames"] == ["web.example.test"], "the chart's route keeps its parent and host"
        assert public["spec"]["rules"][-1]["timeouts"] == {"request": "5s"}
        assert httproute_split(public) == [90, 10]
        assert httproute_split(route(api, ns, "web")) == [90, 10], "the mesh's own route (GAMMA)"
        assert run_deployer("promote", "--env", "test", "--repo", app, "--kubeconfig", cluster.kubeconfig).code == 0
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
    cluster.propagated()
    assert versions(cluster.send("web.example.test", 50)) == {"v2": 50}
    assert versions(cluster.send("web", 50, source=ns)) == {"v2": 50}
    assert httproute_split(route(api, ns, "web-public")) == [100, 0]


def test_http_checks_reach_the_canary_through_the_gateway_and_a_broken_one_is_rolled_back(
    app: Path, cluster: Running, busybox: str
) -> None:
    assert run_deployer(*deploy_args(app, cluster, busybox)).code == 0
    edit(app / "deploy.yaml", "interval: 2m", "interval: 1s")
    edit(
        app / "deploy.yaml",
        "      grace: 2s\n",
        "      grace: 2s\n      checks: [{name: homepage, retries: 0, http: {path: /, port: 8080}}]\n",
    )
    gateway = ["--mesh-gateway", cluster.info()["gateway"]]
    edit(app / "values.yaml", "version: v1", "version: v2")
    good = run_deployer(*deploy_args(app, cluster, busybox), *gateway)
    assert good.code == 0, good.err
    assert "check homepage: ok HTTP 200" in good.out
    values = yaml.safe_load((app / "values.yaml").read_text())
    (app / "values.yaml").write_text(yaml.safe_dump({**values, "version": "v3", "command": BROKEN}))
    broken = run_deployer(*deploy_args(app, cluster, busybox), *gateway)
    assert broken.code == 1
    assert "homepage: HTTP 500" in broken.err and "expected 200" in broken.err
    cluster.propagated()
    assert versions(cluster.send("web.example.test", 20)) == {"v2": 20}
