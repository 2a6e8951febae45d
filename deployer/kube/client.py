"""The one module that speaks HTTP to kube-apiserver: an asyncio client on aiohttp.

No call and no watch holds a thread: a server running fifty releases waits on fifty watch streams in one event
loop. The rest of the kube adapter (cluster, jobs, lease, records, secrets) and the health adapter's pod proxy
call the verbs here; the resources they name by constant (LEASES, SECRETS, PODS, ...) and the verbs they call are
what the chart's Role grants (tests/integration/test_chart.py reads both from the source).

Credentials come from a kubeconfig as kubectl reads it (client-go tools/clientcmd: $KUBECONFIG's files merged,
first file wins per name; relative paths against the file that names them; token, tokenFile, client certificate,
basic auth and `exec` credential plugins) or from the in-cluster service account (its token re-read, as bound
tokens rotate). `auth-provider` plugins were removed from kubectl in 1.26 and are refused with one line.

Calls go through `call`: 5xx, 429, timeouts and connection errors are TransientError and retried with backoff;
any other answer is an ApiError with the apiserver's Status message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from deployer.errors import DeployError, TransientError

T = TypeVar("T")
TRANSIENT = frozenset({429, 500, 502, 503, 504})
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DISCOVERY_MISS = 10.0  # seconds before a kind the cluster did not serve is looked up again


@dataclass(frozen=True)
class Resource:
    """One REST resource: where it lives and whether it is namespaced (from discovery, or known)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresource: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def rbac(self) -> tuple[str, str]:
        """(apiGroup, resource) as a Role names it."""
        return self.group, self.plural + (f"/{self.subresource}" if self.subresource else "")

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{urllib.parse.quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{urllib.parse.quote(name, safe=':')}"  # `pod:port` for the proxy
            if self.subresource:
                base += f"/{self.subresource}"
        return base


# The resources the adapters name (every other kind is found by discovery: what a release renders)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
SECRETS = Resource("", "v1", "secrets", "Secret")
PODS = Resource("", "v1", "pods", "Pod")
POD_LOGS = replace(PODS, subresource="log")
POD_PROXY = replace(PODS, subresource="proxy")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
JOBS = Resource("batch", "v1", "jobs", "Job")
JOB_STATUS = replace(JOBS, subresource="status")
RELEASES = Resource("deployer.dev", "v1alpha1", "releases", "Release")  # charts/deployer/crds


class ApiError(DeployError):
    """An answer of the apiserver that is not a success and not transient (4xx but 429). A DeployError: one the
    code does not expect (a 403 from a Role that lacks a right, a 422) stops the release with the Status
    message as kubectl prints it, never as an internal error."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        self.status, self.reason, self.body = status, reason, body
        super().__init__(_status_message(status, reason, body), where="cluster")


def _status_message(status: int, reason: str, body: str) -> str:
    """The Status object's message, as kubectl prints it."""
    try:
        return str(json.loads(body).get("message") or f"HTTP {status} {reason}")
    except (ValueError, AttributeError):
        return f"HTTP {status} {reason}"


def describe(exc: BaseException) -> str:
    """One line for a failed call: `HTTP 503 Service Unavailable`, `ClientConnectorError: ...`."""
    if isinstance(exc, TransientError | ApiError):
        return str(exc)
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"


def lost(exc: BaseException) -> bool:
    """A watch that dropped, expired (410) or was refused for a moment: start over rather than fail."""
    return not isinstance(exc, ApiError) or exc.status == 410


# --- credentials ------------------------------------------------------------------------------------------------


@dataclass
class Credentials:
    """Where the apiserver is and how to prove who we are; `headers()` refreshes what expires."""

    server: str
    ssl_context: ssl.SSLContext | bool | None = None
    token: str | None = None
    token_file: Path | None = None
    basic: tuple[str, str] | None = None
    exec_plugin: dict[str, Any] | None = None
    proxy: str | None = None
    namespace: str = "default"
    _cached: tuple[float, dict[str, str]] = field(default=(0.0, {}), repr=False)

    async def headers(self) -> dict[str, str]:
        until, cached = self._cached
        if cached and time.monotonic() < until:
            return cached
        headers: dict[str, str] = {}
        ttl = 3600.0
        if self.token_file is not None:  # re-read: bound service-account tokens rotate
            headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
            ttl = 60.0
        elif self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif self.basic:
            encoded = base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {encoded}"
        elif self.exec_plugin is not None:
            token, ttl = await _run_exec(self.exec_plugin)
            if token:
                headers["Authorization"] = f"Bearer {token}"
        self._cached = (time.monotonic() + ttl, headers)
        return headers


async def _run_exec(plugin: dict[str, Any]) -> tuple[str | None, float]:
    """Run a client.authentication.k8s.io exec plugin (as kubectl does): its token, and how long it holds."""
    command = plugin.get("command")
    if not command:
        raise DeployError("users[].user.exec.command is missing", where="kubeconfig")
    env = {**os.environ, **{e["name"]: e["value"] for e in plugin.get("env") or []}}
    api_version = plugin.get("apiVersion", "client.authentication.k8s.io/v1")
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    )
    try:
        process = await asyncio.create_subprocess_exec(
            command,
            *(plugin.get("args") or []),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    except (OSError, TimeoutError) as exc:
        raise DeployError(f"the exec credential plugin {command!r} failed: {exc}", where="kubeconfig") from None
    if process.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
        raise DeployError(
            f"the exec credential plugin {command!r} exited {process.returncode}: {last}", where="kubeconfig"
        )
    try:
        status = json.loads(out)["status"]
    except (ValueError, KeyError, TypeError):
        raise DeployError(
            f"the exec credential plugin {command!r} printed no ExecCredential", where="kubeconfig"
        ) from None
    ttl = 3600.0
    if expires := status.get("expirationTimestamp"):
        moment = datetime.datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
        ttl = max(0.0, (moment - datetime.datetime.now(datetime.UTC)).total_seconds() - 30)
    return status.get("token"), ttl


def _merged(paths: list[Path]) -> dict[str, Any]:
    """kubectl's merge of several kubeconfig files: the first file to name a cluster, user, context or the
    current context wins. Relative file references resolve against the file that holds them."""
    merged: dict[str, Any] = {"clusters": {}, "users": {}, "contexts": {}, "current-context": None}
    for path in paths:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DeployError(f"cannot read the kubeconfig: {exc}", where=str(path)) from None
        if not isinstance(doc, dict):
            raise DeployError("not a kubeconfig (expected a mapping)", where=str(path))
        for section, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for entry in doc.get(section) or []:
                if isinstance(entry, dict) and entry.get("name") not in merged[section]:
                    merged[section][entry.get("name")] = (dict(entry.get(inner) or {}), path.parent)
        merged["current-context"] = merged["current-context"] or doc.get("current-context")
    return merged


def _file(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _ssl(cluster: dict[str, Any], user: dict[str, Any], base: Path, user_base: Path) -> ssl.SSLContext | bool | None:
    if cluster.get("insecure-skip-tls-verify"):
        context: ssl.SSLContext = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    elif ca := cluster.get("certificate-authority-data"):
        context = ssl.create_default_context(cadata=base64.b64decode(ca).decode())
    elif ca_file := cluster.get("certificate-authority"):
        context = ssl.create_default_context(cafile=str(_file(ca_file, base)))
    else:
        context = ssl.create_default_context()
    cert, key = user.get("client-certificate-data"), user.get("client-key-data")
    if cert or user.get("client-certificate"):
        if cert and key:  # ssl loads a chain only from files: written privately, loaded, removed
            with tempfile.TemporaryDirectory() as private:
                pem = Path(private) / "client.pem"
                pem.touch(mode=0o600)
                pem.write_bytes(base64.b64decode(cert) + b"\n" + base64.b64decode(key))
                context.load_cert_chain(str(pem))
        else:
            context.load_cert_chain(
                str(_file(user["client-certificate"], user_base)),
                str(_file(user["client-key"], user_base)) if user.get("client-key") else None,
            )
    return context


def load_credentials(kubeconfig: Path | None = None, context: str | None = None) -> Credentials:
    """Credentials from a kubeconfig (or $KUBECONFIG, ~/.kube/config), or the in-cluster service account."""
    if kubeconfig is None and context is None and SERVICE_ACCOUNT.exists() and not os.environ.get("KUBECONFIG"):
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise DeployError("in a pod, but KUBERNETES_SERVICE_HOST is not set", where="in-cluster config")
        host = f"[{host}]" if ":" in host else host
        return Credentials(
            server=f"https://{host}:{port}",
            ssl_context=ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt")),
            token_file=SERVICE_ACCOUNT / "token",
            namespace=(SERVICE_ACCOUNT / "namespace").read_text().strip(),
        )
    if kubeconfig is not None:
        paths = [kubeconfig]
    elif os.environ.get("KUBECONFIG"):
        paths = [Path(p) for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    else:
        paths = [Path.home() / ".kube" / "config"]
    where = str(kubeconfig or paths[0])
    existing = [p for p in paths if p.exists()]
    if not existing:
        raise DeployError("cannot load the cluster configuration: no kubeconfig file", where=where)
    config = _merged(existing)
    name = context or config["current-context"]
    if not name or name not in config["contexts"]:
        raise DeployError(f"cannot load the cluster configuration: no context {name!r}", where=where)
    ctx, _ = config["contexts"][name]
    if ctx.get("cluster") not in config["clusters"]:
        raise DeployError(f"context {name!r} names cluster {ctx.get('cluster')!r}, which is not there", where=where)
    cluster, cluster_base = config["clusters"][ctx["cluster"]]
    user, user_base = config["users"].get(ctx.get("user"), ({}, cluster_base))
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("http://", "https://")):
        raise DeployError(f"cluster {ctx['cluster']!r} has no http(s) server", where=where)
    if user.get("auth-provider"):
        raise DeployError(
            f"user {ctx.get('user')!r} uses an auth-provider plugin, which kubectl removed in 1.26; "
            "use an exec credential plugin",
            where=where,
        )
    try:
        context_ssl = _ssl(cluster, user, cluster_base, user_base) if server.startswith("https://") else None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise DeployError(f"cannot load the cluster's TLS settings: {exc}", where=where) from None
    token_file = _file(user["tokenFile"], user_base) if user.get("tokenFile") and not user.get("token") else None
    basic = (str(user["username"]), str(user.get("password", ""))) if user.get("username") else None
    return Credentials(
        server=server,
        ssl_context=context_ssl,
        token=user.get("token"),
        token_file=token_file,
        basic=basic,
        exec_plugin=user.get("exec"),
        proxy=cluster.get("proxy-url"),
        namespace=ctx.get("namespace") or "default",
    )


# --- the client ---------------------------------------------------------------------------------------------------


async def call(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """One API call, retried with backoff while it fails transiently (5 attempts)."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(5),
        wait=wait_exponential_jitter(multiplier=0.1, max=2.0, jitter=0.2),
        reraise=True,
    ):
        with attempt:
            return await fn(*args, **kwargs)
    raise AssertionError("unreachable")  # pragma: no cover


class KubeClient:
    """One apiserver, one connection pool (made in the running event loop, again if the loop changes)."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._groups: dict[str, tuple[float, dict[str, Resource]]] = {}  # group/version → (read at, kind → resource)

    @property
    def server(self) -> str:
        return self.credentials.server

    def _http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context or False, limit=0)
            self._session, self._loop = aiohttp.ClientSession(connector=connector), loop
        return self._session

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed and self._loop is asyncio.get_running_loop():
            await self._session.close()
        self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
        accept: str = "application/json",
        raw: bool = False,
    ) -> Any:
        """One request; the decoded JSON answer (or text with `raw`). 5xx/429/timeouts/connection errors are
        TransientError, any other failure an ApiError."""
        data = json.dumps(body).encode() if body is not None else None
        wait = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10))
        media = {"content_type": content_type, "accept": accept}
        async with self._open(method, path, params=params, data=data, timeout=wait, **media) as answer:
            text = await answer.text(errors="replace")
        if raw:
            return text
        try:
            return json.loads(text) if text else {}
        except ValueError:
            raise TransientError(f"HTTP {answer.status}: the answer is not JSON") from None

    @contextlib.asynccontextmanager
    async def _open(
        self,
        method: str,
        path: str,
        *,
        timeout: aiohttp.ClientTimeout,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A request with our credentials, answered with success: a refusal is raised (5xx and 429 as
        TransientError, other 4xx as ApiError with its Status), as are timeouts and connection errors
        (TransientError) and a certificate that does not verify (one line, not retried)."""
        headers = {**await self.credentials.headers(), "Accept": accept}
        if data is not None:
            headers["Content-Type"] = content_type
        try:
            async with self._http().request(
                method,
                self.server + path,
                params=params,
                data=data,
                headers=headers,
                proxy=self.credentials.proxy,
                timeout=timeout,
            ) as answer:
                if answer.status in TRANSIENT:
                    raise TransientError(f"HTTP {answer.status} {answer.reason or ''}".strip())
                if answer.status >= 400:
                    raise ApiError(answer.status, answer.reason or "", await answer.text(errors="replace"))
                yield answer
        except aiohttp.ClientSSLError as exc:  # a certificate that does not verify will not verify on retry
            raise self._tls(exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(describe(exc)) from exc

    def _tls(self, exc: aiohttp.ClientSSLError) -> DeployError:
        why = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc
        return DeployError(f"TLS to {self.server} failed: {why}", where="cluster")

    # discovery: one group-version at a time, kept while it answers (a release names few kinds); a kind it lacks
    # is asked again after DISCOVERY_MISS seconds, as kubectl's cache is invalidated on a miss: CRDs arrive later
    async def resource(self, api_version: str, kind: str) -> Resource | None:
        """The resource serving `kind` in `api_version`, or None when the cluster does not serve it."""
        read_at, kinds = self._groups.get(api_version, (float("-inf"), {}))
        if kind not in kinds and time.monotonic() - read_at > DISCOVERY_MISS:
            group, _, version = api_version.rpartition("/")
            path = f"/apis/{api_version}" if group else f"/api/{version}"
            try:
                listed = await call(self.request, "GET", path)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                listed = {}
            kinds = {
                r["kind"]: Resource(group, version, r["name"], r["kind"], bool(r.get("namespaced")))
                for r in listed.get("resources") or []
                if "/" not in r["name"]
            }
            self._groups[api_version] = (time.monotonic(), kinds)
        return kinds.get(kind)

    # the verbs
    async def read(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        return dict(await call(self.request, "GET", resource.path(namespace, name)))

    async def list(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        labels: str | None = None,
        timeout: float = 30.0,
        once: bool = False,
    ) -> dict[str, Any]:
        """A list (its items and resourceVersion); `once`: a single attempt, for a caller that retries itself."""
        params = {"labelSelector": labels} if labels else None
        if once:
            return dict(await self.request("GET", resource.path(namespace), params=params, timeout=timeout))
        return dict(await call(self.request, "GET", resource.path(namespace), params=params, timeout=timeout))

    async def create(self, resource: Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        return dict(await call(self.request, "POST", resource.path(namespace), body=body))

    async def replace(
        self, resource: Resource, namespace: str | None, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        return dict(await call(self.request, "PUT", resource.path(namespace, name), body=body))

    async def patch(self, resource: Resource, namespace: str | None, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch."""
        path = resource.path(namespace, name)
        return dict(await call(self.request, "PATCH", path, body=body, content_type="application/merge-patch+json"))

    async def apply(
        self,
        resource: Resource,
        namespace: str | None,
        body: dict[str, Any],
        *,
        manager: str,
        force: bool = True,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Server-side apply (JSON is YAML: the body is sent as application/apply-patch+yaml)."""
        params = {"fieldManager": manager, "force": "true" if force else "false"}
        if dry_run:
            params["dryRun"] = "All"
        path = resource.path(namespace, body["metadata"]["name"])
        answer = await call(
            self.request, "PATCH", path, params=params, body=body, content_type="application/apply-patch+yaml"
        )
        return dict(answer)

    async def delete(self, resource: Resource, namespace: str | None, name: str, *, version: str | None = None) -> bool:
        """Delete with background propagation; False if it was not there. With `version`, only while the object
        is still at that resourceVersion (else ApiError 409: someone changed it since)."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if version:
            body["preconditions"] = {"resourceVersion": version}
        try:
            await call(self.request, "DELETE", resource.path(namespace, name), body=body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def log(self, resource: Resource, namespace: str, name: str, *, tail: int) -> str:
        path = resource.path(namespace, name)
        return str(await call(self.request, "GET", path, params={"tailLines": str(tail)}, accept="*/*", raw=True))

    async def stream_log(
        self, resource: Resource, namespace: str, name: str, *, seconds: float
    ) -> AsyncGenerator[str, None]:
        """Each line a container prints, as it prints it (log?follow=true), until it ends or `seconds` pass. A
        stream that is cut just ends: the caller decides what a lost log means (for a build: nothing; its Job's
        status is the signal)."""
        wait = aiohttp.ClientTimeout(total=seconds, sock_connect=10)
        params = {"follow": "true"}
        async with self._open("GET", resource.path(namespace, name), params=params, timeout=wait, accept="*/*") as got:
            pending = b""
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async for chunk in got.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        yield line.decode(errors="replace").rstrip("\r")
            if pending:
                yield pending.decode(errors="replace").rstrip("\r")

    async def proxy(
        self, resource: Resource, namespace: str, target: str, path: str, *, timeout: float
    ) -> tuple[int, str]:
        """GET `path` through the apiserver's proxy subresource (e.g. `pod:port`): (status, first body line).
        The target's own answer, whatever its status: not retried, not an error."""
        url = self.server + resource.path(namespace, target) + path
        headers = {**await self.credentials.headers(), "Accept": "*/*"}
        async with self._http().get(
            url,
            headers=headers,
            proxy=self.credentials.proxy,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as answer:
            text = (await answer.read()).decode(errors="replace").strip().splitlines()
        return answer.status, text[0] if text else ""

    async def watch(
        self,
        resource: Resource,
        namespace: str,
        *,
        version: str | None,
        seconds: float,
        fields: str | None = None,
        labels: str | None = None,
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """(type, object) of each change after `version`, for at most `seconds` (the server ends the stream).
        An ERROR event raises its status as ApiError (410: too old to resume); a dropped stream just ends."""
        params = {"watch": "1", "timeoutSeconds": str(max(1, int(seconds + 0.999))), "allowWatchBookmarks": "true"}
        if version:
            params["resourceVersion"] = version
        if fields:
            params["fieldSelector"] = fields
        if labels:
            params["labelSelector"] = labels
        wait = aiohttp.ClientTimeout(total=seconds + 10, sock_connect=10)
        async with self._open("GET", resource.path(namespace), params=params, timeout=wait) as answer:
            pending = b""
            async for chunk in answer.content.iter_any():  # lines of any length: objects can be large
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError as exc:  # a stream cut inside a line
                        raise TransientError(describe(exc)) from exc
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        raise ApiError(int(obj.get("code") or 500), str(obj.get("reason") or ""), json.dumps(obj))
                    yield str(kind), obj

    async def follow(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        *,
        deadline: float,
        read: Resource | None = None,
        window: float = 30.0,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """One object's states until `deadline` (time.monotonic()): read (through `read`, e.g. a status
        subresource), then each change watched from that version. A watch that is lost (dropped, expired, refused
        for a moment) is followed by a fresh read and watch, half a second later: never a busy loop on a failing
        API. Any other refusal is raised as ApiError."""
        while (remaining := deadline - time.monotonic()) > 0:
            current = await self.read(read or resource, namespace, name)
            yield current
            try:
                async with contextlib.aclosing(
                    self.watch(
                        resource,
                        namespace,
                        fields=f"metadata.name={name}",
                        version=(current.get("metadata") or {}).get("resourceVersion"),
                        seconds=min(remaining, window),
                    )
                ) as events:
                    async for kind, obj in events:
                        if kind != "BOOKMARK":
                            yield obj
                        if time.monotonic() > deadline:
                            return
            except (ApiError, TransientError) as exc:
                if not lost(exc):
                    raise
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def connect(kubeconfig: Path | None = None, context: str | None = None) -> KubeClient:
    """A client from a kubeconfig (or $KUBECONFIG / ~/.kube/config), or the in-cluster service account."""
    return KubeClient(load_credentials(kubeconfig, context))
