"""The sandbox's Istio rules as pure functions (no server): hosts, visibility, protocols, gateway binding, Ingress
classes, DestinationRule choice, mTLS precedence, injection, and the HPA's arithmetic."""

from __future__ import annotations

from typing import Any

import pytest
from kube_sandbox import istio
from kube_sandbox.autoscaler import _propose, quantity
from kube_sandbox.injection import inject, wants_sidecar
from kube_sandbox.istio import Config, Request


def obj(kind: str, name: str, namespace: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": namespace, **meta}, "spec": spec}


def get(host: str, path: str = "/", **headers: str) -> Request:
    return Request(host, 80, "GET", path, headers)


@pytest.mark.parametrize(
    ("host", "namespace", "vs_host", "request_host"),
    [
        ("web", "a", "web.a.svc.cluster.local", "web.a.svc.cluster.local"),
        ("web.b", "a", "web.b", "web.b.svc.cluster.local"),  # a VirtualService host with a dot is literal
        ("web.b.svc", "a", "web.b.svc.cluster.local", "web.b.svc.cluster.local"),
        ("web.example.com", "a", "web.example.com", "web.example.com"),
        ("*", "a", "*", "*"),
    ],
)
def test_short_hosts_are_read_in_the_namespace_of_the_rule_or_the_client(
    host: str, namespace: str, vs_host: str, request_host: str
) -> None:
    assert istio.fqdn(host, namespace) == vs_host
    if host != "*":
        assert istio.request_fqdn(host, namespace) == request_host


def test_host_matching_is_exact_or_a_wildcard_prefix() -> None:
    assert istio.host_matches("*.example.com", "a.example.com")
    assert not istio.host_matches("*.example.com", "example.com")
    assert istio.host_matches("*", "anything")
    assert not istio.host_matches("a.example.com", "b.example.com")


@pytest.mark.parametrize(
    ("export", "seen_from", "visible"),
    [
        (None, "other", True),
        (["."], "own", True),
        (["."], "other", False),
        (["other"], "other", True),
        (["*"], "x", True),
    ],
)
def test_export_to_decides_which_namespaces_see_an_object(export: Any, seen_from: str, visible: bool) -> None:
    spec = {"exportTo": export} if export else {}
    assert istio.visible(obj("VirtualService", "vs", "own", spec), seen_from) is visible


@pytest.mark.parametrize(
    ("port", "tcp"),
    [
        ({"name": "tcp-web", "port": 80}, True),
        ({"name": "http", "port": 80, "appProtocol": "tcp"}, True),
        ({"name": "mongo-db", "port": 1}, True),
        ({"port": 3306}, True),  # a well-known port without a name
        ({"name": "http-web", "port": 80}, False),
        ({"name": "web", "port": 80}, False),  # unknown: sniffed, HTTP here
        ({"port": 8080}, False),
    ],
)
def test_tcp_ports_are_named_as_istio_reads_them(port: dict[str, Any], tcp: bool) -> None:
    assert istio.is_tcp(port) is tcp


def test_a_virtual_service_binds_to_the_gateway_only_when_it_names_it_and_the_server_allows_its_namespace() -> None:
    gateway = obj(
        "Gateway",
        "public",
        "edge",
        {
            "selector": {"istio": "ingressgateway"},
            "servers": [{"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["apps/*.example.com"]}],
        },
    )
    bound = obj("VirtualService", "a", "apps", {"hosts": ["a.example.com"], "gateways": ["edge/public"]})
    elsewhere = obj("VirtualService", "b", "other", {"hosts": ["b.example.com"], "gateways": ["edge/public"]})
    mesh = obj("VirtualService", "c", "apps", {"hosts": ["c.example.com"]})
    config = Config(virtual_services=(bound, elsewhere, mesh), gateways=(gateway,))
    assert istio.gateway_virtual_services(config, "a.example.com") == [(bound, "edge/public")]
    assert istio.gateway_virtual_services(config, "b.example.com") == []
    assert istio.gateway_virtual_services(config, "c.example.com") == []
    assert istio.mesh_virtual_service(config, "apps", "c.example.com") is mesh
    assert istio.mesh_virtual_service(config, "apps", "a.example.com") is None


def test_a_route_match_on_gateways_reads_short_gateway_names_in_the_rule_namespace() -> None:
    match = [{"gateways": ["public"]}]
    assert istio.matches(match, get("h"), "apps/public", "apps")
    assert not istio.matches(match, get("h"), None, "apps")
    assert istio.matches([{"gateways": ["mesh"]}], get("h"), None, "apps")


def test_only_ingresses_of_istio_s_class_become_gateway_routes_longest_path_first() -> None:
    def ingress(name: str, path: str, **spec: Any) -> dict[str, Any]:
        backend = {"service": {"name": name, "port": {"number": 80}}}
        rules = [{"host": "x.test", "http": {"paths": [{"path": path, "pathType": "Prefix", "backend": backend}]}}]
        return obj("Ingress", name, "apps", {"rules": rules, **spec})

    annotated = ingress("root", "/")
    annotated["metadata"]["annotations"] = {"kubernetes.io/ingress.class": "istio"}
    config = Config(
        ingresses=(
            annotated,
            ingress("api", "/api", ingressClassName="istio"),
            ingress("n", "/", ingressClassName="nginx"),
            ingress("none", "/"),
        ),
        ingress_classes={"istio": istio.INGRESS_CONTROLLER, "nginx": "k8s.io/ingress-nginx"},
    )
    routes = istio.ingress_routes(config, "x.test")
    assert [(m, d.service) for m, d in routes] == [({"uri": {"prefix": "/api"}}, "api"), ({}, "root")]
    assert all(d.subset is None for _, d in routes)


def test_a_proxy_uses_the_destination_rule_of_its_own_namespace_first_then_the_service_s() -> None:
    def rule(namespace: str, label: str, **spec: Any) -> dict[str, Any]:
        return obj(
            "DestinationRule",
            "dr",
            namespace,
            {"host": "web.apps.svc.cluster.local", "subsets": [{"name": "v", "labels": {"v": label}}], **spec},
        )

    config = Config(destination_rules=(rule("apps", "service's"), rule("client", "client's")))
    assert istio.subset_labels(config, ("web", "apps"), "v", "client") == {"v": "client's"}
    assert istio.subset_labels(config, ("web", "apps"), "v", "third") == {"v": "service's"}
    hidden = Config(destination_rules=(rule("apps", "x", exportTo=["."]),))
    assert istio.subset_labels(hidden, ("web", "apps"), "v", "third") is None


def test_mtls_mode_comes_from_the_workload_then_the_namespace_then_the_mesh() -> None:
    pod = {"metadata": {"name": "p", "namespace": "apps", "labels": {"app": "web"}}}

    def pa(namespace: str, mode: str, **spec: Any) -> dict[str, Any]:
        return obj("PeerAuthentication", f"{namespace}-{mode}", namespace, {"mtls": {"mode": mode}, **spec})

    assert istio.peer_mode(Config(), pod, 80) == "PERMISSIVE"
    mesh = pa("istio-system", "STRICT")
    assert istio.peer_mode(Config(peer_authentications=(mesh,)), pod, 80) == "STRICT"
    namespace = pa("apps", "PERMISSIVE")
    assert istio.peer_mode(Config(peer_authentications=(mesh, namespace)), pod, 80) == "PERMISSIVE"
    unset = pa("apps", "UNSET")
    assert istio.peer_mode(Config(peer_authentications=(mesh, unset)), pod, 80) == "STRICT"
    workload = pa(
        "apps", "STRICT", selector={"matchLabels": {"app": "web"}}, portLevelMtls={"8080": {"mode": "DISABLE"}}
    )
    both = Config(peer_authentications=(namespace, workload))
    assert (istio.peer_mode(both, pod, 80), istio.peer_mode(both, pod, 8080)) == ("STRICT", "DISABLE")


@pytest.mark.parametrize(
    ("namespace_labels", "pod_labels", "injected"),
    [
        ({"istio-injection": "enabled"}, {}, True),
        ({"istio-injection": "enabled"}, {"sidecar.istio.io/inject": "false"}, False),
        ({"istio.io/rev": "default"}, {}, True),
        ({}, {"sidecar.istio.io/inject": "true"}, True),
        ({}, {}, False),
        ({"istio-injection": "disabled"}, {"sidecar.istio.io/inject": "true"}, False),
    ],
)
def test_injection_follows_istio_s_webhook_selectors(
    namespace_labels: dict[str, str], pod_labels: dict[str, str], injected: bool
) -> None:
    namespace = {"metadata": {"name": "apps", "labels": namespace_labels}}
    pod = {
        "metadata": {"name": "p", "namespace": "apps", "labels": pod_labels},
        "spec": {"containers": [{"name": "c"}]},
    }
    assert wants_sidecar(pod, namespace) is injected
    inject(pod, namespace)
    inject(pod, namespace)  # once only
    assert [c["name"] for c in pod["spec"]["containers"]] == (["c", "istio-proxy"] if injected else ["c"])


def test_the_injected_canonical_name_is_the_deployment_s_when_no_label_names_it() -> None:
    pod = {
        "metadata": {
            "name": "web-5d8f-abcde",
            "namespace": "apps",
            "labels": {"pod-template-hash": "5d8f"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f", "controller": True}],
        },
        "spec": {"containers": [{"name": "c"}]},
    }
    inject(pod, {"metadata": {"labels": {"istio-injection": "enabled"}}})
    assert pod["metadata"]["labels"]["service.istio.io/canonical-name"] == "web"
    assert pod["metadata"]["labels"]["service.istio.io/canonical-revision"] == "latest"


def test_hpa_arithmetic_is_kube_s() -> None:
    assert quantity("250m") == 0.25
    assert quantity("1") == 1.0
    assert quantity("128Mi") == 128 * 1024**2
    assert _propose(1.05, 5.25, 5) == 5  # within the 0.1 tolerance: no change
    assert _propose(2.0, 4.0, 2) == 4
    assert _propose(0.2, 0.6, 3) == 1
