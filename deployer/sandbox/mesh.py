"""An emulation of Istio's data plane: a front door that routes by VirtualService weights, and Istio's metrics.

The front door is one HTTP port. A request's Host header picks the VirtualService (one of its hosts, or the
Service `NAME.NAMESPACE[.svc.cluster.local]` a VirtualService routes to); without a VirtualService, a Service's
own host reaches its ready endpoints directly. The first matching `http` route is taken (uri exact/prefix/regex,
headers exact/prefix/regex, method), a destination is drawn with the route's weights, its subset's labels come
from the DestinationRule for the host, and the request goes to one of the matching ready pods. Everything is read
from the store at every request, so a weight change applies to the next one.

Telemetry is served on its own port at /metrics, with Istio's names and labels as the destination sidecar
reports them: istio_requests_total and istio_request_duration_milliseconds (a histogram, Istio's buckets).
"""

from __future__ import annotations

import itertools
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from deployer.sandbox.pods import ready, target_port
from deployer.sandbox.selectors import match_labels_selector
from deployer.sandbox.store import Store

ISTIO_GROUP = "networking.istio.io"
BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000)
HOP_BY_HOP = {  # headers a proxy does not pass on
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}
DOMAIN = "svc.cluster.local"


@dataclass(frozen=True)
class Upstream:
    ip: str
    port: int
    labels: tuple[tuple[str, str], ...]  # the destination labels of its requests


class NoRoute(Exception):
    def __init__(self, status: int, body: str, flags: str) -> None:
        super().__init__(body)
        self.status, self.body, self.flags = status, body, flags


def _service_of(host: str, namespace: str) -> tuple[str, str] | None:
    """(service, namespace) for a mesh host: `name`, `name.ns`, `name.ns.svc` or `name.ns.svc.cluster.local`."""
    parts = host.split(".")
    if len(parts) == 1:
        return parts[0], namespace
    if len(parts) == 2 or ".".join(parts[2:]) in ("svc", DOMAIN):
        return parts[0], parts[1]
    return None


def _fqdn(host: str, namespace: str) -> str:
    found = _service_of(host, namespace)
    return f"{found[0]}.{found[1]}.{DOMAIN}" if found else host


class Mesh:
    """The front door and the telemetry endpoint, over the sandbox's store."""

    def __init__(self, store: Store, address: Callable[[str, str], str | None]) -> None:
        self.store = store
        self.address = address  # (namespace, pod) -> an IP the host can reach, or None
        self.requests: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self.durations: dict[tuple[tuple[str, str], ...], list[float]] = {}
        self._counter = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    # --- routing -----------------------------------------------------------------------------------------

    def _virtual_service(self, host: str) -> tuple[dict[str, Any], str] | None:
        for vs in self.store.items(ISTIO_GROUP, "virtualservices"):
            namespace = vs["metadata"]["namespace"]
            hosts = {_fqdn(h, namespace) for h in (vs.get("spec") or {}).get("hosts") or []}
            if host in hosts or _fqdn(host, namespace) in hosts:
                return vs, namespace
        return None

    def route(self, host: str, method: str, path: str, headers: dict[str, str]) -> Upstream:
        """Where this request goes now; NoRoute with Envoy's answer when nowhere."""
        host = host.split(":", maxsplit=1)[0].lower()
        found = self._virtual_service(host)
        if found is None:
            service = _service_of(host, "default")
            if service is None or self.store.get(("", "services", service[1], service[0])) is None:
                raise NoRoute(404, "", "NR")
            return self._pick(service[0], service[1], None, {})
        vs, namespace = found
        for http in (vs.get("spec") or {}).get("http") or []:
            if _matches(http.get("match"), method, path, headers):
                destinations = http.get("route") or []
                weights = [int(d.get("weight", 100 if len(destinations) == 1 else 0)) for d in destinations]
                if not destinations or sum(weights) <= 0:
                    break
                chosen = random.choices(destinations, weights=weights)[0]["destination"]  # noqa: S311
                target = _service_of(str(chosen["host"]), namespace)
                if target is None:
                    raise NoRoute(503, "no healthy upstream", "UH")
                return self._pick(target[0], target[1], chosen.get("subset"), chosen.get("port") or {})
        raise NoRoute(404, "", "NR")

    def _subset_labels(self, service: str, namespace: str, subset: str) -> dict[str, str] | None:
        fqdn = f"{service}.{namespace}.{DOMAIN}"
        for dr in self.store.items(ISTIO_GROUP, "destinationrules"):
            spec = dr.get("spec") or {}
            if _fqdn(str(spec.get("host", "")), dr["metadata"]["namespace"]) == fqdn:
                for declared in spec.get("subsets") or []:
                    if declared.get("name") == subset:
                        return dict(declared.get("labels") or {})
        return None

    def _pick(self, service: str, namespace: str, subset: str | None, port: dict[str, Any]) -> Upstream:
        svc = self.store.get(("", "services", namespace, service))
        if svc is None:
            raise NoRoute(503, "no healthy upstream", "UH")
        labels: dict[str, str] = {}
        if subset is not None:
            found = self._subset_labels(service, namespace, subset)
            if found is None:  # Envoy has no cluster for an undeclared subset
                raise NoRoute(503, "no healthy upstream", "NC")
            labels = found
        spec = svc.get("spec") or {}
        ports = spec.get("ports") or []
        wanted = next((p for p in ports if p.get("port") == port.get("number")), ports[0] if ports else None)
        selector = match_labels_selector({"matchLabels": {**(spec.get("selector") or {}), **labels}})
        pods = [
            p
            for p in self.store.items("", "pods", namespace)
            if spec.get("selector")
            and selector(p["metadata"].get("labels") or {})
            and not p["metadata"].get("deletionTimestamp")
            and ready(p)
        ]
        candidates = [(p, self.address(namespace, p["metadata"]["name"])) for p in pods]
        reachable = [(p, ip) for p, ip in candidates if ip]
        if wanted is None or not reachable:
            raise NoRoute(503, "no healthy upstream", "UH")
        pod, ip = reachable[next(self._counter) % len(reachable)]
        target = target_port(wanted, [pod])
        return Upstream(str(ip), target, self._destination_labels(pod, service, namespace))

    def _destination_labels(self, pod: dict[str, Any], service: str, namespace: str) -> tuple[tuple[str, str], ...]:
        labels = pod["metadata"].get("labels") or {}
        return (
            ("destination_workload", self._workload(pod)),
            ("destination_workload_namespace", namespace),
            ("destination_app", labels.get("app", labels.get("app.kubernetes.io/name", "unknown"))),
            ("destination_version", labels.get("version", labels.get("app.kubernetes.io/version", "unknown"))),
            ("destination_service", f"{service}.{namespace}.{DOMAIN}"),
            ("destination_service_name", service),
            ("destination_service_namespace", namespace),
        )

    def _workload(self, pod: dict[str, Any]) -> str:
        """The Deployment (or other owner) of a pod, as Istio names a workload."""
        meta = pod["metadata"]
        for ref in meta.get("ownerReferences") or []:
            if ref.get("kind") == "ReplicaSet":
                rs = self.store.get(("apps", "replicasets", meta["namespace"], ref["name"]))
                for owner in ((rs or {}).get("metadata") or {}).get("ownerReferences") or []:
                    if owner.get("kind") == "Deployment":
                        return str(owner["name"])
                return str(ref["name"])
            return str(ref.get("name"))
        return str(meta["name"])

    # --- serving -----------------------------------------------------------------------------------------

    def front_door(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        app.on_cleanup.append(self._close)
        return app

    def telemetry(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            upstream = self.route(request.host, request.method, request.path, dict(request.headers))
        except NoRoute as exc:
            return web.Response(status=exc.status, text=exc.body)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=15), auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = request.host
        headers["X-Forwarded-Proto"] = "http"
        url = f"http://{upstream.ip}:{upstream.port}{request.rel_url}"
        flags = "-"
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=await request.read(), allow_redirects=False
            ) as answer:
                body = await answer.read()
                status = answer.status
                out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, flags = 503, "UF"
            body = f"upstream connect error or disconnect/reset before headers. reset reason: {exc}".encode()
            out = {"Content-Type": "text/plain"}
        self._record(upstream, status, flags, (time.monotonic() - started) * 1000)
        return web.Response(status=status, body=body, headers=out)

    def _record(self, upstream: Upstream, status: int, flags: str, millis: float) -> None:
        labels = (
            ("reporter", "destination"),
            ("source_workload", "istio-ingressgateway"),
            ("source_workload_namespace", "istio-system"),
            *upstream.labels,
            ("request_protocol", "http"),
            ("response_code", str(status)),
            ("response_flags", flags),
            ("connection_security_policy", "none"),
        )
        self.requests[labels] += 1
        buckets = self.durations.setdefault(labels, [0.0] * (len(BUCKETS) + 2))  # counts..., +Inf, sum
        for i, bound in enumerate(BUCKETS):
            if millis <= bound:
                buckets[i] += 1
        buckets[len(BUCKETS)] += 1
        buckets[len(BUCKETS) + 1] += millis

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(text=self.exposition(), content_type="text/plain", charset="utf-8")

    def exposition(self) -> str:
        """Prometheus' text format, version 0.0.4."""
        lines = [
            "# HELP istio_requests_total Total requests.",
            "# TYPE istio_requests_total counter",
        ]
        lines += [f"istio_requests_total{{{_labels(k)}}} {v}" for k, v in sorted(self.requests.items())]
        lines += [
            "# HELP istio_request_duration_milliseconds Request duration in milliseconds.",
            "# TYPE istio_request_duration_milliseconds histogram",
        ]
        for key, values in sorted(self.durations.items()):
            name = "istio_request_duration_milliseconds"
            for bound, count in zip(BUCKETS, values, strict=False):
                lines.append(f'{name}_bucket{{{_labels(key)},le="{bound:g}"}} {count:g}')
            lines.append(f'{name}_bucket{{{_labels(key)},le="+Inf"}} {values[len(BUCKETS)]:g}')
            lines.append(f"{name}_sum{{{_labels(key)}}} {values[len(BUCKETS) + 1]:.3f}")
            lines.append(f"{name}_count{{{_labels(key)}}} {values[len(BUCKETS)]:g}")
        return "\n".join(lines) + "\n"


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{k}="{escape(v)}"' for k, v in pairs)


def _string_match(rule: dict[str, Any] | None, value: str | None) -> bool:
    if rule is None:
        return True
    if value is None:
        return False
    if "exact" in rule:
        return bool(value == rule["exact"])
    if "prefix" in rule:
        return value.startswith(str(rule["prefix"]))
    if "regex" in rule:
        return re.fullmatch(str(rule["regex"]), value) is not None
    return True


def _matches(matches: list[dict[str, Any]] | None, method: str, path: str, headers: dict[str, str]) -> bool:
    if not matches:
        return True
    lowered = {k.lower(): v for k, v in headers.items()}
    return any(
        _string_match(m.get("uri"), path)
        and _string_match(m.get("method"), method)
        and all(_string_match(rule, lowered.get(name.lower())) for name, rule in (m.get("headers") or {}).items())
        for m in matches
    )
