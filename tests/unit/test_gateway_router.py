"""The Gateway API router: the HTTPRoutes it writes (a GAMMA route for the mesh, one for the environment's
Gateways), a chart's own HTTPRoute adopted with only its weights changed, the weights read back, and what it
refuses; reach: Gateways of other namespaces and hosts only where server.yaml grants them."""

from __future__ import annotations

import re
from typing import Any

import pytest

from deployer.canary.gateway import PIN_RULE, GatewayRouter, refuse_foreign_routes
from deployer.canary.istio import PIN_HEADER, Reach
from deployer.canary.objects import CanaryTarget
from deployer.canary.router import Routing
from deployer.errors import DeployError

TARGET = CanaryTarget("web", "web", "shop")
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop"},
    "spec": {"ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 80}]},
}


def chart_route(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "public", "namespace": "shop"},
        "spec": {
            "parentRefs": [{"name": "edge", "namespace": "infra"}],
            "hostnames": ["shop.example.com"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                    "backendRefs": [{"name": "api", "port": 8080}],
                },
                {"backendRefs": [{"name": "web", "port": 80}]},
            ],
            **spec,
        },
    }


def test_its_own_mesh_route_splits_the_services_http_port_and_pins_checks_to_the_canary() -> None:
    router = GatewayRouter(labels={"owner": "deployer"})
    [mesh] = router.routes([SERVICE], [TARGET], 20)
    assert mesh["metadata"] == {"name": "web", "namespace": "shop", "labels": {"owner": "deployer"}}
    assert mesh["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "web"}]
    pin, split = mesh["spec"]["rules"]
    assert pin["name"] == PIN_RULE
    assert pin["matches"][0]["headers"] == [{"type": "Exact", "name": PIN_HEADER, "value": "true"}]
    assert pin["backendRefs"] == [{"group": "", "kind": "Service", "name": "web-canary", "port": 80}]
    assert split["backendRefs"] == [
        {"group": "", "kind": "Service", "name": "web", "port": 80, "weight": 80},
        {"group": "", "kind": "Service", "name": "web-canary", "port": 80, "weight": 20},
    ]
    assert router.weights(mesh, TARGET) == (80, 20)
    [stable] = router.routes([SERVICE], [TARGET], None)
    assert [r.get("name") for r in stable["spec"]["rules"]] == ["deployer"], "no canary named, no pin"
    assert stable["spec"]["rules"][0]["backendRefs"] == [{"group": "", "kind": "Service", "name": "web", "port": 80}]
    assert router.weights(stable, TARGET) == (100, 0)


def test_the_environments_gateways_get_a_route_of_their_own_for_its_hosts() -> None:
    router = GatewayRouter(routing=Routing(("infra/edge",), ("shop.example.com",), "gateway-api"))
    routes = {r["metadata"]["name"]: r for r in router.routes([SERVICE], [TARGET], 50)}
    assert sorted(routes) == ["web", "web-gateway"]
    public = routes["web-gateway"]["spec"]
    assert public["parentRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "edge"}
    ]
    assert public["hostnames"] == ["shop.example.com"]
    assert router.check_host([SERVICE], [TARGET]) == "shop.example.com"


def test_a_charts_route_is_adopted_and_only_its_rule_to_the_service_changes() -> None:
    router = GatewayRouter()
    gamma = chart_route(parentRefs=[{"group": "", "kind": "Service", "name": "web"}], hostnames=None)
    objects = [SERVICE, gamma]
    router.check(objects, [TARGET])
    assert router.adopted(objects, [TARGET]) == {("HTTPRoute", "public")}
    [adopted] = router.routes(objects, [TARGET], 10)  # mesh-bound: no route of the deployer's own
    rules = adopted["spec"]["rules"]
    assert [r.get("name") for r in rules] == [PIN_RULE, None, None]
    assert rules[1] == gamma["spec"]["rules"][0], "the rule to another Service is untouched"
    assert [(b["name"], b["weight"]) for b in rules[2]["backendRefs"]] == [("web", 90), ("web-canary", 10)]
    assert router.weights(adopted, TARGET) == (90, 10)
    # a rule to the Service with its own match: the pin has the same match and the header, so it wins there
    api_rule = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
        "backendRefs": [{"name": "web", "port": 80}],
    }
    both = chart_route(
        parentRefs=[{"group": "", "kind": "Service", "name": "web"}],
        rules=[api_rule, {"backendRefs": [{"name": "web", "port": 80}]}],
    )
    [pinned] = router.routes([SERVICE, both], [TARGET], 10)
    pins = [r for r in pinned["spec"]["rules"] if r.get("name", "").startswith(PIN_RULE)]
    assert [p["name"] for p in pins] == [PIN_RULE, f"{PIN_RULE}-2"]
    assert pins[0]["matches"] == [
        {
            "path": {"type": "PathPrefix", "value": "/api"},
            "headers": [{"type": "Exact", "name": PIN_HEADER, "value": "true"}],
        }
    ]
    assert all(b["name"] == "web-canary" for p in pins for b in p["backendRefs"])
    assert router.weights(pinned, TARGET) == (90, 10)
    # a gateway-only route is adopted too, and the mesh gets the deployer's own
    names = sorted(r["metadata"]["name"] for r in router.routes([SERVICE, chart_route()], [TARGET], 10))
    assert names == ["public", "web"]


def test_routes_it_cannot_manage_are_refused_in_one_line() -> None:
    router = GatewayRouter()
    named = {**chart_route(), "metadata": {"name": "web", "namespace": "shop"}}
    with pytest.raises(DeployError, match="HTTPRoute web: the deployer routes with an HTTPRoute of this name"):
        router.check([SERVICE, named], [TARGET])
    split = chart_route()
    split["spec"]["rules"][1]["backendRefs"].append({"name": "legacy", "port": 80})
    with pytest.raises(DeployError, match="a rule splits traffic between web, legacy"):
        router.check([SERVICE, split], [TARGET])
    with pytest.raises(DeployError, match="Service web has no port to route to"):
        router.routes([{**SERVICE, "spec": {"ports": []}}], [TARGET], 10)


def test_reach_refuses_another_namespaces_gateway_and_ungranted_hosts() -> None:
    route = chart_route()
    with pytest.raises(DeployError, match=re.escape("HTTPRoute/public claims host 'shop.example.com'")):
        refuse_foreign_routes([route], namespace="shop", reach=Reach(gateways=("infra/edge",)))
    with pytest.raises(DeployError, match=re.escape("HTTPRoute/public claims gateway 'infra/edge'")):
        refuse_foreign_routes([route], namespace="shop", reach=Reach(hosts=("shop.example.com",)))
    refuse_foreign_routes([route], namespace="shop", reach=Reach(("infra/edge",), ("shop.example.com",)))
    own = chart_route(parentRefs=[{"name": "mine"}], hostnames=["web.shop.svc.cluster.local"])
    refuse_foreign_routes([own], namespace="shop", reach=Reach())  # its own namespace's Gateway and Service name
    listener_for_all = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "mine", "namespace": "shop"},
        "spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
    }
    with pytest.raises(DeployError, match="Gateway/mine claims host '\\* \\(a listener without a hostname\\)'"):
        refuse_foreign_routes([listener_for_all], namespace="shop", reach=Reach())
