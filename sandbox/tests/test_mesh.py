"""The sandbox's mesh behaves as Istio does where Istio is strict: which traffic VirtualServices govern (gateway,
mesh clients with and without sidecars, Kubernetes Ingress), injection, STRICT mTLS, TCP ports, propagation,
and Istio's metric labels. Real containers, real Prometheus; the mesh is the sandbox's own (sandbox_only).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from kube_sandbox.testing import Running, wait_for
from kube_sandbox.testing.workloads import HTTPD, apply, autoscaler, deployment, ready_pods, service
from kubernetes import client

pytestmark = [
    pytest.mark.sandbox_only,
    pytest.mark.skipif(
        not (shutil.which("dockerd") and shutil.which("docker-registry")),
        reason="dockerd and docker-registry are installed by `make setup`",
    ),
]
GATEWAY = "istio-system/istio-ingressgateway"


@pytest.fixture(scope="module")
def cluster(containers_cluster: Running) -> Running:
    return containers_cluster


@pytest.fixture
def image(busybox: str) -> str:
    return busybox


@pytest.fixture
def other_mesh_namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"o-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"istio-injection": "enabled"}))
    )
    yield name
    core.delete_namespace(name)


def destination_rule(namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "web"},
        "spec": {
            "host": f"web.{namespace}.svc.cluster.local",
            "subsets": [
                {"name": "stable", "labels": {"track": "stable"}},
                {"name": "canary", "labels": {"track": "canary"}},
            ],
            **spec,
        },
    }


def split(name: str, canary: int, *, hosts: list[str], kind: str = "http", **spec: Any) -> dict[str, Any]:
    """A VirtualService sending `canary`% of `web` to the canary subset."""
    route = [
        {"destination": {"host": "web", "subset": "stable"}, "weight": 100 - canary},
        {"destination": {"host": "web", "subset": "canary"}, "weight": canary},
    ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {"hosts": hosts, kind: [{"route": route}], **spec},
    }


def two_tracks(cluster: Running, api: client.ApiClient, namespace: str, image: str, **svc: Any) -> None:
    web = service("web", {"app": "web"})
    web["spec"].update(svc)
    apply(
        cluster,
        namespace,
        [
            deployment("web-stable", image, HTTPD, labels={"app": "web", "track": "stable"}),
            deployment("web-canary", image, HTTPD, labels={"app": "web", "track": "canary"}),
            web,
            destination_rule(namespace),
        ],
    )
    ready_pods(api, namespace, "app=web", 2)


def tracks(answers: list[tuple[int, str]]) -> Counter[str]:
    return Counter(body if status == 200 else f"{status} {body}" for status, body in answers)


def within(count: int, total: int, share: float) -> bool:
    """`count` of `total` is within the two-sided 99.9% binomial bound of `share` (at 99%, the suite's dozen such
    assertions fail a correct run one time in ten)."""
    mean, sd = total * share, math.sqrt(total * share * (1 - share))
    return mean - 3.291 * sd <= count <= mean + 3.291 * sd


def test_a_virtual_service_bound_to_the_gateway_splits_ingress_traffic_and_mesh_ones_do_not(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, image: str
) -> None:
    ns = mesh_namespace
    two_tracks(cluster, api, ns, image)
    public = split("web-public", 10, hosts=["web.example.test"], gateways=[GATEWAY])
    apply(cluster, ns, [public])
    cluster.propagated()
    answers = tracks(cluster.send("web.example.test", 1000))
    assert set(answers) == {"stable", "canary"}
    assert within(answers["canary"], 1000, 0.1), answers
    # the service's own name is claimed by no gateway route, and a gateway-only route is not the mesh's
    assert tracks(cluster.send(f"web.{ns}", 5)) == {"404 ": 5}
    assert tracks(cluster.send("web.example.test", 5, source=ns)) == {"404 ": 5}

    # a mesh-only VirtualService for the service changes nothing at the gateway: its route has no subset
    plain = split("web-public", 0, hosts=["web.example.test"], gateways=[GATEWAY])
    plain["spec"]["http"][0]["route"] = [{"destination": {"host": "web"}}]
    apply(cluster, ns, [plain, split("web", 100, hosts=["web"])])
    cluster.propagated()
    ingress = tracks(cluster.send("web.example.test", 400))
    assert within(ingress["canary"], 400, 0.5), ingress
    assert tracks(cluster.send("web", 50, source=ns)) == {"canary": 50}


def test_mesh_clients_follow_routes_only_through_a_sidecar_and_read_short_hosts_in_their_namespace(
    cluster: Running,
    api: client.ApiClient,
    mesh_namespace: str,
    other_mesh_namespace: str,
    plain_namespace: str,
    image: str,
) -> None:
    ns, other, plain = mesh_namespace, other_mesh_namespace, plain_namespace
    two_tracks(cluster, api, ns, image)
    apply(cluster, ns, [split("web", 100, hosts=["web"])])
    cluster.propagated()
    assert tracks(cluster.send("web", 50, source=ns)) == {"canary": 50}
    assert tracks(cluster.send(f"web.{ns}", 50, source=other)) == {"canary": 50}
    # no sidecar: kube-proxy's uniform choice among the Service's endpoints
    for answers in (
        tracks(cluster.send("web", 400, source=ns, sidecar=False)),
        tracks(cluster.send(f"web.{ns}", 400, source=plain)),
    ):
        assert within(answers["canary"], 400, 0.5), answers
    # `web` from another namespace is that namespace's service: there is none
    assert tracks(cluster.send("web", 5, source=other)) == {"404 ": 5}

    apply(cluster, ns, [split("web", 100, hosts=["web"], exportTo=["."])])
    cluster.propagated()
    assert tracks(cluster.send("web", 50, source=ns)) == {"canary": 50}
    hidden = tracks(cluster.send(f"web.{ns}", 400, source=other))
    assert within(hidden["canary"], 400, 0.5), hidden


def test_a_kubernetes_ingress_of_class_istio_reaches_every_endpoint_of_its_service(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, image: str
) -> None:
    ns = mesh_namespace
    two_tracks(cluster, api, ns, image)

    def ingress(name: str, host: str, **spec: Any) -> dict[str, Any]:
        backend = {"service": {"name": "web", "port": {"name": "http"}}}
        rule = {"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": name},
            "spec": {"rules": [rule], **spec},
        }

    apply(
        cluster,
        ns,
        [
            split("web", 100, hosts=["web"]),
            ingress("web", "web.ingress.test", ingressClassName="istio"),
            ingress("other", "other.ingress.test", ingressClassName="nginx"),
        ],
    )
    cluster.propagated()
    answers = tracks(cluster.send("web.ingress.test", 400))
    assert within(answers["canary"], 400, 0.5), answers
    assert tracks(cluster.send("other.ingress.test", 5)) == {"404 ": 5}


def test_injection_adds_a_sidecar_where_istio_would_and_only_sidecars_report_metrics(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, plain_namespace: str, image: str
) -> None:
    core = client.CoreV1Api(api)
    opted_out = deployment("out", image, HTTPD, labels={"app": "out", "sidecar.istio.io/inject": "false"})
    opted_in = deployment("in", image, HTTPD, labels={"app": "in", "sidecar.istio.io/inject": "true"})
    apply(cluster, mesh_namespace, [deployment("web", image, HTTPD, labels={"app": "web"}), opted_out])
    apply(cluster, plain_namespace, [deployment("web", image, HTTPD, labels={"app": "web"}), opted_in])
    apply(cluster, mesh_namespace, [service("web", {"app": "web"})])
    apply(cluster, plain_namespace, [service("web", {"app": "web"})])

    def containers(ns: str, app: str) -> tuple[list[str], list[tuple[str, bool]]]:
        pod = ready_pods(api, ns, f"app={app}")[0]
        statuses = [(s.name, s.ready) for s in pod.status.container_statuses]
        return [c.name for c in pod.spec.containers], sorted(statuses)

    assert containers(mesh_namespace, "web") == (["web", "istio-proxy"], [("istio-proxy", True), ("web", True)])
    assert containers(mesh_namespace, "out") == (["web"], [("web", True)])
    assert containers(plain_namespace, "web") == (["web"], [("web", True)])
    assert containers(plain_namespace, "in")[0] == ["web", "istio-proxy"]
    pod = core.list_namespaced_pod(mesh_namespace, label_selector="app=web").items[0]
    assert pod.metadata.labels["security.istio.io/tlsMode"] == "istio"
    assert json.loads(pod.metadata.annotations["sidecar.istio.io/status"])["containers"] == ["istio-proxy"]

    assert tracks(cluster.send("web", 10, source=mesh_namespace)) == {"web": 10}
    assert tracks(cluster.send("web", 10, source=plain_namespace)) == {"web": 10}
    metrics = _scrape(cluster)
    assert 'reporter="destination",source_workload="unknown"' in "".join(
        line for line in metrics if f'destination_workload_namespace="{mesh_namespace}"' in line
    )
    assert not [line for line in metrics if f'destination_workload_namespace="{plain_namespace}"' in line]


def test_strict_mtls_resets_plaintext_from_outside_the_mesh_and_permissive_accepts_it(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, image: str
) -> None:
    ns = mesh_namespace
    apply(cluster, ns, [deployment("web", image, HTTPD, labels={"app": "web"}), service("web", {"app": "web"})])
    pod = ready_pods(api, ns, "app=web")[0].metadata.name
    core = client.CoreV1Api(api)

    def peer_authentication(mode: str) -> dict[str, Any]:
        return {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": "default"},
            "spec": {"mtls": {"mode": mode}},
        }

    apply(cluster, ns, [peer_authentication("STRICT")])
    cluster.propagated()
    with pytest.raises(client.ApiException) as refused:
        core.connect_get_namespaced_pod_proxy_with_path(f"{pod}:http", ns, "index.html")
    assert refused.value.status == 503
    assert "connection reset by peer" in str(refused.value.body)
    assert tracks(cluster.send("web", 5, source=ns, sidecar=False)) == {"0 reset": 5}
    assert tracks(cluster.send("web", 5, source=ns)) == {"web": 5}
    assert _published(cluster, ns, pod) == "reset"

    apply(cluster, ns, [peer_authentication("PERMISSIVE")])
    cluster.propagated()
    assert core.connect_get_namespaced_pod_proxy_with_path(f"{pod}:http", ns, "index.html") == "web\n"
    assert tracks(cluster.send("web", 5, source=ns, sidecar=False)) == {"web": 5}
    assert _published(cluster, ns, pod) == "web"


def _published(cluster: Running, namespace: str, pod: str) -> str:
    """GET / on the pod's port published on the host (`GET /sandbox/ports`): the body, or "reset"."""
    published = cluster.control("/sandbox/ports", method="GET")
    port = next(p["ports"]["8080"] for p in published if (p["namespace"], p["name"]) == (namespace, pod))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
            return str(answer.read().decode().strip())
    except (ConnectionError, urllib.error.URLError):
        return "reset"


def test_a_tcp_port_is_split_by_tcp_routes_and_never_by_http_routes(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, image: str
) -> None:
    ns = mesh_namespace
    two_tracks(cluster, api, ns, image, ports=[{"name": "tcp-web", "port": 80, "targetPort": "http"}])
    apply(cluster, ns, [split("web", 100, hosts=["web"])])
    cluster.propagated()
    unsplit = tracks(cluster.send("web", 400, source=ns))
    assert within(unsplit["canary"], 400, 0.5), unsplit
    apply(cluster, ns, [split("web", 100, hosts=["web"], kind="tcp")])
    cluster.propagated()
    assert tracks(cluster.send("web", 50, source=ns)) == {"canary": 50}


def test_route_changes_reach_the_proxies_late_so_make_before_break_matters(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, image: str
) -> None:
    ns = mesh_namespace
    apply(
        cluster,
        ns,
        [
            deployment("web-stable", image, HTTPD, labels={"app": "web", "track": "stable"}),
            deployment("web-canary", image, HTTPD, labels={"app": "web", "track": "canary"}),
            service("web", {"app": "web"}),
            split("web", 100, hosts=["web"]),  # names subsets no DestinationRule declares yet
        ],
    )
    ready_pods(api, ns, "app=web", 2)
    cluster.propagated()
    assert tracks(cluster.send("web", 10, source=ns)) == {"503 no healthy upstream": 10}
    apply(cluster, ns, [destination_rule(ns)])
    assert tracks(cluster.send("web", 10, source=ns)) == {"503 no healthy upstream": 10}  # not there yet
    cluster.propagated()
    assert tracks(cluster.send("web", 10, source=ns)) == {"canary": 10}
    assert _flags(cluster, ns, "503") == {"NC"}

    # back to stable and the canary's pods removed at once: proxies still route to them for a while
    apply(cluster, ns, [split("web", 0, hosts=["web"])])
    client.AppsV1Api(api).patch_namespaced_deployment_scale("web-canary", ns, {"spec": {"replicas": 0}})
    wait_for(
        lambda: not client.CoreV1Api(api).list_namespaced_pod(ns, label_selector="track=canary").items,
        what="the canary's pods to go",
    )
    during = tracks(cluster.send("web", 10, source=ns))
    assert during == {"503 no healthy upstream": 10}, during
    cluster.propagated()
    assert tracks(cluster.send("web", 10, source=ns)) == {"stable": 10}
    assert _flags(cluster, ns, "503") == {"NC", "UH"}


def test_prometheus_shows_both_reporters_and_the_workload_name_override(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, other_mesh_namespace: str, image: str
) -> None:
    ns = mesh_namespace
    named = deployment("web", image, HTTPD, labels={"app": "web", "service.istio.io/workload-name": "web-v2"})
    client_pod = deployment("caller", image, HTTPD, labels={"app": "caller"})
    apply(cluster, ns, [named, service("web", {"app": "web"})])
    apply(cluster, other_mesh_namespace, [client_pod])
    ready_pods(api, other_mesh_namespace, "app=caller")
    ready_pods(api, ns, "app=web")
    assert tracks(cluster.send(f"web.{ns}", 30, source=f"{other_mesh_namespace}/app=caller")) == {"web": 30}
    prometheus = cluster.info()["prometheus"]

    def series(reporter: str) -> list[dict[str, str]]:
        query = f'istio_requests_total{{reporter="{reporter}",destination_service_namespace="{ns}"}}'
        url = f"{prometheus}/api/v1/query?query={urllib.parse.quote(query)}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return [r["metric"] for r in json.load(answer)["data"]["result"]]

    for reporter in ("source", "destination"):
        found = wait_for(lambda r=reporter: series(r), timeout=30, what=f"{reporter} series")  # type: ignore[misc]
        assert [(s["destination_workload"], s["source_workload"]) for s in found] == [("web-v2", "caller")]
        assert found[0]["source_workload_namespace"] == other_mesh_namespace
    assert series("destination")[0]["connection_security_policy"] == "mutual_tls"


def test_an_hpa_on_the_mesh_request_rate_scales_its_deployment(
    cluster: Running, api: client.ApiClient, mesh_namespace: str, image: str
) -> None:
    ns = mesh_namespace
    rate = {"name": "requests_per_second"}
    hpa = autoscaler(
        "web",
        maximum=4,
        metric={"type": "Pods", "pods": {"metric": rate, "target": {"type": "AverageValue", "averageValue": "5"}}},
    )
    apply(cluster, ns, [deployment("web", image, HTTPD, labels={"app": "web"}), service("web", {"app": "web"}), hpa])
    ready_pods(api, ns, "app=web")
    # 120 requests within the 10 s the rate is measured over: 12 a second on one pod, 5 wanted: 3 pods
    assert tracks(cluster.send("web", 120, source=ns)) == {"web": 120}
    apps = client.AppsV1Api(api)
    wait_for(lambda: apps.read_namespaced_deployment("web", ns).spec.replicas == 3, timeout=20, what="3 replicas")
    status = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler("web", ns).status
    assert status.desired_replicas == 3
    assert status.current_metrics[0].pods.metric.name == "requests_per_second"


def test_prometheus_scrapes_at_the_interval_the_sandbox_was_given(cluster: Running) -> None:
    info = cluster.info()
    assert info["scrapeInterval"] == "1s"
    with urllib.request.urlopen(f"{info['prometheus']}/api/v1/status/config", timeout=10) as answer:
        assert "scrape_interval: 1s" in json.load(answer)["data"]["yaml"]


def _scrape(cluster: Running) -> list[str]:
    with urllib.request.urlopen(cluster.info()["telemetry"], timeout=10) as answer:
        return [line for line in answer.read().decode().splitlines() if line.startswith("istio_requests_total")]


def _flags(cluster: Running, namespace: str, code: str) -> set[str]:
    """The response_flags the client's sidecar reported for answers with `code` to services in `namespace`."""
    time.sleep(0.1)
    found = set()
    for line in _scrape(cluster):
        ours = (
            f'destination_service_namespace="{namespace}"' in line or f'source_workload_namespace="{namespace}"' in line
        )
        if ours and 'reporter="source"' in line and f'response_code="{code}"' in line:
            found.add(line.split('response_flags="')[1].split('"')[0])
    return found
