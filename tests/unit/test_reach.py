"""What an app's routing objects may claim beyond its namespace (canary/istio.py `refuse_foreign`): another app's
host or a shared gateway only where server.yaml grants it, refused in one line naming the object and the value."""

from __future__ import annotations

import re
from typing import Any

import pytest

from deployer.canary.istio import Reach, gateway_ref, refuse_foreign
from deployer.canary.router import Routing
from deployer.errors import DeployError

NS = "hello-staging"
GRANT = Reach(gateways=("istio-system/public",), hosts=("hello.example.com", "*.hello.example.com"))


def istio(kind: str, spec: dict[str, Any], name: str = "web") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize(
    "host",
    [
        "web",
        f"web.{NS}",
        f"web.{NS}.svc",
        f"web.{NS}.svc.cluster.local",
        f"*.{NS}.svc.cluster.local",
        "hello.example.com",
        "api.hello.example.com",
        "*.hello.example.com",
        "a.b.hello.example.com",
    ],
)
def test_own_services_and_granted_hosts_are_allowed(host: str) -> None:
    refuse_foreign([istio("VirtualService", {"hosts": [host], "http": []})], Routing(), namespace=NS, reach=GRANT)


@pytest.mark.parametrize(
    "host",
    [
        "*",
        "payments.prod.svc.cluster.local",
        "payments.prod",
        "*.svc.cluster.local",
        "example.com",
        "evilhello.example.com",
        "hello.example.com.evil.io",
        f"*.{NS}",
        "login.bank.com",
    ],
)
def test_other_hosts_are_refused_in_every_routing_kind(host: str) -> None:
    for obj in (
        istio("VirtualService", {"hosts": [host]}),
        istio("DestinationRule", {"host": host}),
        istio("ServiceEntry", {"hosts": [host]}),
        istio("Gateway", {"servers": [{"port": {"number": 80}, "hosts": [f"{NS}/{host}"]}]}),
    ):
        with pytest.raises(DeployError, match=re.escape(f"{obj['kind']}/web claims host '{host}'")):
            refuse_foreign([obj], Routing(), namespace=NS, reach=GRANT)


@pytest.mark.parametrize(
    ("gateway", "allowed"),
    [
        ("mesh", True),
        ("istio-system/public", True),
        ("public.istio-system.svc.cluster.local", True),
        ("istio-system/private", False),
        ("public", False),
        ("other/public", False),
    ],
)
def test_gateways_are_allowed_as_granted_in_any_form_a_virtual_service_names_them(gateway: str, allowed: bool) -> None:
    route = istio("VirtualService", {"hosts": ["web"], "gateways": [gateway]})
    matched = istio("VirtualService", {"hosts": ["web"], "http": [{"match": [{"gateways": [gateway]}]}]})
    for obj in (route, matched):
        if allowed:
            refuse_foreign([obj], Routing(), namespace=NS, reach=GRANT)
        else:
            with pytest.raises(DeployError, match=f"claims gateway '{gateway}'.*grants gateways istio-system/public"):
                refuse_foreign([obj], Routing(), namespace=NS, reach=GRANT)


def test_deploy_yaml_canary_gateways_and_hosts_need_the_grant_too() -> None:
    refuse_foreign([], Routing(("istio-system/public",), ("hello.example.com",)), namespace=NS, reach=GRANT)
    with pytest.raises(
        DeployError,
        match=re.escape("deploy.yaml: canary.hosts: host 'shop.example.com', which server.yaml does not grant"),
    ) as refused:
        refuse_foreign([], Routing(("istio-system/public",), ("shop.example.com",)), namespace=NS, reach=GRANT)
    assert refused.value.where == "deploy.yaml: canary.hosts"
    with pytest.raises(DeployError, match=re.escape("canary.gateways: gateway 'istio-system/admin'")):
        refuse_foreign(
            [], Routing(("istio-system/admin",), ("hello.example.com",)), namespace=NS, reach=Reach(hosts=GRANT.hosts)
        )


def test_nothing_beyond_the_namespace_is_granted_by_default_and_other_kinds_are_not_routing() -> None:
    with pytest.raises(DeployError, match="grants the Services of namespace hello-staging and hosts none"):
        refuse_foreign(
            [istio("VirtualService", {"hosts": ["hello.example.com"]})], Routing(), namespace=NS, reach=Reach()
        )
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"hosts": "*"}}
    refuse_foreign([config], Routing(), namespace=NS, reach=Reach())


def test_gateway_refs_resolve_like_istio() -> None:
    assert gateway_ref("public", "apps") == "apps/public"
    assert gateway_ref("istio-system/public", "apps") == "istio-system/public"
    assert gateway_ref("public.istio-system.svc.cluster.local", "apps") == "istio-system/public"
