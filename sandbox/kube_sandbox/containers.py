"""The `containers` pod runtime: each pod's containers really run, in the sandbox's own Docker Engine.

It does what a kubelet does for the fields the deployer and its users rely on:
- a pause container holds the pod's network namespace; its IP on the sandbox bridge is the podIP (reachable
  from the host) and every TCP containerPort is published on a random 127.0.0.1 port;
- command, args, env (value with $(VAR) expansion, valueFrom configMapKeyRef/secretKeyRef/fieldRef, envFrom),
  runAsUser/runAsGroup, workingDir; volumes from ConfigMaps, Secrets and emptyDir;
- readiness, liveness and startup probes (httpGet, tcpSocket, exec; grpc is probed as tcpSocket) with their
  delays, periods, timeouts and thresholds;
- restarts by restartPolicy, with CrashLoopBackOff (first restart at once, then a doubling back-off, capped),
  restartCount and lastState.terminated; image pulls with ErrImagePull/ImagePullBackOff;
- logs of the current and the previous container.
An injected `istio-proxy` container is not run: the sandbox's mesh plays it, so it is reported running and ready
once the pod's network exists. The containerPorts of a pod with a sidecar are published through the sandbox's
own forwarder instead of docker's, so that the sidecar's inbound rules hold there too (a STRICT PeerAuthentication
resets the connection). Resource requests and limits are
ignored. The status it reports has the shape a kubelet writes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import re
import shutil
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import docker.errors

from kube_sandbox.defaults import qos_class
from kube_sandbox.engine import LABEL, PAUSE_IMAGE, Engine
from kube_sandbox.injection import is_sidecar
from kube_sandbox.pods import named_port
from kube_sandbox.runtime import base_status, expand, stamp

log = logging.getLogger("kube_sandbox.containers")
T = TypeVar("T")
PLEG_PERIOD = 0.5  # seconds a container must live before it is reported running
Lookup = Callable[[str, str, str], dict[str, Any] | None]  # (namespace, plural, name) -> object


class ConfigError(Exception):
    """A container cannot be created yet: a ConfigMap, Secret or key it needs is missing."""


@dataclass
class _Container:
    spec: dict[str, Any]
    docker_id: str | None = None
    previous_id: str | None = None
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0
    ready: bool = False
    started: bool = False
    image_id: str = ""
    sidecar: bool = False  # played by the mesh, never run

    @property
    def name(self) -> str:
        return str(self.spec["name"])


@dataclass
class _Pod:
    namespace: str
    name: str
    uid: str
    spec: dict[str, Any]
    meta: dict[str, Any]
    created: float
    containers: list[_Container]
    pause_id: str | None = None
    ip: str | None = None
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> published port on 127.0.0.1
    ready_since: float | None = None
    was_ready: bool = False
    task: asyncio.Task[None] | None = None
    forwarders: list[asyncio.Server] = field(default_factory=list)  # published ports of a pod with a sidecar

    @property
    def ready(self) -> bool:
        return bool(self.containers) and all(c.ready for c in self.containers)


STOP_STEP = 5.0  # seconds a part of the stop may take before it is left to the engine's stop


async def _bounded(waiting: Awaitable[Any], seconds: float, what: str) -> None:
    try:
        await asyncio.wait_for(waiting, seconds)
    except TimeoutError:
        log.warning("stop: %s still running after %gs; left to the engine's stop", what, seconds)


class ContainerRuntime:
    """Runs pods in a private dockerd; see the module docstring for what is honoured."""

    def __init__(self, root: Path, lookup: Lookup, *, crash_backoff: float = 10.0, max_backoff: float = 300.0) -> None:
        self.root = root
        self.engine = Engine(root / "engine")
        self.lookup = lookup
        self.crash_backoff = crash_backoff
        self.max_backoff = max_backoff
        self.on_change: Callable[[str, str], None] = lambda namespace, name: None
        # (pod, port) -> the pod's sidecar resets plaintext there; set by the sandbox once its mesh exists
        self.resets: Callable[[dict[str, Any], int], bool] = lambda pod, port: False
        # (namespace, service account, seconds, audiences) -> a bound token; set by the sandbox where it issues them
        self.token: Callable[[str, str, int, list[str]], str] | None = None
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._exits: dict[str, asyncio.Future[int]] = {}
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="sandbox-docker")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: Any = None
        self._events_thread: threading.Thread | None = None
        self._http: aiohttp.ClientSession | None = None
        self._removals: set[asyncio.Future[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------------------

    def bind(self, on_change: Callable[[str, str], None]) -> None:
        self.on_change = on_change

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._call(self.engine.start)
        self._events = self.engine.docker.events(
            decode=True, filters={"type": "container", "event": "die", "label": f"{LABEL}={self.engine.id}"}
        )
        self._events_thread = threading.Thread(target=self._read_events, name="sandbox-docker-events", daemon=True)
        self._events_thread.start()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def stop(self) -> None:
        for run in list(self._pods.values()):
            for server in run.forwarders:
                server.close()
            if run.task:
                run.task.cancel()
        # bounded: a docker call that hangs on a busy machine must not hold the stop (the engine's stop removes
        # every container of the sandbox at once, and stops dockerd, which stops what is left)
        tasks = [r.task for r in self._pods.values() if r.task]
        await _bounded(asyncio.gather(*tasks, return_exceptions=True), STOP_STEP, "pods' tasks")
        for removal in list(self._removals):
            removal.cancel()
        await _bounded(asyncio.gather(*self._removals, return_exceptions=True), STOP_STEP, "container removals")
        self._pods.clear()
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.close()
        if self._http is not None:
            await self._http.close()
        await self._call(self.engine.stop)
        self._pool.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self.root / "pods", ignore_errors=True)

    def _read_events(self) -> None:
        with contextlib.suppress(Exception):  # ends when stop() closes the stream
            for event in self._events:
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                code = int(attributes.get("exitCode", "0") or 0)
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self._died, event.get("id", ""), code)

    def _died(self, docker_id: str, code: int) -> None:
        future = self._exits.pop(docker_id, None)
        if future is not None and not future.done():
            future.set_result(code)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def _notify(self, run: _Pod) -> None:
        if run.ready != run.was_ready:
            run.was_ready, run.ready_since = run.ready, time.time()
        self.on_change(run.namespace, run.name)

    # --- PodRuntime ----------------------------------------------------------------------------------------

    def status(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        meta, spec = pod["metadata"], pod["spec"]
        key = (meta["namespace"], meta["name"])
        run = self._pods.get(key)
        if run is None or run.uid != meta["uid"]:
            if meta.get("deletionTimestamp"):
                return None
            if run is not None:
                self.forget(*key)
            containers = [_Container(c, sidecar=is_sidecar(pod, c)) for c in spec.get("containers") or []]
            run = _Pod(meta["namespace"], meta["name"], meta["uid"], spec, meta, time.time(), containers)
            self._pods[key] = run
            run.task = asyncio.get_running_loop().create_task(self._run_pod(run))
        return self._status(run)

    def forget(self, namespace: str, name: str) -> None:
        run = self._pods.pop((namespace, name), None)
        if run is None:
            return
        if run.task:
            run.task.cancel()
        for server in run.forwarders:
            server.close()
        ids = [i for c in run.containers for i in (c.docker_id, c.previous_id) if i]
        if run.pause_id:
            ids.append(run.pause_id)
        removal = asyncio.ensure_future(self._remove(run, ids))
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)

    async def _remove(self, run: _Pod, ids: list[str]) -> None:
        if run.task:
            await asyncio.gather(run.task, return_exceptions=True)
        for docker_id in ids:
            with contextlib.suppress(docker.errors.APIError):
                await self._call(self.engine.docker.api.remove_container, docker_id, force=True, v=True)
        shutil.rmtree(self.root / "pods" / run.uid, ignore_errors=True)

    # --- what the API serves -----------------------------------------------------------------------------

    def address(self, namespace: str, name: str) -> str | None:
        run = self._pods.get((namespace, name))
        return run.ip if run else None

    def published(self) -> list[dict[str, Any]]:
        return [
            {"namespace": r.namespace, "name": r.name, "ip": r.ip, "ports": {str(k): v for k, v in r.ports.items()}}
            for r in self._pods.values()
        ]

    def logs(self, namespace: str, name: str, container: str | None, *, previous: bool, tail: int | None) -> bytes:
        """The container's output; ValueError with the apiserver's message when there is none to show."""
        run = self._pods.get((namespace, name))
        if run is None:
            raise ValueError(f'pod "{name}" is not running yet')
        names = [c.name for c in run.containers]
        if container is None:
            if len(names) != 1:
                raise ValueError(
                    f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]"
                )
            container = names[0]
        found = next((c for c in run.containers if c.name == container), None)
        if found is None:
            raise ValueError(f"container {container} is not valid for pod {name}")
        if found.sidecar:
            return b""
        docker_id = found.previous_id if previous else found.docker_id
        if docker_id is None:
            if previous:
                raise ValueError(f'previous terminated container "{container}" in pod "{name}" not found')
            reason = (found.state.get("waiting") or {}).get("reason", "ContainerCreating")
            raise ValueError(f'container "{container}" in pod "{name}" is waiting to start: {reason}')
        try:
            output: bytes = self.engine.docker.api.logs(
                docker_id, stdout=True, stderr=True, tail="all" if tail is None else tail
            )
        except docker.errors.NotFound:
            return b""
        return output

    # --- running a pod -----------------------------------------------------------------------------------

    async def _run_pod(self, run: _Pod) -> None:
        try:
            await self._pull_images(run)
            await self._start_pause(run)
            for c in run.containers:
                if c.sidecar:
                    c.state, c.ready, c.started = {"running": {"startedAt": stamp(time.time())}}, True, True
            self._notify(run)
            policy = run.spec.get("restartPolicy", "Always")
            await asyncio.gather(*(self._container_loop(run, c, policy) for c in run.containers if not c.sidecar))
        except asyncio.CancelledError:
            raise
        except Exception:  # a sandbox bug must not take the server down: say so and leave the pod as it is
            log.exception("pod %s/%s failed in the containers runtime", run.namespace, run.name)

    async def _pull_images(self, run: _Pod) -> None:
        backoff = self.crash_backoff
        for c in run.containers:
            if c.sidecar:
                continue
            image = str(c.spec.get("image", ""))
            always = c.spec.get("imagePullPolicy") == "Always"
            while True:
                try:
                    c.image_id = await self._call(self._ensure_image, image, always)
                    break
                except docker.errors.APIError as exc:
                    message = str(exc.explanation or exc)
                    c.state = {"waiting": {"reason": "ErrImagePull", "message": message}}
                    self._notify(run)
                    await asyncio.sleep(min(1.0, backoff))
                    c.state = {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": f'Back-off pulling image "{image}": {message}',
                        }
                    }
                    self._notify(run)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)

    def _ensure_image(self, image: str, always: bool) -> str:
        client = self.engine.docker
        reference = _pullable(image)
        if not always:
            with contextlib.suppress(docker.errors.ImageNotFound):
                return str(client.images.get(reference).id)
        client.api.pull(reference)  # by digest when it has one, else by tag (latest when none)
        return str(client.images.get(reference).id)

    async def _start_pause(self, run: _Pod) -> None:
        ports: dict[str, tuple[str, None]] = {}
        for c in run.containers:
            for port in [] if c.sidecar else c.spec.get("ports") or []:
                if port.get("protocol", "TCP") == "TCP":
                    ports[f"{port['containerPort']}/tcp"] = ("127.0.0.1", None)
        if any(c.sidecar for c in run.containers):
            forwarded, ports = [int(k.split("/")[0]) for k in ports], {}
        else:
            forwarded = []
        engine = self.engine
        container = await self._call(
            engine.docker.containers.create,
            PAUSE_IMAGE,
            ["/busybox", "sleep", "2147483647"],
            name=f"k8s_POD_{run.name}_{run.namespace}_{run.uid[:8]}",
            network=engine.network,
            ports=ports,
            labels=engine.labels(namespace=run.namespace, pod=run.name),
        )
        run.pause_id = container.id
        await self._call(container.start)
        await self._call(container.reload)
        settings = container.attrs["NetworkSettings"]
        run.ip = settings["Networks"][engine.network]["IPAddress"]
        for key, bindings in (settings.get("Ports") or {}).items():
            if bindings:
                run.ports[int(key.split("/")[0])] = int(bindings[0]["HostPort"])
        for port in forwarded:
            server = await asyncio.start_server(functools.partial(self._inbound, run, port), "127.0.0.1", 0)
            run.forwarders.append(server)
            run.ports[port] = int(server.sockets[0].getsockname()[1])

    async def _inbound(self, run: _Pod, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection from outside the mesh to a published port of a pod with a sidecar: the sidecar's inbound
        rules apply (a STRICT PeerAuthentication resets it), then the bytes go to the pod's port."""
        pod = self.lookup(run.namespace, "pods", run.name)
        if pod is None or self.resets(pod, port) or not run.ip:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(run.ip, port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    async def _container_loop(self, run: _Pod, c: _Container, policy: str) -> None:
        backoff = self.crash_backoff
        while True:
            started = await self._start_container(run, c, backoff)
            if started is None:
                continue
            docker_id, exited = started
            started_at = time.time()
            # Like the kubelet's PLEG, which relists once a second, a container that dies at once is never seen
            # running, so a crash-looping pod without a readiness probe does not flicker Ready.
            await asyncio.wait({exited}, timeout=PLEG_PERIOD)
            probes = c.spec.get("readinessProbe"), c.spec.get("livenessProbe"), c.spec.get("startupProbe")
            if not exited.done():
                c.state = {"running": {"startedAt": stamp(started_at)}}
                c.started = probes[2] is None
                c.ready = probes[0] is None and c.started
                self._notify(run)
            probing = asyncio.ensure_future(self._probes(run, c, docker_id, probes))
            try:
                code = await exited
            finally:
                probing.cancel()
                await asyncio.gather(probing, return_exceptions=True)
            finished_at = time.time()
            c.ready = c.started = False
            terminated = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": stamp(started_at),
                "finishedAt": stamp(finished_at),
                "containerID": f"docker://{docker_id}",
            }
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                c.state = {"terminated": terminated}
                self._notify(run)
                return
            c.last_state = {"terminated": terminated}
            if finished_at - started_at > 600:  # as the kubelet does: a container that ran 10 minutes is forgiven
                backoff = self.crash_backoff
            if c.restarts == 0:
                c.state = {"terminated": terminated}
                self._notify(run)
                continue  # the first restart is immediate
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {_seconds(backoff)} restarting failed container={c.name} "
                    f"pod={run.name}_{run.namespace}({run.uid})",
                }
            }
            self._notify(run)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    async def _start_container(
        self, run: _Pod, c: _Container, backoff: float
    ) -> tuple[str, asyncio.Future[int]] | None:
        """Create and start the container's next instance; None (after a pause) when it cannot be created yet."""
        api = self.engine.docker.api
        try:
            created = await self._call(api.create_container, **self._create_args(run, c.spec))
        except ConfigError as exc:
            c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
            self._notify(run)
            await asyncio.sleep(1.0)
            return None
        except docker.errors.APIError as exc:
            c.state = {"waiting": {"reason": "CreateContainerError", "message": str(exc.explanation or exc)}}
            self._notify(run)
            await asyncio.sleep(backoff)
            return None
        docker_id = str(created["Id"])
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[int] = loop.create_future()
        self._exits[docker_id] = exited
        if c.previous_id:  # the kubelet keeps one dead instance, for `logs --previous`
            loop.run_in_executor(self._pool, functools.partial(_remove_quietly, api, c.previous_id))
        if c.docker_id is not None:
            c.restarts += 1
        c.previous_id, c.docker_id = c.docker_id, docker_id
        try:
            await self._call(api.start, docker_id)
        except docker.errors.APIError:
            self._exits.pop(docker_id, None)
            exited.set_result(128)
        return docker_id, exited

    def _create_args(self, run: _Pod, spec: dict[str, Any]) -> dict[str, Any]:
        env = self._env(run, spec)
        mounts = self._mounts(run, spec)
        pod_security = run.spec.get("securityContext") or {}
        security = {**pod_security, **(spec.get("securityContext") or {})}
        user = None
        if security.get("runAsUser") is not None:
            user = str(security["runAsUser"])
            if security.get("runAsGroup") is not None:
                user += f":{security['runAsGroup']}"
        command = [expand(str(x), env) for x in spec.get("command") or []]
        args = [expand(str(x), env) for x in spec.get("args") or []]
        api = self.engine.docker.api
        return {
            "image": _pullable(str(spec.get("image", ""))),
            "entrypoint": command or None,
            "command": args or ([] if command else None),
            "environment": env,
            "user": user,
            "working_dir": spec.get("workingDir"),
            "labels": self.engine.labels(namespace=run.namespace, pod=run.name, container=spec["name"]),
            "host_config": api.create_host_config(
                network_mode=f"container:{run.pause_id}",
                binds=mounts,
                init=False,
            ),
        }

    def _object(self, run: _Pod, plural: str, name: str, optional: bool) -> dict[str, Any] | None:
        obj = self.lookup(run.namespace, plural, name)
        if obj is None and not optional:
            kind = {"configmaps": "configmap", "secrets": "secret"}[plural]
            raise ConfigError(f'{kind} "{name}" not found')
        return obj

    def _data(self, run: _Pod, plural: str, name: str, optional: bool) -> dict[str, bytes] | None:
        obj = self._object(run, plural, name, optional)
        if obj is None:
            return None
        if plural == "secrets":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def _env(self, run: _Pod, spec: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            for plural, ref_key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
                ref = source.get(ref_key)
                if ref:
                    data = self._data(run, plural, ref["name"], bool(ref.get("optional")))
                    for key, value in (data or {}).items():
                        env[f"{source.get('prefix', '')}{key}"] = value.decode(errors="replace")
        for var in spec.get("env") or []:
            if "valueFrom" not in var:
                env[var["name"]] = expand(str(var.get("value", "")), env)
                continue
            source = var["valueFrom"]
            for plural, ref_key in (("configmaps", "configMapKeyRef"), ("secrets", "secretKeyRef")):
                ref = source.get(ref_key)
                if ref:
                    data = self._data(run, plural, ref["name"], bool(ref.get("optional")))
                    if data is not None and ref["key"] in data:
                        env[var["name"]] = data[ref["key"]].decode(errors="replace")
                    elif not ref.get("optional"):
                        kind = {"configmaps": "configmap", "secrets": "secret"}[plural]
                        raise ConfigError(f"couldn't find key {ref['key']} in {kind} {run.namespace}/{ref['name']}")
            if "fieldRef" in source:
                env[var["name"]] = self._field(run, source["fieldRef"]["fieldPath"])
            if "resourceFieldRef" in source:
                env[var["name"]] = "0"  # resources are not modelled (see the README)
        return env

    def _field(self, run: _Pod, path: str) -> str:
        simple = {
            "metadata.name": run.name,
            "metadata.namespace": run.namespace,
            "metadata.uid": run.uid,
            "status.podIP": run.ip or "",
            "status.podIPs": run.ip or "",
            "status.hostIP": self._host_ip(run),
            "status.hostIPs": self._host_ip(run),
            "spec.nodeName": "sandbox-node",
            "spec.serviceAccountName": str(run.spec.get("serviceAccountName", "default")),
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str((run.meta.get(match.group(1)) or {}).get(match.group(2), ""))
        raise ConfigError(f"unsupported fieldPath: {path}")

    def _mounts(self, run: _Pod, spec: dict[str, Any]) -> list[str]:
        base = self.root / "pods" / run.uid / "volumes"
        volumes = {v["name"]: v for v in run.spec.get("volumes") or []}
        binds = []
        for mount in spec.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise ConfigError(f"volume {mount['name']} not found in the pod")
            source = self._volume(run, volume, base / volume["name"])
            if mount.get("subPath"):
                source = source / mount["subPath"]
            read_only = ("configMap", "secret", "projected")
            mode = "ro" if mount.get("readOnly") or any(k in volume for k in read_only) else "rw"
            binds.append(f"{source}:{mount['mountPath']}:{mode}")
        return binds

    def _volume(self, run: _Pod, volume: dict[str, Any], target: Path) -> Path:
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)
            return target
        for plural, key, name_key in (("configmaps", "configMap", "name"), ("secrets", "secret", "secretName")):
            if key in volume:
                source = volume[key]
                data = self._data(run, plural, source.get(name_key, ""), bool(source.get("optional"))) or {}
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                fresh = target.with_name(target.name + ".new")
                shutil.rmtree(fresh, ignore_errors=True)
                fresh.mkdir(parents=True)
                fresh.chmod(0o755)
                for item in items:
                    if item["key"] not in data:
                        raise ConfigError(f"configmap or secret {source.get(name_key)} has no key {item['key']}")
                    path = fresh / item["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data[item["key"]])
                    path.chmod(int(item.get("mode", source.get("defaultMode", 0o644))))
                shutil.rmtree(target, ignore_errors=True)
                fresh.rename(target)
                return target
        if "projected" in volume:
            return self._projected(run, volume["projected"], target)
        kinds = ", ".join(sorted(k for k in volume if k != "name"))
        raise ConfigError(f"volume {volume['name']}: {kinds} volumes are not supported by the sandbox")

    def _projected(self, run: _Pod, projected: dict[str, Any], target: Path) -> Path:
        """A projected volume's files: ConfigMap and Secret keys, downward API fields and the pod's account's
        bound token (the kubelet's token manager asks TokenRequest for it; written once, not rotated here)."""
        files: dict[str, tuple[bytes, int]] = {}
        default = int(projected.get("defaultMode", 0o644))
        for source in projected.get("sources") or []:
            for plural, key in (("configmaps", "configMap"), ("secrets", "secret")):
                if key in source:
                    ref = source[key]
                    data = self._data(run, plural, ref.get("name", ""), bool(ref.get("optional"))) or {}
                    for item in ref.get("items") or [{"key": k, "path": k} for k in data]:
                        if item["key"] not in data:
                            if ref.get("optional"):
                                continue
                            raise ConfigError(f"configmap or secret {ref.get('name')} has no key {item['key']}")
                        files[item["path"]] = (data[item["key"]], int(item.get("mode", default)))
            for item in (source.get("downwardAPI") or {}).get("items") or []:
                if "fieldRef" in item:
                    value = self._field(run, item["fieldRef"]["fieldPath"]).encode()
                    files[item["path"]] = (value, int(item.get("mode", default)))
            if "serviceAccountToken" in source:
                wanted = source["serviceAccountToken"]
                if self.token is None:
                    raise ConfigError("serviceAccountToken projections need a sandbox that issues tokens (--auth rbac)")
                account = str(run.spec.get("serviceAccountName") or "default")
                audiences = [wanted["audience"]] if wanted.get("audience") else []
                token = self.token(run.namespace, account, int(wanted.get("expirationSeconds", 3600)), audiences)
                files[wanted["path"]] = (token.encode(), 0o600 if default == 0o644 else default)
        fresh = target.with_name(target.name + ".new")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        fresh.chmod(0o755)
        for relative, (content, mode) in files.items():
            path = fresh / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            path.chmod(mode)
        shutil.rmtree(target, ignore_errors=True)
        fresh.rename(target)
        return target

    def _host_ip(self, run: _Pod) -> str:
        return run.ip.rsplit(".", 1)[0] + ".1" if run.ip else "127.0.0.1"

    # --- probes ------------------------------------------------------------------------------------------

    async def _probes(self, run: _Pod, c: _Container, docker_id: str, probes: tuple[Any, Any, Any]) -> None:
        readiness, liveness, startup = probes
        if startup is not None:
            if not await self._probe_loop(run, c, docker_id, startup, "startup"):
                return
            c.started = True
            c.ready = readiness is None
            self._notify(run)
        kinds = ((readiness, "readiness"), (liveness, "liveness"))
        await asyncio.gather(*(self._probe_loop(run, c, docker_id, p, k) for p, k in kinds if p is not None))

    async def _probe_loop(self, run: _Pod, c: _Container, docker_id: str, probe: dict[str, Any], kind: str) -> bool:
        """Probe until cancelled; False when a liveness or startup probe killed the container."""
        period = float(probe.get("periodSeconds", 10))
        success_threshold = int(probe.get("successThreshold", 1))
        failure_threshold = int(probe.get("failureThreshold", 3))
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        successes = failures = 0
        while True:
            ok = await self._probe(run, c, docker_id, probe)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if kind == "readiness":
                if ok and successes >= success_threshold and not c.ready:
                    c.ready = True
                    self._notify(run)
                elif not ok and failures >= failure_threshold and c.ready:
                    c.ready = False
                    self._notify(run)
            elif kind == "startup" and ok:
                return True
            elif failures >= failure_threshold:  # liveness or startup: the kubelet kills the container
                grace = int(run.spec.get("terminationGracePeriodSeconds", 30))
                with contextlib.suppress(docker.errors.APIError):
                    await self._call(self.engine.docker.api.stop, docker_id, timeout=grace)
                return False
            await asyncio.sleep(period)

    async def _probe(self, run: _Pod, c: _Container, docker_id: str, probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "exec" in probe:
                return await asyncio.wait_for(self._exec(docker_id, probe["exec"].get("command") or []), timeout)
            action = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}
            port = _port(c.spec, action.get("port"))
            host = action.get("host") or run.ip or ""
            if "httpGet" in probe:
                assert self._http is not None
                headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
                url = f"{str(action.get('scheme', 'HTTP')).lower()}://{host}:{port}{action.get('path', '/')}"
                async with self._http.get(
                    url,
                    headers=headers,
                    allow_redirects=False,
                    ssl=False,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as response:
                    return 200 <= response.status < 400
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return True
        except (TimeoutError, OSError, aiohttp.ClientError, ValueError):
            return False

    async def _exec(self, docker_id: str, command: list[str]) -> bool:
        api = self.engine.docker.api
        try:
            created = await self._call(api.exec_create, docker_id, command, stdout=True, stderr=True)
            await self._call(api.exec_start, created["Id"])
            inspected = await self._call(api.exec_inspect, created["Id"])
        except docker.errors.APIError:
            return False
        return bool(inspected.get("ExitCode") == 0)

    # --- status --------------------------------------------------------------------------------------------

    def _status(self, run: _Pod) -> dict[str, Any]:
        restart_policy = run.spec.get("restartPolicy", "Always")
        states = [c.state for c in run.containers]
        if restart_policy != "Always" and states and all("terminated" in s for s in states):
            failed = any(s["terminated"]["exitCode"] != 0 for s in states)
            phase = "Failed" if failed else "Succeeded"
        elif any("running" in s for s in states) or any(c.restarts or c.last_state for c in run.containers):
            phase = "Running"
        else:
            phase = "Pending"
        ready = run.ready and phase == "Running"
        reason = None if ready else ("PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady")
        status = base_status(
            run.created,
            phase,
            ready=ready,
            reason=reason,
            pod_ip=run.ip,
            host_ip=self._host_ip(run),
            ready_since=run.ready_since,
            qos=qos_class(run.spec),
        )
        if not ready and reason == "ContainersNotReady":
            waiting = [c.name for c in run.containers if not c.ready]
            for condition in status["conditions"]:
                if condition["type"] in ("Ready", "ContainersReady"):
                    condition["message"] = f"containers with unready status: [{' '.join(waiting)}]"
        status["containerStatuses"] = [
            {
                "name": c.name,
                "image": c.spec.get("image", ""),
                "imageID": f"docker-pullable://{c.image_id}" if c.image_id else "",
                "ready": c.ready,
                "restartCount": c.restarts,
                "started": c.started,
                "state": c.state,
                "lastState": c.last_state,
                **({"containerID": f"docker://{c.docker_id}"} if c.docker_id else {}),
            }
            for c in run.containers
        ]
        return status


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


def _port(spec: dict[str, Any], port: Any) -> int:
    if isinstance(port, int):
        return port
    found = named_port([spec], port)
    if found is not None:
        return found
    if isinstance(port, str) and port.isdigit():
        return int(port)
    raise ValueError(f"port {port!r} is not declared by the container")


def _pullable(image: str) -> str:
    """`repo:tag@digest` pulls and runs by the digest, as the kubelet does."""
    if "@" not in image:
        return image
    name, digest = image.split("@", 1)
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':')[0]}@{digest}" if head else f"{last.split(':')[0]}@{digest}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _remove_quietly(api: Any, docker_id: str) -> None:
    with contextlib.suppress(docker.errors.APIError):
        api.remove_container(docker_id, force=True)
