"""The sandbox as a program: an aiohttp server on 127.0.0.1, a kubeconfig, persistence and clean shutdown."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web

from kube_sandbox import istio, istio_validation
from kube_sandbox.api import Api, Controls
from kube_sandbox.auth import (
    BOOTSTRAP_BINDINGS,
    BOOTSTRAP_ROLES,
    ISSUER,
    MIN_EXPIRATION,
    RBAC,
    Auth,
    Authorizer,
    Tokens,
)
from kube_sandbox.autoscaler import Autoscaler
from kube_sandbox.cluster import Cluster
from kube_sandbox.containers import ContainerRuntime
from kube_sandbox.controllers import Controllers
from kube_sandbox.defaults import quantity
from kube_sandbox.engine import EngineError
from kube_sandbox.injection import inject
from kube_sandbox.mesh import Mesh
from kube_sandbox.prometheus import Prometheus
from kube_sandbox.resources import ResourceType
from kube_sandbox.runtime import BEHAVIOURS, PodRuntime, SimulatedRuntime
from kube_sandbox.selectors import SelectorError, label_matcher
from kube_sandbox.store import Store
from kube_sandbox.tls import Authority, make_authority

RUNTIMES = ("simulated", "containers")
SLOW_STOP_STEP = 3.0
log = logging.getLogger("kube_sandbox")
AUTH_MODES = ("open", "rbac")
# What an Istio installation leaves in a cluster and the sandbox models: the root namespace, a Gateway the
# ingress gateway serves on port 80 for any host, and the IngressClass Istio's docs have users create.
ISTIO_OBJECTS: list[tuple[tuple[str, str, str], dict[str, Any]]] = [
    (("", "v1", "namespaces"), {"metadata": {"name": istio.ROOT_NAMESPACE}}),
    (
        (istio.NETWORKING, "v1", "gateways"),
        {
            "metadata": {"name": istio.GATEWAY_WORKLOAD, "namespace": istio.ROOT_NAMESPACE},
            "spec": {
                "selector": {"istio": "ingressgateway"},
                "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
            },
        },
    ),
    (
        ("networking.k8s.io", "v1", "ingressclasses"),
        {"metadata": {"name": "istio"}, "spec": {"controller": istio.INGRESS_CONTROLLER}},
    ),
]


# At stop, requests still in flight (watches a client reopened after the drop, proxied streams) are cut after
# this, where aiohttp waits up to 60 s for each runner's, one runner after another (the tests' stop allows 90 s).
SHUTDOWN_GRACE = 2.0


def kubeconfig(
    server: str,
    *,
    context: str = "sandbox",
    token: str = "sandbox",  # noqa: S107 - the open sandbox takes any token
    ca_pem: bytes | None = None,
) -> dict[str, Any]:
    cluster: dict[str, Any] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": context,
        "preferences": {},
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": context, "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context, "namespace": "default"}}],
    }


class Sandbox:
    """A strict local Kubernetes API. `async with Sandbox() as sb:` serves on a random port until the block ends."""

    def __init__(
        self,
        *,
        port: int = 0,
        state_dir: Path | None = None,
        kubeconfig_path: Path | None = None,
        ready_delay: float = 0.2,
        crash_backoff: float = 1.0,
        history: int = 10000,
        runtime: str = "simulated",
        prometheus: bool = False,
        propagation_delay: float = 1.0,
        scrape_interval: str = "15s",
        hpa_sync_period: float = 15.0,
        auth: str = "open",
        processes: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}")
        if auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}")
        self.port = port
        self.state_dir = state_dir
        self.kubeconfig_path = kubeconfig_path
        self.store = Store(history=history, state_dir=state_dir)
        self.cluster = Cluster(self.store)
        self.simulated = SimulatedRuntime(
            ready_delay=ready_delay, crash_backoff=crash_backoff, processes=dict(processes or {})
        )
        self.containers: ContainerRuntime | None = None
        self.runtime: PodRuntime = self.simulated
        self._scratch: Path | None = None
        if runtime == "containers":
            # dockerd's socket path must stay short (108 bytes): its directory lives in /tmp, whatever state_dir is
            self._scratch = Path(tempfile.mkdtemp(prefix="deployer-sandbox-"))
            self.containers = ContainerRuntime(
                self._scratch,
                lambda namespace, plural, name: self.store.get(("", plural, namespace, name)),
                crash_backoff=crash_backoff,
            )
            self.runtime = self.containers
        self._install_istio()
        self.auth = self._auth(auth)
        self.tls = self._authority() if auth == "rbac" else None
        self.cluster.mount_tokens = self.tls is not None  # where tokens are issued, pods mount theirs
        self.controllers = Controllers(
            self.cluster, self.runtime, tokens=self.auth.tokens, ca_pem=self.tls.ca_pem if self.tls else None
        )
        self.controls = Controls()
        self.mesh = Mesh(self.store, self.runtime.address, delay=propagation_delay)
        self.api = Api(
            self.cluster,
            self.controls,
            extra_routes=self._routes,
            pods=self.runtime,
            resets=self.mesh.strict,
            auth=self.auth,
        )
        self.autoscaler = Autoscaler(self.cluster, self.mesh.rate, period=hpa_sync_period)
        if self.containers is not None:
            self.containers.resets = self.mesh.strict
            if self.auth.enforce:
                self.containers.token = self._pod_token
        self.mesh_port = 0
        self.clients_port = 0
        self.telemetry_port = 0
        self.prometheus = Prometheus([], interval=scrape_interval) if prometheus else None
        self._runners: list[web.AppRunner] = []
        self._runner: web.AppRunner | None = None
        self._saver: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def mesh_url(self) -> str:
        return f"http://127.0.0.1:{self.mesh_port}"

    @property
    def clients_url(self) -> str:
        return f"http://127.0.0.1:{self.clients_port}"

    @property
    def telemetry_url(self) -> str:
        return f"http://127.0.0.1:{self.telemetry_port}/metrics"

    def info(self) -> dict[str, Any]:
        return {
            "runtime": "containers" if self.containers else "simulated",
            "mesh": self.mesh_url,
            "gateway": self.mesh_url,
            "clients": self.clients_url,
            "telemetry": self.telemetry_url,
            "propagationDelay": self.mesh.propagation.delay,
            "scrapeInterval": self.prometheus.interval if self.prometheus else None,
            "prometheus": self.prometheus.url if self.prometheus else None,
        }

    def _routes(self, app: web.Application) -> None:
        app.router.add_route("POST", "/sandbox/pods", self._pod_behaviour)
        app.router.add_route("GET", "/sandbox/info", self._info)
        app.router.add_route("GET", "/sandbox/ports", self._ports)
        app.router.add_route("POST", "/sandbox/metrics", self._pod_metrics)

    def _kept(self, name: str, make: Callable[[], dict[str, str]]) -> dict[str, str]:
        """Secrets kept across restarts in the state directory (0600): read if there, else made (and written)."""
        saved = self.state_dir / name if self.state_dir else None
        if saved is not None and saved.exists():
            found: dict[str, str] = json.loads(saved.read_text())
            return found
        made = make()
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.touch(mode=0o600)
            saved.write_text(json.dumps(made))
        return made

    def _auth(self, mode: str) -> Auth:
        """Tokens and RBAC. The signing key and the admin token are kept in the state directory, so tokens and
        kubeconfigs stay valid across a restart, as a cluster's service-account key does."""
        kept = self._kept(
            "auth.json", lambda: {"key": secrets.token_bytes(32).hex(), "adminToken": secrets.token_urlsafe(32)}
        )

        def lookup(group: str, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
            return self.store.peek((group, plural, namespace, name))

        tokens = Tokens(lookup, key=bytes.fromhex(kept["key"]), admin_token=kept["adminToken"])

        def items(group: str, plural: str, namespace: str | None) -> list[dict[str, Any]]:
            return self.store.every(group, plural) if namespace is None else self.store.scan(group, plural, namespace)

        authorizer = Authorizer(items, lookup)
        if mode == "rbac":  # the bootstrap policy kube-apiserver reconciles at every start
            for obj, plural in [(r, "clusterroles") for r in BOOTSTRAP_ROLES] + [
                (b, "clusterrolebindings") for b in BOOTSTRAP_BINDINGS
            ]:
                if self.store.get((RBAC, plural, "", obj["metadata"]["name"])) is None:
                    self.cluster.create(self.cluster.rt(RBAC, "v1", plural), "v1", "", obj, manager="kube-apiserver")
        return Auth(tokens, authorizer, enforce=mode == "rbac")

    def _pod_token(self, namespace: str, account: str, seconds: int, audiences: list[str]) -> str:
        found = self.store.peek(("", "serviceaccounts", namespace, account))
        if found is None:
            raise ValueError(f"serviceaccount {namespace}/{account} not found")
        token, _ = self.auth.tokens.bound(
            found, audiences=audiences or [ISSUER], expiration=max(seconds, MIN_EXPIRATION)
        )
        return token

    def _authority(self) -> Authority:
        """The CA and serving certificate, kept in the state directory across restarts."""

        def make() -> dict[str, str]:
            made = make_authority()
            return {"ca": made.ca_pem.decode(), "cert": made.cert_pem.decode(), "key": made.key_pem.decode()}

        kept = self._kept("tls.json", make)
        return Authority(*(kept[k].encode() for k in ("ca", "cert", "key")))

    def _install_istio(self) -> None:
        """Istio's part of the cluster: its objects (once), sidecar injection and istiod's validating webhook."""
        for (group, version, plural), obj in ISTIO_OBJECTS:
            meta = obj["metadata"]
            if self.store.get((group, plural, meta.get("namespace", ""), meta["name"])) is None:
                rt = self.cluster.rt(group, version, plural)
                self.cluster.create(rt, version, meta.get("namespace", ""), obj, manager="sandbox")
        self.cluster.mutators.append(self._inject)
        self.cluster.validators.append(lambda rt, obj, old: istio_validation.admit(rt, obj))

    def _inject(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        if rt.kind == "Pod":
            namespace = (obj.get("metadata") or {}).get("namespace", "")
            inject(obj, self.store.get(("", "namespaces", "", namespace)))

    async def _pod_metrics(self, request: web.Request) -> web.Response:
        """Set pods' CPU use as the metrics API would report it: {namespace, selector|pod, cpu: "250m"}."""
        body = await request.json()
        namespace, cpu = body.get("namespace"), body.get("cpu")
        if not namespace or cpu is None or not (body.get("pod") or body.get("selector")):
            return web.json_response({"error": "need namespace, pod or selector, and cpu"}, status=400)
        try:
            selected = label_matcher(body["selector"]) if body.get("selector") else lambda labels: False
        except SelectorError as exc:
            return web.json_response({"error": f"selector: {exc}"}, status=400)
        names = [
            p["metadata"]["name"]
            for p in self.store.items("", "pods", namespace)
            if p["metadata"]["name"] == body.get("pod") or selected(p["metadata"].get("labels") or {})
        ]
        for name in names:
            self.autoscaler.cpu[(namespace, name)] = quantity(cpu)
        return web.json_response({"pods": names, "cpu": cpu})

    async def _info(self, _: web.Request) -> web.Response:
        return web.json_response(self.info())

    async def _ports(self, _: web.Request) -> web.Response:
        return web.json_response(self.containers.published() if self.containers else [])

    async def _pod_behaviour(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.containers is not None:
            return web.json_response({"error": "pod behaviours are for the simulated runtime"}, status=400)
        if body.get("behaviour") not in BEHAVIOURS or not body.get("image"):
            return web.json_response(
                {"error": f"need image and behaviour (one of {', '.join(BEHAVIOURS)})"}, status=400
            )
        self.simulated.set_behaviour(body["image"], body["behaviour"], float(body.get("after", 0)))
        return web.json_response({"image": body["image"], "behaviour": body["behaviour"]})

    async def start(self) -> Sandbox:
        access = logging.getLogger("kube_sandbox.access") if os.environ.get("DEPLOYER_SANDBOX_ACCESS_LOG") else None
        if access is not None:
            logging.basicConfig(level=logging.INFO)
        self._runner = web.AppRunner(
            self.api.app(), access_log=access, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", self.port, ssl_context=self.tls.server_context() if self.tls else None
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.api.address = f"127.0.0.1:{self.port}"
        self.mesh_port = await self._serve(self.mesh.front_door())
        self.clients_port = await self._serve(self.mesh.clients())
        self.telemetry_port = await self._serve(self.mesh.telemetry())
        try:
            await self.runtime.start()
            if self.prometheus is not None:
                self.prometheus.targets = [f"127.0.0.1:{self.telemetry_port}"]
                await asyncio.get_running_loop().run_in_executor(None, self.prometheus.start)
        except (EngineError, RuntimeError, OSError):
            await self.stop()
            raise
        self.controllers.start()
        self.autoscaler.start()
        if self.kubeconfig_path:
            self.kubeconfig_path.parent.mkdir(parents=True, exist_ok=True)
            token = self.auth.tokens.admin_token if self.auth.enforce else "sandbox"
            written = kubeconfig(self.url, token=token, ca_pem=self.tls.ca_pem if self.tls else None)
            self.kubeconfig_path.write_text(yaml.safe_dump(written), encoding="utf-8")
        if self.state_dir:
            self._saver = asyncio.get_running_loop().create_task(self._save_periodically())
        return self

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runners.append(runner)
        return int(runner.addresses[0][1])

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self.store.save()

    async def stop(self) -> None:
        """Stop everything; each part that takes more than a few seconds is named in the log (a stop that outlasts
        its caller's patience says where it waited)."""
        steps: list[tuple[str, float]] = []

        async def step(name: str, waiting: Awaitable[Any]) -> None:
            began = time.monotonic()
            await waiting
            steps.append((name, time.monotonic() - began))

        if self._saver:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
        await step("controllers", self.controllers.stop())
        await step("autoscaler", self.autoscaler.stop())
        self.store.drop_watches()
        for runner in [*self._runners, *([self._runner] if self._runner else [])]:
            await step("http runner", runner.cleanup())
        self._runners.clear()
        self._runner = None
        await step("pod runtime", self.runtime.stop())
        if self.prometheus is not None:
            began = time.monotonic()
            self.prometheus.stop()
            steps.append(("prometheus", time.monotonic() - began))
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        self.store.save()
        slow = [f"{name} {seconds:.1f}s" for name, seconds in steps if seconds > SLOW_STOP_STEP]
        if slow:
            log.warning("stop: slow parts: %s", ", ".join(slow))

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve(*, kubeconfig_path: Path, runtime: str = "simulated", **options: Any) -> None:
    """Run until cancelled (Ctrl-C), printing how to use the sandbox; `options` are Sandbox's."""
    sandbox = Sandbox(kubeconfig_path=kubeconfig_path, runtime=runtime, **options)
    await sandbox.start()
    print(f"sandbox cluster serving on {sandbox.url} ({runtime} pods)", flush=True)
    print(
        f"  ingress gateway: {sandbox.mesh_url}  (Host: a host a Gateway-bound VirtualService or Ingress claims)",
        flush=True,
    )
    print(f"  mesh clients:    {sandbox.clients_url}  (X-Sandbox-From: NAMESPACE[/LABELS]; Host: SERVICE)", flush=True)
    print(f"  mesh metrics:    {sandbox.telemetry_url}", flush=True)
    if sandbox.prometheus is not None:
        print(f"  prometheus:      {sandbox.prometheus.url}", flush=True)
    print(f"  export KUBECONFIG={kubeconfig_path}", flush=True)
    print("  kubectl get namespaces        # stop with Ctrl-C", flush=True)
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    try:
        await stopped.wait()
    finally:
        await sandbox.stop()
