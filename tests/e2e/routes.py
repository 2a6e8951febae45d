"""The deployer's weighted route in a VirtualService, as the canary tests read it."""

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
