"""The Gateway API router: HTTPRoutes (gateway.networking.k8s.io/v1) whose backendRefs split a Service's traffic
between `S` (the primaries) and `S-canary` by weight, for any Gateway API implementation (Flagger's
pkg/router/gateway_api.go does the same with its -primary and -canary Services).

Two kinds of parent (kubernetes-sigs/gateway-api apis/v1/shared_types.go ParentReference):
- the Service itself (GAMMA, the mesh: group "" and kind Service): requests inside the mesh for S's host follow
  the route; the deployer's own mesh route is named after the Service;
- Gateways (the environment's `canary.gateways`, NAMESPACE/NAME): requests through them for `canary.hosts`;
  the deployer's own route for them is `S-gateway`.
An HTTPRoute the chart renders whose rules send to the Service (one backendRef per rule, as for Istio) is
adopted: everything in it is kept and only those rules' backendRefs change. A backendRef to a Service needs a
port (the CRD's CEL rule), so the deployer's own routes send to the Service's HTTP port (named `http`, else its
first); rules the deployer writes match every path (PathPrefix /), and for each weighted rule a rule with its
matches and PIN_HEADER (one more header match: it wins by the spec's precedence) sends checks to the canary
whatever the weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from deployer.canary.istio import PIN_HEADER, Reach
from deployer.canary.objects import CanaryTarget
from deployer.canary.router import Routing
from deployer.errors import DeployError

GROUP = "gateway.networking.k8s.io"
API_VERSION = f"{GROUP}/v1"
KIND = "HTTPRoute"
PIN_RULE = "deployer-canary-pin"
ROUTE = "deployer"
EVERY_PATH: list[dict[str, Any]] = [{"path": {"type": "PathPrefix", "value": "/"}}]


def _backend_is(ref: dict[str, Any], service: str, namespace: str, route_namespace: str) -> bool:
    return (
        ref.get("group", "") == ""
        and ref.get("kind", "Service") == "Service"
        and ref.get("name") == service
        and ref.get("namespace", route_namespace) == namespace
    )


def _parents(route: dict[str, Any]) -> list[dict[str, Any]]:
    return list((route.get("spec") or {}).get("parentRefs") or [])


def _mesh_bound(route: dict[str, Any], target: CanaryTarget) -> bool:
    """Whether a route has the Service as a parent (GAMMA): it routes the mesh's requests for the Service."""
    namespace = route["metadata"].get("namespace") or target.namespace
    return any(
        p.get("group") == ""
        and p.get("kind") == "Service"
        and p.get("name") == target.service
        and p.get("namespace", namespace) == target.namespace
        for p in _parents(route)
    )


def http_port(objects: list[dict[str, Any]], target: CanaryTarget) -> int:
    """The port the deployer's own routes send to: the Service's port named http, else its first."""
    service = next((o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == target.service), None)
    ports = ((service or {}).get("spec") or {}).get("ports") or []
    if not ports:
        raise DeployError(f"Service {target.service} has no port to route to", where="canary")
    named = next((p for p in ports if p.get("name") == "http"), ports[0])
    return int(named["port"])


@dataclass(frozen=True)
class GatewayRouter:
    api_version: str = API_VERSION
    routing: Routing = field(default_factory=Routing)
    labels: dict[str, str] = field(default_factory=dict)
    kind: str = KIND

    def _routing_to(self, objects: list[dict[str, Any]], target: CanaryTarget) -> list[dict[str, Any]]:
        return [
            o
            for o in objects
            if o["kind"] == KIND
            and str(o.get("apiVersion", "")).startswith(f"{GROUP}/")
            and any(
                _backend_is(ref, target.service, target.namespace, o["metadata"].get("namespace") or target.namespace)
                for rule in (o.get("spec") or {}).get("rules") or []
                for ref in rule.get("backendRefs") or []
            )
        ]

    def _needs_mesh_route(self, objects: list[dict[str, Any]], target: CanaryTarget) -> bool:
        return not any(_mesh_bound(r, target) for r in self._routing_to(objects, target))

    def check(self, objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> None:
        own = {t.service for t in targets if self._needs_mesh_route(objects, t)}
        own |= {f"{t.service}-gateway" for t in targets if self.routing.gateways}
        for route in (o for o in objects if o["kind"] == KIND):
            name = route["metadata"]["name"]
            if name in own:
                raise DeployError(
                    f"HTTPRoute {name}: the deployer routes with an HTTPRoute of this name; rename the chart's, "
                    "or give it the Service as a parent (GAMMA) so that it is adopted",
                    where="canary",
                )
            for target in targets:
                namespace = route["metadata"].get("namespace") or target.namespace
                for rule in (route.get("spec") or {}).get("rules") or []:
                    refs = rule.get("backendRefs") or []
                    if len(refs) > 1 and any(_backend_is(r, target.service, target.namespace, namespace) for r in refs):
                        names = ", ".join(str(r.get("name")) for r in refs)
                        raise DeployError(
                            f"HTTPRoute {name}: a rule splits traffic between {names}; the deployer manages the "
                            f"weights of rules to Service {target.service} only when such a rule has one backendRef",
                            where="canary",
                        )

    def adopted(self, objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> set[tuple[str, str]]:
        return {(KIND, r["metadata"]["name"]) for t in targets for r in self._routing_to(objects, t)}

    def routes(
        self, objects: list[dict[str, Any]], targets: list[CanaryTarget], weight: int | None
    ) -> list[dict[str, Any]]:
        if weight is not None and not 0 <= weight <= 100:
            raise ValueError(f"canary weight {weight} is outside 0..100")
        out: dict[str, dict[str, Any]] = {}
        for target in targets:
            for route in self._routing_to(objects, target):
                name = route["metadata"]["name"]
                out[name] = _weighted(out.get(name, route), target, weight)
            port = None
            if self._needs_mesh_route(objects, target):
                port = http_port(objects, target)
                mesh = [{"group": "", "kind": "Service", "name": target.service}]
                out[target.service] = self._own(
                    target.service, target, parents=mesh, hostnames=[], port=port, weight=weight
                )
            if self.routing.gateways:
                port = port or http_port(objects, target)
                parents = [
                    {"group": GROUP, "kind": "Gateway", "namespace": g.split("/")[0], "name": g.split("/")[1]}
                    for g in self.routing.gateways
                ]
                name = f"{target.service}-gateway"
                out[name] = self._own(
                    name, target, parents=parents, hostnames=list(self.routing.hosts), port=port, weight=weight
                )
        return list(out.values())

    def _own(
        self,
        name: str,
        target: CanaryTarget,
        *,
        parents: list[dict[str, Any]],
        hostnames: list[str],
        port: int,
        weight: int | None,
    ) -> dict[str, Any]:
        stable = {"group": "", "kind": "Service", "name": target.service, "port": port}
        spec: dict[str, Any] = {"parentRefs": parents}
        if hostnames:
            spec["hostnames"] = hostnames
        rules = [_pinned(stable, target)] if weight is not None else []
        rules.append({"name": ROUTE, "matches": EVERY_PATH, "backendRefs": _split(stable, target, weight)})
        spec["rules"] = rules
        return {
            "apiVersion": self.api_version,
            "kind": KIND,
            "metadata": {"name": name, "namespace": target.namespace, "labels": dict(self.labels)},
            "spec": spec,
        }

    def check_host(self, objects: list[dict[str, Any]], targets: list[CanaryTarget]) -> str | None:
        """A host a Gateway routes to the canary for requests carrying PIN_HEADER, if a Gateway does."""
        if self.routing.gateways and self.routing.hosts:
            return self.routing.hosts[0]
        for target in targets:
            for route in self._routing_to(objects, target):
                hostnames = (route.get("spec") or {}).get("hostnames") or []
                gateway_bound = any(p.get("kind", "Gateway") == "Gateway" for p in _parents(route))
                if gateway_bound and hostnames and "*" not in hostnames[0]:
                    return str(hostnames[0])
        return None

    def weights(self, live: dict[str, Any], target: CanaryTarget) -> tuple[int, int] | None:
        namespace = live["metadata"].get("namespace") or target.namespace
        for rule in (live.get("spec") or {}).get("rules") or []:
            if str(rule.get("name", "")).startswith(PIN_RULE):
                continue
            refs = rule.get("backendRefs") or []
            if not any(_backend_is(r, target.service, target.namespace, namespace) for r in refs):
                continue
            total = sum(int(r.get("weight", 1)) for r in refs)
            canary = sum(
                int(r.get("weight", 1))
                for r in refs
                if _backend_is(r, target.canary_service, target.namespace, namespace)
            )
            share = round(100 * canary / total) if total else 0
            return 100 - share, share
        return None


def _split(stable: dict[str, Any], target: CanaryTarget, weight: int | None) -> list[dict[str, Any]]:
    if weight is None:
        return [dict(stable)]
    canary = {**stable, "name": target.canary_service}
    return [{**stable, "weight": 100 - weight}, {**canary, "weight": weight}]


def _pinned(
    stable: dict[str, Any], target: CanaryTarget, matches: list[dict[str, Any]] | None = None, index: int = 0
) -> dict[str, Any]:
    """The rule that sends requests carrying PIN_HEADER to the canary: the weighted rule's own matches with the
    header added, so that by the spec's precedence (one more header match) it wins wherever that rule would."""
    pin = {"type": "Exact", "name": PIN_HEADER, "value": "true"}
    return {
        "name": PIN_RULE if index == 0 else f"{PIN_RULE}-{index + 1}",
        "matches": [
            {**m, "headers": [*(h for h in m.get("headers") or [] if h.get("name") != PIN_HEADER), pin]}
            for m in (matches or EVERY_PATH)
        ],
        "backendRefs": [{**stable, "name": target.canary_service}],
    }


def _weighted(route: dict[str, Any], target: CanaryTarget, weight: int | None) -> dict[str, Any]:
    out = copy.deepcopy(route)
    out["apiVersion"] = API_VERSION
    namespace = out["metadata"].get("namespace") or target.namespace
    rules = (out.get("spec") or {}).get("rules") or []
    pins: list[dict[str, Any]] = []
    for rule in rules:
        refs = rule.get("backendRefs") or []
        if len(refs) == 1 and _backend_is(refs[0], target.service, target.namespace, namespace):
            stable = {k: v for k, v in refs[0].items() if k != "weight"}
            if weight is not None:
                pins.append(_pinned(stable, target, rule.get("matches"), len(pins)))
            rule["backendRefs"] = _split(stable, target, weight)
    if pins:
        out["spec"]["rules"] = [*pins, *rules]
    return out


# --- reach ------------------------------------------------------------------------------------------------------


def gateway_api_claims(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(subject, host|gateway, value) that a Gateway API object claims: an HTTPRoute's hostnames and the Gateways
    it attaches to (NAMESPACE/NAME), a Gateway's listeners' hostnames (none: every host)."""
    if not str(obj.get("apiVersion", "")).startswith(f"{GROUP}/"):
        return []
    subject = f"{obj['kind']}/{obj['metadata']['name']}"
    namespace = obj["metadata"].get("namespace", "")
    spec = obj.get("spec") or {}
    if obj["kind"] == "Gateway":
        return [(subject, "host", str(listener.get("hostname") or "")) for listener in spec.get("listeners") or []]
    if obj["kind"] not in (KIND, "GRPCRoute", "TLSRoute", "TCPRoute"):
        return []
    claims = [(subject, "host", str(h)) for h in spec.get("hostnames") or []]
    for parent in spec.get("parentRefs") or []:
        if parent.get("group", GROUP) == GROUP and parent.get("kind", "Gateway") == "Gateway":
            claims.append((subject, "gateway", f"{parent.get('namespace') or namespace}/{parent.get('name')}"))
    return claims


def refuse_foreign_routes(objects: list[dict[str, Any]], *, namespace: str, reach: Reach) -> None:
    """Refuse, in one line naming the object and the value, a Gateway API object that attaches to a Gateway of
    another namespace or claims a host that server.yaml does not grant the app (a Gateway in the app's own
    namespace is its own; its listeners' hosts are claims all the same)."""
    for obj in objects:
        for subject, what, value in gateway_api_claims(obj):
            if what == "gateway":
                allowed = value.split("/")[0] == namespace or value in reach.gateways
                granted = f"gateways {', '.join(reach.gateways) or 'none'} and those of namespace {namespace}"
            else:
                allowed = reach.allows_host(value, namespace)
                granted = f"the Services of namespace {namespace} and hosts {', '.join(reach.hosts) or 'none'}"
            if not allowed:
                shown = value or "* (a listener without a hostname)"
                raise DeployError(
                    f"{subject} claims {what} {shown!r}, which server.yaml does not grant this app (it grants "
                    f"{granted}); an operator adds it under apps.<app>.routes",
                    where="rendered objects",
                )
