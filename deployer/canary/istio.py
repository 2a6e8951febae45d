"""The Istio router: VirtualServices that split a Service's host between `S` (the primaries) and `S-canary`.

Routing by host rather than by subset needs no DestinationRule, so a chart's own DestinationRule is never
written over. A VirtualService the chart renders that routes to the Service (one destination per route, as
Argo Rollouts requires of the routes it manages: rollout/trafficrouting/istio/istio.go) is adopted: everything
in it is kept and only the weights of its routes to the Service change. Otherwise the deployer's own
VirtualService, named after the Service, binds the mesh and the environment's gateways (a VirtualService
without `gateways` binds `mesh` only: istio/api networking/v1alpha3/virtual_service.proto).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from deployer.canary.objects import CanaryTarget
from deployer.canary.router import Routing
from deployer.errors import DeployError

GROUP = "networking.istio.io"
VERSIONS = ("v1", "v1beta1")  # v1 from Istio 1.22; v1beta1 since 1.5
KIND = "VirtualService"
ROUTE = "deployer"
# While a canary runs, requests with this header go to it whatever the weights (Flagger's A/B match): how HTTP
# checks reach the canary through the mesh. Anyone in the mesh may send it, so it selects only the candidate.
PIN_HEADER = "x-deployer-canary"


def _names_service(host: str, target: CanaryTarget) -> bool:
    """Whether a destination host is the Service (short names resolve in the VirtualService's namespace)."""
    service, namespace = target.service, target.namespace
    return host in (service, f"{service}.{namespace}", f"{service}.{namespace}.svc", target.host)


def _mesh_bound(virtual: dict[str, Any]) -> bool:
    gateways = (virtual.get("spec") or {}).get("gateways") or []
    return not gateways or "mesh" in gateways


@dataclass(frozen=True)
class IstioRouter:
    api_version: str = f"{GROUP}/v1"
    routing: Routing = field(default_factory=Routing)
    labels: dict[str, str] = field(default_factory=dict)
    kind: str = KIND

    def _routing_to(self, objects: list[dict[str, Any]], target: CanaryTarget) -> list[dict[str, Any]]:
        return [
            o
            for o in objects
            if o["kind"] == KIND
            and any(
                _names_service(str((d.get("destination") or {}).get("host", "")), target)
                for http in (o.get("spec") or {}).get("http") or []
                for d in http.get("route") or []
            )
        ]

    def check(self, objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> None:
        own = {t.service for t in targets if self._needs_own(objects, t)}
        for virtual in (o for o in objects if o["kind"] == KIND):
            name = virtual["metadata"]["name"]
            if name in own:
                raise DeployError(
                    f"VirtualService {name}: the deployer routes Service {name} with a VirtualService of this name "
                    "(for the mesh); rename the chart's, or bind it to the mesh so that it is adopted",
                    where="canary",
                )
            for target in targets:
                for http in (virtual.get("spec") or {}).get("http") or []:
                    route = http.get("route") or []
                    hosts = [str((d.get("destination") or {}).get("host", "")) for d in route]
                    if len(route) > 1 and any(_names_service(h, target) for h in hosts):
                        raise DeployError(
                            f"VirtualService {name}: a route splits traffic between {', '.join(hosts)}; the "
                            f"deployer manages the weights of routes to Service {target.service} only when such a "
                            "route has one destination",
                            where="canary",
                        )

    def _needs_own(self, objects: list[dict[str, Any]], target: CanaryTarget) -> bool:
        adopted = self._routing_to(objects, target)
        return bool(self.routing.gateways) or not any(_mesh_bound(v) for v in adopted)

    def adopted(self, objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> set[tuple[str, str]]:
        return {(KIND, v["metadata"]["name"]) for t in targets for v in self._routing_to(objects, t)}

    def routes(
        self, objects: list[dict[str, Any]], targets: list[CanaryTarget], weight: int | None
    ) -> list[dict[str, Any]]:
        if weight is not None and not 0 <= weight <= 100:
            raise ValueError(f"canary weight {weight} is outside 0..100")
        out: dict[str, dict[str, Any]] = {}
        for target in targets:
            for virtual in self._routing_to(objects, target):
                name = virtual["metadata"]["name"]
                out[name] = _weighted(out.get(name, virtual), target, weight, self.api_version)
            if self._needs_own(objects, target):
                out[target.service] = self._own(target, weight)
        return list(out.values())

    def _own(self, target: CanaryTarget, weight: int | None) -> dict[str, Any]:
        spec: dict[str, Any] = {"hosts": [target.service, *self.routing.hosts]}
        if self.routing.gateways:
            spec["gateways"] = [*self.routing.gateways, "mesh"]
        spec["http"] = [
            *([_pinned({"host": target.host}, target)] if weight is not None else []),
            {"name": ROUTE, "route": _split({"host": target.host}, target, weight)},
        ]
        return {
            "apiVersion": self.api_version,
            "kind": KIND,
            "metadata": {"name": target.service, "namespace": target.namespace, "labels": dict(self.labels)},
            "spec": spec,
        }

    def check_host(self, objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> str | None:
        """A host that a gateway routes to the canary for requests carrying PIN_HEADER, if a gateway does."""
        if self.routing.gateways and self.routing.hosts:
            return self.routing.hosts[0]
        for target in targets:
            for virtual in self._routing_to(objects, target):
                hosts = (virtual.get("spec") or {}).get("hosts") or []
                if not _mesh_bound(virtual) and hosts and "*" not in hosts[0]:
                    return str(hosts[0])
        return None

    def weights(self, live: dict[str, Any], target: CanaryTarget) -> tuple[int, int] | None:
        for http in (live.get("spec") or {}).get("http") or []:
            if http.get("name") == PIN_ROUTE:
                continue
            route = http.get("route") or []
            hosts = [str((d.get("destination") or {}).get("host", "")) for d in route]
            if any(_names_service(h, target) for h in hosts):
                canary = sum(
                    int(d.get("weight", 0)) for d, h in zip(route, hosts, strict=True) if h == target.canary_host
                )
                return 100 - canary, canary
        return None


def _split(destination: dict[str, Any], target: CanaryTarget, weight: int | None) -> list[dict[str, Any]]:
    """A route to the Service at `weight` percent to its canary (the canary copy keeps the port, not a subset:
    subsets select the primaries' labels)."""
    if weight is None:
        return [{"destination": destination}]
    canary = {"host": target.canary_host, **({"port": destination["port"]} if "port" in destination else {})}
    return [{"destination": destination, "weight": 100 - weight}, {"destination": canary, "weight": weight}]


PIN_ROUTE = "deployer-canary-pin"


def _pinned(destination: dict[str, Any], target: CanaryTarget) -> dict[str, Any]:
    canary = {"host": target.canary_host, **({"port": destination["port"]} if "port" in destination else {})}
    return {
        "name": PIN_ROUTE,
        "match": [{"headers": {PIN_HEADER: {"exact": "true"}}}],
        "route": [{"destination": canary}],
    }


def _weighted(virtual: dict[str, Any], target: CanaryTarget, weight: int | None, api_version: str) -> dict[str, Any]:
    out = copy.deepcopy(virtual)
    out["apiVersion"] = api_version
    http_routes = (out.get("spec") or {}).get("http") or []
    pins: list[dict[str, Any]] = []
    for http in http_routes:
        route = http.get("route") or []
        if len(route) == 1 and _names_service(str((route[0].get("destination") or {}).get("host", "")), target):
            if weight is not None and not pins:
                pins.append(_pinned(route[0]["destination"], target))
            http["route"] = _split(route[0]["destination"], target, weight)
    if pins:
        out["spec"]["http"] = [*pins, *http_routes]
    return out


# --- reach: which hosts and gateways an app's routing objects may claim (server.yaml grants them) ---------------
# An Istio routing object is not confined to its namespace: a VirtualService for another app's host, exported to
# every namespace by default, routes every sidecar's requests for that host, and one bound to a shared gateway
# serves that host to the world; a Gateway in any namespace configures the ingress pods it selects, and a
# ServiceEntry or DestinationRule changes how every client reaches a host (istio/istio
# pilot/pkg/model/push_context.go: VirtualServices, DestinationRules and ServiceEntries are merged across
# namespaces by exportTo; Gateways by their workload selector).
HOSTED = {"VirtualService": "hosts", "DestinationRule": "host", "ServiceEntry": "hosts", "Gateway": "servers"}


@dataclass(frozen=True)
class Reach:
    """What server.yaml lets an app's routes claim besides its namespace's own Services: Istio Gateways
    (NAMESPACE/NAME) to bind, and hosts (`name.example.com`, or `*.example.com` for any name under it)."""

    gateways: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    def allows_host(self, host: str, namespace: str) -> bool:
        if host in ("", "*"):
            return False  # every host
        if "." not in host or host == f"*.{namespace}.svc.cluster.local":
            return True  # a short name resolves in the object's namespace; `*.NS.svc.cluster.local` is NS's own
        name, _, rest = host.partition(".")
        if rest in (namespace, f"{namespace}.svc", f"{namespace}.svc.cluster.local") and name != "*":
            return True
        return any(
            host == allowed or (allowed.startswith("*.") and host.endswith(allowed[1:])) for allowed in self.hosts
        )

    def allows_gateway(self, gateway: str, namespace: str) -> bool:
        return gateway == "mesh" or gateway_ref(gateway, namespace) in self.gateways


def gateway_ref(gateway: str, namespace: str) -> str:
    """NAMESPACE/NAME of a gateway as a VirtualService names it: NAME is in the VirtualService's namespace; the
    legacy NAME.NAMESPACE.svc.cluster.local form too (istio/istio pilot/pkg/model/virtualservice.go)."""
    if "/" in gateway:
        return gateway
    if gateway.endswith(".svc.cluster.local"):
        name, ns, *_ = gateway.split(".")
        return f"{ns}/{name}"
    return f"{namespace}/{gateway}"


def refuse_foreign(
    objects: list[dict[str, Any]],
    routing: Routing,
    *,
    namespace: str,
    reach: Reach,
    policy: str = "deploy.yaml: canary",
) -> None:
    """Refuse, in one line naming the object and the value, a routing object (or the environment's
    canary.gateways/hosts, at `policy`) that claims a host or gateway server.yaml does not grant the app."""
    claims: list[tuple[str, str, str]] = [("canary.hosts", "host", h) for h in routing.hosts]
    claims += [("canary.gateways", "gateway", g) for g in routing.gateways]
    for obj in objects:
        if obj.get("kind") not in HOSTED or not str(obj.get("apiVersion", "")).startswith(f"{GROUP}/"):
            continue
        subject = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = obj.get("spec") or {}
        if obj["kind"] == "DestinationRule":
            claims.append((subject, "host", str(spec.get("host", ""))))
        elif obj["kind"] == "Gateway":
            claims += [
                (subject, "host", str(h).split("/", 1)[-1])
                for server in spec.get("servers") or []
                for h in server.get("hosts") or []
            ]
        else:
            claims += [(subject, "host", str(h)) for h in spec.get("hosts") or []]
        if obj["kind"] == "VirtualService":
            gateways = [*(spec.get("gateways") or [])]
            gateways += [
                g for http in spec.get("http") or [] for m in http.get("match") or [] for g in m.get("gateways") or []
            ]
            claims += [(subject, "gateway", str(g)) for g in gateways]
    for subject, what, value in claims:
        allowed = reach.allows_host(value, namespace) if what == "host" else reach.allows_gateway(value, namespace)
        if allowed:
            continue
        granted = (
            f"gateways {', '.join(reach.gateways) or 'none'}"
            if what == "gateway"
            else f"the Services of namespace {namespace} and hosts {', '.join(reach.hosts) or 'none'}"
        )
        mine = subject.startswith("canary.")
        raise DeployError(
            f"{'' if mine else subject + ' claims '}{what} {value!r}, which server.yaml does not grant this app "
            f"(it grants {granted}); an operator adds it under apps.<app>.routes",
            where=f"{policy}.{subject.partition('.')[2]}" if mine else "rendered objects",
        )
