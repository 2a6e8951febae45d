"""The deployer's weighted route in a VirtualService or an HTTPRoute, as the canary tests read it."""

from __future__ import annotations

from typing import Any


def split(route: list[dict[str, Any]]) -> list[int]:
    """[stable, canary] weights of a deployer route: one destination (the Service, so the primaries) is all stable."""
    if len(route) == 1:
        return [100, 0]
    return [int(r["weight"]) for r in route]


def routed(virtual_service: dict[str, Any]) -> dict[str, Any]:
    """The deployer's weighted route of a VirtualService (past the route that pins the canary for checks)."""
    return next(h for h in virtual_service["spec"]["http"] if h.get("name") != "deployer-canary-pin")


def vs_split(virtual_service: dict[str, Any]) -> list[int]:
    return split(routed(virtual_service)["route"])


def httproute_split(route: dict[str, Any]) -> list[int]:
    """[stable, canary] percent of the deployer's weighted rule of an HTTPRoute (past the rule that pins the
    canary for checks); one backendRef is all stable."""
    rule = next(r for r in route["spec"]["rules"] if not str(r.get("name", "")).startswith("deployer-canary-pin"))
    refs = rule["backendRefs"]
    if len(refs) == 1:
        return [100, 0]
    total = sum(int(r.get("weight", 1)) for r in refs)
    canary = sum(int(r.get("weight", 1)) for r in refs if r["name"].endswith("-canary"))
    return [100 - round(100 * canary / total), round(100 * canary / total)]


ROUTES = {  # provider -> (group, version, plural, the split it states)
    "istio": ("networking.istio.io", "v1", "virtualservices", vs_split),
    "gateway-api": ("gateway.networking.k8s.io", "v1", "httproutes", httproute_split),
}
