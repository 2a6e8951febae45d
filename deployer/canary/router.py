"""The traffic router port (Flagger's `router.Interface`, pure): which objects route a release's Services, at a
weight, and the weights a live routing object states. The pipeline applies what a router builds through the kube
adapter; Istio (canary/istio.py) is the first implementation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from deployer.canary.objects import CanaryTarget


@dataclass(frozen=True)
class Routing:
    """What an environment asks of its routes: gateways to bind besides the mesh, and extra hosts."""

    gateways: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    provider: str = "istio"  # or gateway-api: which API the routes are written in


class Router(Protocol):
    @property
    def api_version(self) -> str:
        """The apiVersion of the routing objects it writes (what the cluster serves)."""

    @property
    def kind(self) -> str:
        """The kind of the routing objects it writes."""

    def check(self, objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> None:
        """Refuse, with one DeployError naming it, a rendered routing object the router can neither adopt nor
        leave alone."""

    def adopted(self, objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> set[tuple[str, str]]:
        """(kind, name) of the rendered objects whose weights the router manages: applied only through routes()."""

    def routes(
        self, objects: list[dict[str, Any]], targets: list[CanaryTarget], weight: int | None
    ) -> list[dict[str, Any]]:
        """Every routing object at `weight` percent to the canaries; None: stable only, no canary named."""

    def check_host(self, objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> str | None:
        """A host that a named gateway routes to the canary for checks (pinned by a header), if one does."""

    def weights(self, live: dict[str, Any], target: CanaryTarget) -> tuple[int, int] | None:
        """(stable, canary) as a live routing object states them for `target`, None if it does not route it."""
