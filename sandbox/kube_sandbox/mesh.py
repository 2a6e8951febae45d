"""An emulation of Istio's data plane: the ingress gateway, sidecars of mesh clients, plain clients, and metrics.

Three ways in, as on a real cluster (the routing rules are in `istio.py`):
- the front door is the ingress gateway (`istio-system`, labels `istio: ingressgateway`): it applies only
  VirtualServices bound to a Gateway it serves, and Ingresses of class istio; any other host gets 404 (NR);
- the client port sends "as a pod" of the namespace in `X-Sandbox-From: NAMESPACE[/k=v,...]` (or, used as an
  HTTP proxy, the proxy URL's user: http://NAMESPACE@HOST:PORT, for clients that cannot add a header): with a sidecar
  (the namespace is injected, or the labels pick an injected pod) it applies the `mesh` VirtualServices that
  namespace sees; without one (`X-Sandbox-Sidecar: false`, or no injection) it reaches the Service's ready
  endpoints uniformly, as kube-proxy does, ignoring VirtualServices and subsets;
- a sidecar under a STRICT PeerAuthentication resets connections that do not come from the mesh.

Telemetry as Istio's default: a proxy on each side reports (`reporter="source"` from the gateway or a client's
sidecar, `reporter="destination"` from the destination's sidecar); pods without a sidecar report nothing.
"""

from __future__ import annotations

import base64
import itertools
import socket
import struct
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from kube_sandbox import gateway_api, istio
from kube_sandbox.injection import has_sidecar, namespace_injected
from kube_sandbox.istio import Destination, NoRoute, Request
from kube_sandbox.pods import ready, target_port
from kube_sandbox.selectors import SelectorError, label_matcher, match_labels_selector
from kube_sandbox.store import Store

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
FROM_HEADER = "x-sandbox-from"
SIDECAR_HEADER = "x-sandbox-sidecar"
_OWN_HEADERS = {FROM_HEADER, SIDECAR_HEADER}
RATE_WINDOW = 10.0  # seconds of requests a pod's request rate is measured over


@dataclass(frozen=True)
class Source:
    """Who sends: the ingress gateway, a pod with a sidecar, or a pod (or anything) without one."""

    namespace: str
    workload: str
    proxy: bool
    labels: tuple[tuple[str, str], ...] = ()
    gateway: str | None = None  # the Gateway a gateway request came through


GATEWAY = Source(istio.ROOT_NAMESPACE, istio.GATEWAY_WORKLOAD, True, tuple(istio.GATEWAY_LABELS.items()))


@dataclass(frozen=True)
class Upstream:
    ip: str
    port: int
    pod: dict[str, Any]
    service: tuple[str, str]
    mtls: bool  # both ends are proxies


class Reset(Exception):
    """The destination's sidecar resets the connection (STRICT mTLS, plaintext client)."""


class Mesh:
    """The gateway, the client port and the telemetry endpoint, over the sandbox's store."""

    def __init__(self, store: Store, address: Callable[[str, str], str | None], *, delay: float = 1.0) -> None:
        self.store = store
        self.address = address  # (namespace, pod) -> an IP the host can reach, or None
        self.propagation = istio.Propagation(store, delay)
        self.requests: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self.durations: dict[tuple[tuple[str, str], ...], list[float]] = {}
        self.arrivals: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=100_000))
        self._counter = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    # --- routing -----------------------------------------------------------------------------------------

    def route_gateway(self, request: Request) -> Upstream:
        """Where the ingress gateway sends this request now; NoRoute with Envoy's answer when nowhere."""
        config = self.propagation.current()
        bound = istio.gateway_virtual_services(config, request.host)
        if bound:
            vs, gateway = bound[0]
            target = istio.http_destination(config, vs, request, proxy_namespace=istio.ROOT_NAMESPACE, gateway=gateway)
            return self._upstream(target, request.port, GATEWAY)
        try:
            routed = gateway_api.gateway_backend(config, request)
        except gateway_api.Refused as exc:
            raise NoRoute(exc.status, exc.body, "NR") from None
        if routed is not None:
            return self._upstream(routed, request.port, GATEWAY)
        for match, target in istio.ingress_routes(config, request.host):
            if istio.matches([match] if match else None, request, istio.INGRESS_GATEWAY):
                return self._upstream(target, request.port, GATEWAY)
        raise NoRoute(404, "", "NR")

    def route_client(self, source: Source, request: Request) -> Upstream:
        """Where a client's request goes: through its sidecar's routes, or straight to the Service's endpoints."""
        host = istio.request_fqdn(request.host, source.namespace)
        service = istio.service_of(host, source.namespace) if host.endswith(istio.DOMAIN) else None
        if not source.proxy:
            if service is None or self._service(*service) is None:
                raise NoRoute(503, f"could not resolve host: {request.host}", "DNS")
            return self._upstream(Destination(*service, None, None), request.port, source)
        config = self.propagation.current()
        vs = istio.mesh_virtual_service(config, source.namespace, host)
        svc = self._service(*service) if service else None
        port = _service_port(svc, None, None, request.port) if svc else None
        if vs is not None and port is not None and istio.is_tcp(port):
            chosen = istio.tcp_destination(config, vs, request.port, proxy_namespace=source.namespace)
            target = chosen or Destination(*service, None, None) if service else chosen
        elif vs is not None:
            target = istio.http_destination(config, vs, request, proxy_namespace=source.namespace, gateway=None)
        elif service is not None and svc is not None:
            try:  # GAMMA: HTTPRoutes whose parent is the Service
                routed = gateway_api.mesh_backend(
                    config,
                    client_namespace=source.namespace,
                    service=service[0],
                    namespace=service[1],
                    port=request.port,
                    request=request,
                )
            except gateway_api.Refused as exc:
                raise NoRoute(exc.status, exc.body, "NR") from None
            target = routed or Destination(*service, None, None)
        else:
            raise NoRoute(404, "", "NR")
        if target is None:
            raise NoRoute(404, "", "NR")
        return self._upstream(target, request.port, source)

    def _service(self, name: str, namespace: str) -> dict[str, Any] | None:
        return self.store.peek(("", "services", namespace, name))

    def _upstream(self, target: Destination, request_port: int, source: Source) -> Upstream:
        service = (target.service, target.namespace)
        svc = self._service(*service)
        if svc is None:
            raise NoRoute(503, "no healthy upstream", "NC" if source.proxy else "UH", service)
        spec = svc.get("spec") or {}
        wanted = _service_port(svc, target.port, target.port_name, request_port)
        selector = match_labels_selector({"matchLabels": {**(spec.get("selector") or {}), **(target.subset or {})}})
        pods = [
            p
            for p in self.store.scan("", "pods", target.namespace)
            if spec.get("selector")
            and selector(p["metadata"].get("labels") or {})
            and not p["metadata"].get("deletionTimestamp")
            and ready(p)
        ]
        reachable = [(p, ip) for p in pods if (ip := self.address(target.namespace, p["metadata"]["name"]))]
        if wanted is None or not reachable:
            raise NoRoute(503, "no healthy upstream", "UH", service)
        pod, ip = reachable[next(self._counter) % len(reachable)]
        port = target_port(wanted, [pod])
        sidecar = has_sidecar(pod)
        if sidecar and not source.proxy and self.strict(pod, port):
            raise Reset(f"{target.service}.{target.namespace}: STRICT mTLS")
        return Upstream(str(ip), port, pod, service, mtls=sidecar and source.proxy)

    def strict(self, pod: dict[str, Any], port: int) -> bool:
        """A plaintext connection to this pod's port would be reset by its sidecar (STRICT mTLS)."""
        return has_sidecar(pod) and istio.peer_mode(self.propagation.current(), pod, port) == "STRICT"

    def source(self, header: str, *, sidecar: bool = True) -> Source:
        """A client from `X-Sandbox-From: NAMESPACE[/k=v,...]`: its workload, and whether a sidecar sends."""
        namespace, _, selector = header.partition("/")
        labels = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)  # the client's identity
        namespace = namespace or "default"
        selected = label_matcher(selector) if labels else None
        pods = [
            p
            for p in self.store.scan("", "pods", namespace)
            if selected and selected(p["metadata"].get("labels") or {})
        ]
        if pods:
            proxy = sidecar and has_sidecar(pods[0])
            workload = _workload(pods[0], self.store)
        else:
            proxy = sidecar and namespace_injected(self.store.peek(("", "namespaces", "", namespace)))
            workload = labels.get("app", "unknown")
        return Source(namespace, workload, proxy, tuple(sorted(labels.items())))

    def rate(self, namespace: str, pod: str, window: float = RATE_WINDOW) -> float:
        """Requests a second the mesh delivered to this pod over the last `window` seconds."""
        arrivals = self.arrivals.get((namespace, pod))
        if not arrivals:
            return 0.0
        since = time.monotonic() - window
        return sum(1 for t in arrivals if t >= since) / window

    # --- serving -----------------------------------------------------------------------------------------

    def front_door(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._through_gateway)
        app.on_cleanup.append(self._close)
        return app

    def clients(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._from_client)
        app.on_cleanup.append(self._close)
        return app

    def telemetry(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _through_gateway(self, request: web.Request) -> web.StreamResponse:
        return await self._forward(request, GATEWAY, self.route_gateway)

    async def _from_client(self, request: web.Request) -> web.StreamResponse:
        sidecar = request.headers.get(SIDECAR_HEADER, "true").lower() != "false"
        try:
            source = self.source(request.headers.get(FROM_HEADER) or _proxy_user(request) or "default", sidecar=sidecar)
        except SelectorError as exc:
            return web.Response(status=400, text=f"{FROM_HEADER}: {exc}")
        return await self._forward(request, source, lambda r: self.route_client(source, r))

    async def _forward(
        self, request: web.Request, source: Source, route: Callable[[Request], Upstream]
    ) -> web.StreamResponse:
        started = time.monotonic()
        host, _, port = request.host.partition(":")
        wanted = Request(
            host.lower(),
            int(port) if port.isdigit() else 80,
            request.method,
            request.path,
            {k.lower(): v for k, v in request.headers.items()},
        )
        try:
            upstream = route(wanted)
        except NoRoute as exc:
            if source.proxy:
                self._record(source, None, exc.service, exc.status, exc.flags, started, reporter="source")
            return web.Response(status=exc.status, text=exc.body)
        except Reset:
            return _reset(request)
        status, body, out, flags = await self._send(request, upstream)
        self.arrivals[(upstream.service[1], upstream.pod["metadata"]["name"])].append(time.monotonic())
        if source.proxy:
            self._record(source, upstream, upstream.service, status, flags, started, reporter="source")
        if has_sidecar(upstream.pod) and flags == "-":
            self._record(source, upstream, upstream.service, status, flags, started, reporter="destination")
        return web.Response(status=status, body=body, headers=out)

    async def _send(self, request: web.Request, upstream: Upstream) -> tuple[int, bytes, dict[str, str], str]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=15), auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        skip = HOP_BY_HOP | _OWN_HEADERS
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        headers["Host"] = request.host
        headers["X-Forwarded-Proto"] = "http"
        url = f"http://{upstream.ip}:{upstream.port}{request.rel_url}"
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=await request.read(), allow_redirects=False
            ) as answer:
                out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
                return answer.status, await answer.read(), out, "-"
        except (aiohttp.ClientError, TimeoutError) as exc:
            body = f"upstream connect error or disconnect/reset before headers. reset reason: {exc}".encode()
            return 503, body, {"Content-Type": "text/plain"}, "UF"

    # --- telemetry ---------------------------------------------------------------------------------------

    def _record(  # noqa: PLR0917 - one request's facts, in the order they are known
        self,
        source: Source,
        upstream: Upstream | None,
        service: tuple[str, str] | None,
        status: int,
        flags: str,
        started: float,
        *,
        reporter: str,
    ) -> None:
        """Count one request as `reporter` (the source's proxy or the destination's sidecar) saw it."""
        pod = upstream.pod if upstream else None
        mtls = "mutual_tls" if upstream and upstream.mtls else "none"
        labels = (
            *_telemetry(reporter, source, pod, service, self.store),
            ("response_code", str(status)),
            ("response_flags", flags),
            ("connection_security_policy", "unknown" if reporter == "source" else mtls),
        )
        millis = (time.monotonic() - started) * 1000
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


def _service_port(
    svc: dict[str, Any] | None, number: int | None, name: str | None, request_port: int
) -> dict[str, Any] | None:
    """The Service port a route means: by number or name, else the one the request came to, else the only one."""
    ports = ((svc or {}).get("spec") or {}).get("ports") or []
    if number is not None or name is not None:
        return next((p for p in ports if p.get("port") == number or (name and p.get("name") == name)), None)
    return next((p for p in ports if p.get("port") == request_port), ports[0] if len(ports) == 1 else None)


def _workload(pod: dict[str, Any], store: Store) -> str:
    """Istio's workload name: the `service.istio.io/workload-name` label, else the Deployment (or owner)."""
    meta = pod["metadata"]
    override = (meta.get("labels") or {}).get("service.istio.io/workload-name")
    if override:
        return str(override)
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "ReplicaSet":
            rs = store.peek(("apps", "replicasets", meta["namespace"], ref["name"]))
            for owner in ((rs or {}).get("metadata") or {}).get("ownerReferences") or []:
                if owner.get("kind") == "Deployment":
                    return str(owner["name"])
        return str(ref.get("name"))
    return str(meta["name"])


def _telemetry(
    reporter: str, source: Source, pod: dict[str, Any] | None, service: tuple[str, str] | None, store: Store
) -> tuple[tuple[str, str], ...]:
    """Istio's standard labels of a request's source and destination (before its outcome)."""
    labels = (pod or {}).get("metadata", {}).get("labels") or {}
    workload = _workload(pod, store) if pod else "unknown"
    known = source.proxy or reporter == "source"
    return (
        ("reporter", reporter),
        ("source_workload", source.workload if known else "unknown"),
        ("source_workload_namespace", source.namespace if known else "unknown"),
        ("source_canonical_service", dict(source.labels).get("app", source.workload) if known else "unknown"),
        ("destination_workload", workload),
        ("destination_workload_namespace", pod["metadata"]["namespace"] if pod else "unknown"),
        ("destination_app", labels.get("app", labels.get("app.kubernetes.io/name", "unknown"))),
        ("destination_version", labels.get("version", labels.get("app.kubernetes.io/version", "unknown"))),
        ("destination_canonical_service", labels.get("service.istio.io/canonical-name", workload)),
        ("destination_canonical_revision", labels.get("service.istio.io/canonical-revision", "latest")),
        ("destination_service", f"{service[0]}.{service[1]}.{istio.DOMAIN}" if service else "unknown"),
        ("destination_service_name", service[0] if service else "unknown"),
        ("destination_service_namespace", service[1] if service else "unknown"),
        ("request_protocol", "http"),
    )


def _proxy_user(request: web.Request) -> str | None:
    """The user of `Proxy-Authorization: Basic` (what an HTTP client sends for http://USER@proxy)."""
    scheme, _, value = request.headers.get("Proxy-Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(value.strip(), validate=True).decode().partition(":")[0] or None
    except (ValueError, UnicodeDecodeError):
        return None


def _reset(request: web.Request) -> web.StreamResponse:
    """Close the client's connection with a TCP reset, as Envoy does to plaintext under STRICT mTLS."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    raise ConnectionResetError("reset by the destination's sidecar (STRICT mTLS)")


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{k}="{escape(v)}"' for k, v in pairs)
