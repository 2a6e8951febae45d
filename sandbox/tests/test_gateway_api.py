"""The Gateway API as Istio serves it: the CRDs as released (defaults applied), HTTPRoutes attached to a Gateway
of class istio split the ingress gateway's traffic by weight, with the spec's attachment rules (parentRefs,
listener hostnames, allowedRoutes) and match precedence; HTTPRoutes whose parent is a Service (GAMMA) split the
mesh's, consumer routes over producer routes. Real containers (sandbox_only: the mesh is the sandbox's own)."""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kube_sandbox.testing import Running
from kube_sandbox.testing.workloads import HTTPD, apply, deployment, ready_pods, service
from kubernetes import client

pytestmark = [
    pytest.mark.sandbox_only,
    pytest.mark.skipif(
        not (shutil.which("dockerd") and shutil.which("docker-registry")),
        reason="dockerd and docker-registry are installed by `make setup`",
    ),
]
GROUP = "gateway.networking.k8s.io"


@pytest.fixture(scope="module")
def cluster(containers_cluster: Running) -> Running:
    return containers_cluster


@pytest.fixture
def other_mesh_namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"o-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"istio-injection": "enabled"}))
    )
    yield name
    core.delete_namespace(name)


def gateway(name: str, hostname: str | None = None, allowed: str = "Same") -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": "http",
        "protocol": "HTTP",
        "port": 80,
        "allowedRoutes": {"namespaces": {"from": allowed}},
    }
    if hostname:
        listener["hostname"] = hostname
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gateway",
        "metadata": {"name": name},
        "spec": {"gatewayClassName": "istio", "listeners": [listener]},
    }


def route(name: str, parents: list[dict[str, Any]], rules: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {"parentRefs": parents, "rules": rules, **spec},
    }


def weighted(stable: int, canary: int) -> list[dict[str, Any]]:
    return [{"name": "web-stable", "port": 80, "weight": stable}, {"name": "web-canary", "port": 80, "weight": canary}]


def two_services(cluster: Running, api: client.ApiClient, namespace: str, image: str) -> None:
    apply(
        cluster,
        namespace,
        [
            deployment("web-stable", image, HTTPD, labels={"app": "web", "track": "stable"}),
            deployment("web-canary", image, HTTPD, labels={"app": "web", "track": "canary"}),
            service("web", {"app": "web"}),
            service("web-stable", {"app": "web", "track": "stable"}),
            service("web-canary", {"app": "web", "track": "canary"}),
        ],
    )
    ready_pods(api, namespace, "app=web", 2)


def tracks(answers: list[tuple[int, str]]) -> Counter[str]:
    return Counter(body if status == 200 else f"{status} {body}".strip() for status, body in answers)


def share_ok(count: int, total: int, share: float) -> bool:
    """Within the two-sided 99.9% binomial bound of `share`."""
    mean, sd = total * share, (total * share * (1 - share)) ** 0.5
    return mean - 3.291 * sd <= count <= mean + 3.291 * sd


def test_the_released_crds_are_served_with_their_defaults(api: client.ApiClient, mesh_namespace: str) -> None:
    custom = client.CustomObjectsApi(api)
    minimal = route("defaults", [{"name": "public"}], [{"backendRefs": [{"name": "web", "port": 80}]}])
    made = custom.create_namespaced_custom_object(GROUP, "v1", mesh_namespace, "httproutes", minimal)
    assert made["spec"]["parentRefs"] == [{"group": GROUP, "kind": "Gateway", "name": "public"}]
    rule = made["spec"]["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert rule["backendRefs"] == [{"group": "", "kind": "Service", "name": "web", "port": 80, "weight": 1}]
    classes = custom.list_cluster_custom_object(GROUP, "v1", "gatewayclasses")["items"]
    assert {c["metadata"]["name"]: c["spec"]["controllerName"] for c in classes}[
        "istio"
    ] == "istio.io/gateway-controller"
    with pytest.raises(client.ApiException) as refused:  # the CRD's own schema: a weight of -1 is out of range
        bad = route("bad", [{"name": "public"}], [{"backendRefs": [{"name": "web", "port": 80, "weight": -1}]}])
        custom.create_namespaced_custom_object(GROUP, "v1", mesh_namespace, "httproutes", bad)
    assert refused.value.status == 422
    assert (
        "spec.rules[0].backendRefs[0].weight: Invalid value: -1: spec.rules[0].backendRefs[0].weight in body should "
        "be greater than or equal to 0" in refused.value.body
    )


def test_routes_attached_to_a_gateway_split_its_traffic_with_the_specs_rules(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, other_mesh_namespace: str, busybox: str
) -> None:
    ns, other = mesh_namespace, other_mesh_namespace
    two_services(cluster, api, ns, busybox)
    parent = [{"name": "public"}]
    apply(
        cluster,
        ns,
        [
            gateway("public", "*.example.test"),
            route("web", parent, [{"backendRefs": weighted(90, 10)}], hostnames=["web.example.test"]),
        ],
    )
    cluster.propagated()
    answers = tracks(cluster.send("web.example.test", 1000))
    assert set(answers) == {"stable", "canary"} and share_ok(answers["canary"], 1000, 0.1), answers
    # a host no listener or no route serves: 404; the route is not the mesh's
    assert tracks(cluster.send("web.elsewhere.test", 5)) == {"404": 5}
    assert tracks(cluster.send("api.example.test", 5)) == {"404": 5}
    assert tracks(cluster.send("web.example.test", 5, source=ns)) == {"404": 5}

    # another namespace's route is not admitted by a listener that allows the Gateway's own (Same)
    elsewhere = route("web", [{"name": "public", "namespace": ns}], [{"backendRefs": [{"name": "web", "port": 80}]}])
    elsewhere["spec"]["hostnames"] = ["api.example.test"]
    apply(cluster, other, [elsewhere])
    cluster.propagated()
    assert tracks(cluster.send("api.example.test", 5)) == {"404": 5}

    # precedence: an Exact path over a prefix, more header matches over fewer, whatever the rules' order
    pinned = [{"name": "web-canary", "port": 80}]
    rules = [
        {"backendRefs": [{"name": "web-stable", "port": 80}]},
        {"matches": [{"path": {"type": "Exact", "value": "/index.html"}}], "backendRefs": pinned},
        {"matches": [{"headers": [{"name": "x-canary", "value": "true"}]}], "backendRefs": pinned},
    ]
    apply(cluster, ns, [route("web", parent, rules, hostnames=["web.example.test"])])
    cluster.propagated()
    assert tracks(cluster.send("web.example.test", 20)) == {"stable": 20}
    assert tracks(cluster.send("web.example.test", 20, path="/index.html")) == {"canary": 20}
    assert tracks(cluster.send("web.example.test", 20, headers={"X-Canary": "true"})) == {"canary": 20}
    # a rule whose backends all weigh 0 answers 500
    apply(cluster, ns, [route("web", parent, [{"backendRefs": weighted(0, 0)}], hostnames=["web.example.test"])])
    cluster.propagated()
    assert tracks(cluster.send("web.example.test", 5)) == {"500 no backend": 5}


def test_routes_whose_parent_is_a_service_split_the_mesh_and_a_consumers_route_wins_for_its_namespace(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, other_mesh_namespace: str, busybox: str
) -> None:
    ns, other = mesh_namespace, other_mesh_namespace
    two_services(cluster, api, ns, busybox)
    mesh = [{"group": "", "kind": "Service", "name": "web"}]
    apply(cluster, ns, [route("web", mesh, [{"backendRefs": weighted(50, 50)}])])
    cluster.propagated()
    inside = tracks(cluster.send("web", 400, source=ns))
    assert share_ok(inside["canary"], 400, 0.5), inside
    plain = tracks(cluster.send("web", 400, source=ns, sidecar=False))  # no sidecar: the Service's endpoints
    assert share_ok(plain["canary"], 400, 0.5), plain
    # the producer's route sends everything to stable; a consumer namespace's own route sends its clients to canary
    apply(cluster, ns, [route("web", mesh, [{"backendRefs": weighted(100, 0)}])])
    consumer = route(
        "web-to-canary",
        [{**mesh[0], "namespace": ns}],
        [{"backendRefs": [{"name": "web-canary", "namespace": ns, "port": 80}]}],
    )
    apply(cluster, other, [consumer])
    cluster.propagated()
    assert tracks(cluster.send("web", 50, source=ns)) == {"stable": 50}
    # its backend is in another namespace: without a ReferenceGrant, 500
    assert tracks(cluster.send(f"web.{ns}", 5, source=other)) == {"500 backend not permitted (no ReferenceGrant)": 5}
    grant = {
        "apiVersion": f"{GROUP}/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "from-consumers"},
        "spec": {
            "from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": other}],
            "to": [{"group": "", "kind": "Service"}],
        },
    }
    apply(cluster, ns, [grant])
    cluster.propagated()
    assert tracks(cluster.send(f"web.{ns}", 50, source=other)) == {"canary": 50}
    assert tracks(cluster.send("web", 50, source=ns)) == {"stable": 50}, "the consumer's route is its own"
