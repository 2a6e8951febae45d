"""Gateway API routing as Istio implements it (gateway.networking.k8s.io/v1): HTTPRoutes attached to Gateways of
a class istiod controls (the ingress gateway serves them, on their HTTP listeners of port 80), and HTTPRoutes
whose parent is a Service (GAMMA: the mesh's sidecars apply them to requests for that Service).

The rules are the spec's (kubernetes-sigs/gateway-api apis/v1/httproute_types.go, gateway_types.go):
- a route attaches to a listener when its parentRef names the Gateway (sectionName and port, when given, the
  listener's), the listener's allowedRoutes admits the route's namespace (default Same; All; a Selector is not
  modelled: nothing attaches through it) and the route's hostnames intersect the listener's hostname;
- among the rules of the routes that apply to a request, precedence goes to the route whose matching hostname
  has the most non-wildcard characters, then to the match with an Exact path, the longest PathPrefix, a method,
  the most header matches, the most query matches; then the oldest route, then NAMESPACE/NAME; then the first
  rule and match in order. No matching rule: 404;
- a rule's backendRefs are drawn by weight (default 1); none with weight above 0, or a backend in another
  namespace without a ReferenceGrant, or not a Service: 500;
- GAMMA: a route in the Service's namespace (producer) applies to every client, one in the client's namespace
  (consumer) to that namespace's clients, and consumer routes win; a parentRef's port limits it to that port.
"""

from __future__ import annotations

import random
import re
import urllib.parse
from typing import Any

from kube_sandbox.istio import Config, Destination, Request, host_matches

GROUP = "gateway.networking.k8s.io"
CONTROLLER = "istio.io/gateway-controller"
HTTP_PORT = 80


class Refused(Exception):
    """The route's answer without a backend: 404 (no rule matches), 500 (no usable backend)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status, self.body = status, body


def _intersects(route_hostnames: list[str], listener: str | None, host: str) -> str | None:
    """The hostname through which a route serves `host` on a listener (None: it does not): the route's matching
    hostname, else the listener's, else the request's own. Matching as Istio's hosts: exact, or `*.suffix` for
    one or more labels before the suffix (a Gateway API hostname is never a bare `*`)."""
    if listener and not host_matches(listener, host):
        return None
    if not route_hostnames:
        return listener or host
    found = [h for h in route_hostnames if host_matches(h, host)]
    return max(found, key=lambda h: (not h.startswith("*."), len(h))) if found else None


def _listeners(
    gateways: tuple[dict[str, Any], ...], classes: dict[str, str]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(Gateway, listener) pairs the ingress gateway serves: an istio-controlled class, HTTP on port 80."""
    out = []
    for gateway in gateways:
        spec = gateway.get("spec") or {}
        if classes.get(str(spec.get("gatewayClassName"))) != CONTROLLER:
            continue
        for listener in spec.get("listeners") or []:
            if str(listener.get("protocol")) == "HTTP" and int(listener.get("port", 0)) == HTTP_PORT:
                out.append((gateway, listener))
    return out


def _admits(gateway: dict[str, Any], listener: dict[str, Any], route_namespace: str) -> bool:
    allowed = ((listener.get("allowedRoutes") or {}).get("namespaces") or {}).get("from", "Same")
    if allowed == "All":
        return True
    if allowed == "Same":
        return bool(route_namespace == gateway["metadata"]["namespace"])
    return False  # Selector: not modelled


def _attached(route: dict[str, Any], gateway: dict[str, Any], listener: dict[str, Any]) -> bool:
    namespace = route["metadata"]["namespace"]
    for parent in (route.get("spec") or {}).get("parentRefs") or []:
        if parent.get("group", GROUP) != GROUP or parent.get("kind", "Gateway") != "Gateway":
            continue
        if parent.get("name") != gateway["metadata"]["name"]:
            continue
        if parent.get("namespace", namespace) != gateway["metadata"]["namespace"]:
            continue
        if parent.get("sectionName") not in (None, listener.get("name")):
            continue
        if parent.get("port") not in (None, listener.get("port")):
            continue
        return _admits(gateway, listener, namespace)
    return False


def _path_matches(rule: dict[str, Any], path: str) -> bool:
    kind, value = str(rule.get("type", "PathPrefix")), str(rule.get("value", "/"))
    if kind == "Exact":
        return path == value
    if kind == "RegularExpression":
        return re.fullmatch(value, path) is not None
    prefix = value.rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or prefix == ""


def _value_matches(rule: dict[str, Any], value: str | None) -> bool:
    if value is None:
        return False
    if rule.get("type", "Exact") == "RegularExpression":
        return re.fullmatch(str(rule.get("value")), value) is not None
    return value == rule.get("value")


def _match_holds(match: dict[str, Any], request: Request) -> bool:
    path, _, query = request.path.partition("?")
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    return (
        _path_matches(match.get("path") or {}, path)
        and match.get("method") in (None, request.method)
        and all(
            _value_matches(h, request.headers.get(str(h.get("name", "")).lower())) for h in match.get("headers") or []
        )
        and all(_value_matches(q, params.get(str(q.get("name")))) for q in match.get("queryParams") or [])
    )


def _specificity(match: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """Precedence of a match, smaller first: Exact path, longer prefix, a method, more headers, more queries."""
    path = match.get("path") or {}
    exact = 0 if path.get("type") == "Exact" else 1
    prefix = -len(str(path.get("value", "/"))) if path.get("type", "PathPrefix") == "PathPrefix" else 0
    return (
        exact,
        prefix,
        0 if match.get("method") else 1,
        -len(match.get("headers") or []),
        -len(match.get("queryParams") or []),
    )


def _best_rule(
    candidates: list[tuple[dict[str, Any], str, int]], request: Request
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(route, rule) that takes `request`, of (route, matching hostname, group) candidates; a smaller group
    (GAMMA's consumer routes) wins first."""
    ranked = []
    for route, hostname, group in candidates:
        host_rank = (0 if hostname.startswith("*.") else -len(hostname), -len(hostname))
        age = (
            route["metadata"].get("creationTimestamp", ""),
            f"{route['metadata']['namespace']}/{route['metadata']['name']}",
        )
        for r_index, rule in enumerate((route.get("spec") or {}).get("rules") or []):
            for m_index, match in enumerate(rule.get("matches") or [{}]):
                if _match_holds(match, request):
                    ranked.append(((group, host_rank, _specificity(match), age, r_index, m_index), route, rule))
    if not ranked:
        return None
    _, route, rule = min(ranked, key=lambda item: item[0])
    return route, rule


def _granted(grants: tuple[dict[str, Any], ...], route: dict[str, Any], to_namespace: str, service: str) -> bool:
    """A ReferenceGrant in `to_namespace` lets HTTPRoutes of the route's namespace reach the Service."""
    for grant in grants:
        if grant["metadata"]["namespace"] != to_namespace:
            continue
        spec = grant.get("spec") or {}
        source = any(
            f.get("group") == GROUP
            and f.get("kind") == "HTTPRoute"
            and f.get("namespace") == route["metadata"]["namespace"]
            for f in spec.get("from") or []
        )
        target = any(
            t.get("group", "") == "" and t.get("kind") == "Service" and t.get("name") in (None, service)
            for t in spec.get("to") or []
        )
        if source and target:
            return True
    return False


def _draw(route: dict[str, Any], rule: dict[str, Any], grants: tuple[dict[str, Any], ...]) -> Destination:
    refs = rule.get("backendRefs") or []
    weights = [int(r.get("weight", 1)) for r in refs]
    if not refs or sum(weights) <= 0:
        raise Refused(500, "no backend")  # the spec: a rule without usable backends answers 500
    chosen = random.choices(refs, weights=weights)[0]  # noqa: S311 - traffic splitting, not secrets
    namespace = str(chosen.get("namespace") or route["metadata"]["namespace"])
    if chosen.get("group", "") != "" or chosen.get("kind", "Service") != "Service":
        raise Refused(500, "unsupported backend")
    if namespace != route["metadata"]["namespace"] and not _granted(grants, route, namespace, str(chosen["name"])):
        raise Refused(500, "backend not permitted (no ReferenceGrant)")
    port = chosen.get("port")
    return Destination(str(chosen["name"]), namespace, int(port) if port is not None else None, None)


def gateway_backend(config: Config, request: Request) -> Destination | None:
    """Where the ingress gateway sends `request` by the Gateway API; None if no listener serves its host."""
    listeners = [
        (g, lst)
        for g, lst in _listeners(config.api_gateways, config.gateway_classes)
        if _intersects([], lst.get("hostname"), request.host) is not None
    ]
    if not listeners:
        return None
    candidates = []
    for route in config.http_routes:
        hostnames = list((route.get("spec") or {}).get("hostnames") or [])
        for gateway, listener in listeners:
            if not _attached(route, gateway, listener):
                continue
            hostname = _intersects(hostnames, listener.get("hostname"), request.host)
            if hostname is not None:
                candidates.append((route, hostname, 0))
                break
    best = _best_rule(candidates, request)
    if best is None:
        raise Refused(404, "")
    return _draw(*best, config.reference_grants)


def mesh_backend(
    config: Config, *, client_namespace: str, service: str, namespace: str, port: int, request: Request
) -> Destination | None:
    """Where a sidecar in `client_namespace` sends `request` for `service` by GAMMA routes; None if no route has
    the Service as its parent (the Service is reached as it is)."""
    candidates = []
    for route in config.http_routes:
        route_namespace = route["metadata"]["namespace"]
        if route_namespace not in (namespace, client_namespace):
            continue
        for parent in (route.get("spec") or {}).get("parentRefs") or []:
            if parent.get("group") != "" or parent.get("kind") != "Service" or parent.get("name") != service:
                continue
            if parent.get("namespace", route_namespace) != namespace or parent.get("port") not in (None, port):
                continue
            consumer = route_namespace == client_namespace and route_namespace != namespace
            candidates.append((route, service, 0 if consumer else 1))
            break
    if not candidates:
        return None
    if any(group == 0 for _, _, group in candidates):
        candidates = [c for c in candidates if c[2] == 0]  # consumer routes replace the producer's
    best = _best_rule(candidates, request)
    if best is None:
        raise Refused(404, "")
    return _draw(*best, config.reference_grants)
