"""The HTTP face of the sandbox: Kubernetes REST paths, discovery, OpenAPI, and /sandbox/ endpoints for tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import yaml
from aiohttp import web

from kube_sandbox import discovery, tables
from kube_sandbox.auth import DEFAULT_EXPIRATION, ISSUER, MIN_EXPIRATION, Auth, User, request_attributes
from kube_sandbox.cluster import Cluster, now
from kube_sandbox.errors import ApiError, bad_request
from kube_sandbox.mesh import HOP_BY_HOP
from kube_sandbox.patch import json_patch, merge_patch
from kube_sandbox.pods import named_port
from kube_sandbox.protobuf import ProtobufError, decode_request
from kube_sandbox.resources import ResourceType
from kube_sandbox.schema import swagger_document
from kube_sandbox.selectors import SelectorError, field_matcher, label_matcher
from kube_sandbox.watch import watch

_PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+cbor": "apply-cbor",
}
log = logging.getLogger("kube_sandbox")
USER: web.RequestKey[User] = web.RequestKey("user", User)  # who the request is, once authenticated
_VERBS_BY_METHOD = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass
class Fault:
    """Make `percent`% of matching requests fail with `status`, or wait `latency` seconds first."""

    verb: str = "*"
    resource: str = "*"
    percent: float = 100.0
    status: int = 0
    latency: float = 0.0

    def matches(self, verb: str, resource: str) -> bool:
        return self.verb in ("*", verb) and self.resource in ("*", resource)


@dataclass
class Controls:
    """Sandbox-only state: injected faults and request counters."""

    faults: list[Fault] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)


class Pods(Protocol):
    """What the pod runtime serves through the API: an address to proxy to, and logs."""

    def address(self, namespace: str, name: str) -> str | None: ...

    def logs(self, namespace: str, name: str, container: str | None, *, previous: bool, tail: int | None) -> bytes: ...


_HOP_BY_HOP = HOP_BY_HOP | {"authorization"}  # the apiserver never forwards the caller's credentials


@dataclass(frozen=True)
class Target:
    rt: ResourceType
    version: str
    namespace: str | None
    name: str | None
    subresource: str
    extra: str = ""


_BODY_TYPES = ("application/json", "application/yaml", "application/vnd.kubernetes.protobuf")


def encode(body: Any) -> bytes:
    """JSON as kube-apiserver writes it: Go's json.Encoder (k8s.io/apimachinery runtime/serializer/json
    json.go doEncode): compact, UTF-8 as is, <, > and & escaped as \\u003c, \\u003e and \\u0026 (SetEscapeHTML's
    default), U+2028 and U+2029 escaped, and a newline at the end."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in _GO_ESCAPES:
        text = text.replace(char, escaped)
    return text.encode() + b"\n"


_GO_ESCAPES = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # body= bytes: aiohttp adds no charset, and kube answers exactly `application/json`
    return web.Response(status=status, body=encode(body), content_type="application/json", headers=headers)


def _error(exc: ApiError) -> web.Response:
    return _json(exc.status(), status=exc.code)


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml(text: str) -> Any:
    """A YAML body (apply patches are YAML by media type, JSON by content, as kubectl and client-go send them):
    JSON parsed as JSON (a YAML subset: the same value, as sigs.k8s.io/yaml's YAMLToJSON gives the apiserver),
    else YAML, with libyaml where PyYAML has it (pure-Python scanning was a third of the sandbox's time under
    50 releases at once)."""
    try:
        return json.loads(text)
    except ValueError:
        return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader, C or Python


class Api:
    """Routes requests to the cluster."""

    def __init__(
        self,
        cluster: Cluster,
        controls: Controls,
        *,
        extra_routes: Any = None,
        pods: Pods | None = None,
        resets: Callable[[dict[str, Any], int], bool] | None = None,
        auth: Auth | None = None,
    ) -> None:
        self.auth = auth
        self.pods = pods
        self.resets = resets  # (pod, port) -> a plaintext connection is reset there (a sidecar under STRICT mTLS)
        self.cluster = cluster
        self.controls = controls
        self.extra_routes = extra_routes
        self.address = "127.0.0.1"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("GET", "/sandbox/stats", self.stats)
        app.router.add_route("POST", "/sandbox/faults", self.add_fault)
        app.router.add_route("DELETE", "/sandbox/faults", self.clear_faults)
        app.router.add_route("POST", "/sandbox/drop-watches", self.drop_watches)
        if self.extra_routes:
            self.extra_routes(app)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    # --- sandbox-only endpoints ------------------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        return _json(
            {
                "requests": dict(sorted(self.controls.stats.items())),
                "objects": len(self.cluster.store.objects),
                "resourceVersion": self.cluster.store.rv,
            }
        )

    async def add_fault(self, request: web.Request) -> web.Response:
        body = await request.json()
        fault = Fault(**{k: v for k, v in body.items() if k in Fault.__dataclass_fields__})
        self.controls.faults.append(fault)
        return _json({"faults": len(self.controls.faults)}, status=201)

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.controls.faults.clear()
        return _json({"faults": 0})

    async def drop_watches(self, request: web.Request) -> web.Response:
        return _json({"dropped": self.cluster.store.drop_watches()})

    # --- Kubernetes API --------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        try:
            if self.auth is not None:  # the authentication, then the authorization filter: before any routing
                user = self.auth.identify(request.headers.get("Authorization"))
                request[USER] = user
                if self.auth.enforce:
                    self.auth.check(request_attributes(user, request.method, request.path, dict(request.query)))
            if path == "/openapi/v2":
                return self._swagger(request)
            proxy = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/proxy(/.*)?", request.path)
            if proxy:
                self.controls.stats["proxy pods"] += 1
                await self._inject("proxy", "pods")
                return await self._proxy(request, proxy.group(1), proxy.group(2), proxy.group(3) or "")
            static = self._static(path)
            if static is not None:
                return _json(static)
            target = self._route(path)
            verb = self._verb(request, target)
            self.controls.stats[f"{verb} {target.rt.plural}"] += 1
            await self._inject(verb, target.rt.plural)
            return await self._dispatch(request, target, verb)
        except ApiError as exc:
            return _error(exc)
        except Exception as exc:  # a sandbox bug: answer as the apiserver answers its own, and log it
            log.exception("internal error serving %s %s", request.method, request.path)
            return _error(ApiError(500, "InternalError", f"Internal error occurred: {exc}"))

    @staticmethod
    def _swagger(request: web.Request) -> web.Response:
        """OpenAPI v2 in JSON; the protobuf form is not served (406, so client-go moves on as with old servers)."""
        accept = request.headers.get("Accept", "*/*")
        if "json" not in accept and "*/*" not in accept:
            return _error(ApiError(406, "NotAcceptable", "only application/json is served for /openapi/v2"))
        return _json(swagger_document())

    def _static(self, path: str) -> dict[str, Any] | None:
        """Discovery, OpenAPI and health documents; None when `path` names a resource instead."""
        registry = self.cluster.registry
        exact: dict[str, Any] = {
            "/version": lambda: discovery.VERSION,
            "/api": lambda: discovery.api_versions(self.address),
            "/apis": lambda: discovery.api_group_list(registry),
            "/openapi/v3": lambda: discovery.openapi_v3_index(registry),
            "/healthz": lambda: {"status": "ok"},
            "/readyz": lambda: {"status": "ok"},
            "/livez": lambda: {"status": "ok"},
        }
        if path in exact:
            document: dict[str, Any] = exact[path]()
            return document
        match = re.fullmatch(r"/openapi/v3/(?:api/(v1)|apis/([^/]+)/([^/]+))", path)
        if match:
            found = discovery.openapi_v3_document(registry, match.group(2) or "", match.group(1) or match.group(3))
            if found is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return found
        match = re.fullmatch(r"/api/(v1)|/apis/([^/]+)/([^/]+)", path)
        if match:
            return discovery.resource_list(registry, match.group(2) or "", match.group(1) or match.group(3))
        match = re.fullmatch(r"/apis/([^/]+)", path)
        return discovery.api_group(registry, match.group(1)) if match else None

    def _route(self, path: str) -> Target:
        match = re.fullmatch(r"/api/(v1)/(.*)|/apis/([^/]+)/([^/]+)/(.*)", path)
        if not match:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        group = match.group(3) or ""
        version = match.group(1) or match.group(4)
        parts = (match.group(2) if match.group(1) else match.group(5)).split("/")
        namespace = None
        # /api/v1/namespaces/NAME/status is the namespace's own subresource, not a resource in it
        if parts[0] == "namespaces" and len(parts) >= 3 and (group or parts[2] not in ("status", "finalize")):
            namespace, parts = parts[1], parts[2:]
        rt = self.cluster.rt(group, version, parts[0])
        if rt.namespaced is False and namespace is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = parts[1] if len(parts) > 1 else None
        subresource = parts[2] if len(parts) > 2 else ""
        if (
            subresource
            and subresource not in rt.subresources
            and not (rt.kind == "Namespace" and subresource in ("status", "finalize"))
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return Target(rt, version, namespace if rt.namespaced else None, name, subresource, "/".join(parts[3:]))

    @staticmethod
    def _verb(request: web.Request, target: Target) -> str:
        if request.method == "GET":
            if request.query.get("watch") in ("true", "1"):
                return "watch"
            return "get" if target.name else "list"
        if request.method == "DELETE" and not target.name:
            return "deletecollection"
        return _VERBS_BY_METHOD.get(request.method, request.method.lower())

    async def _inject(self, verb: str, resource: str) -> None:
        for fault in self.controls.faults:
            if fault.matches(verb, resource) and random.uniform(0, 100) < fault.percent:  # noqa: S311 - fault sampling
                if fault.latency:
                    await asyncio.sleep(fault.latency)
                if fault.status:
                    reason = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(fault.status, "InternalError")
                    raise ApiError(fault.status, reason, f"injected fault: {fault.status} for {verb} {resource}")

    async def _body(self, request: web.Request, target: Target) -> Any:
        raw = await request.read()
        content_type = request.content_type
        log.debug("body %s %s: %s", request.method, request.path, content_type)
        if "Content-Type" not in request.headers:
            content_type = "application/json"  # negotiation: no Content-Type is the first supported type
        if request.method in ("POST", "PUT") and raw and content_type not in _BODY_TYPES:
            # handlers/create.go and update.go: negotiation.NegotiateInputSerializer answers 415 (errors.go
            # NewUnsupportedMediaTypeError); custom resources have no protobuf
            accepted = ", ".join(t for t in _BODY_TYPES if target is None or target.rt.builtin or "protobuf" not in t)
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: {accepted}",
            )
        try:
            if content_type == "application/vnd.kubernetes.protobuf":
                return decode_request(raw)
            if content_type in ("application/apply-patch+yaml", "application/yaml"):
                return _yaml(raw.decode() or "null")
            return json.loads(raw.decode() or "null")
        except (ValueError, yaml.YAMLError, ProtobufError) as exc:
            raise bad_request(f"the body of the request was in an unknown format: {exc}") from None

    async def _dispatch(self, request: web.Request, target: Target, verb: str) -> web.StreamResponse:
        self.cluster.warnings = []
        handler = {
            "watch": self._watch,
            "list": self._list,
            "get": self._get,
            "deletecollection": self._collection,
            "create": self._create,
            "update": self._update,
            "patch": self._patch,
            "delete": self._delete,
        }.get(verb)
        if handler is None or (not target.rt.stored and verb != "create"):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if not target.rt.stored:
            return _json(self._review(request, target, await self._body(request, target)), status=201)
        if target.subresource == "token":
            if verb != "create":
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            return _json(self._token_request(target, await self._body(request, target)), status=201)
        if target.subresource == "scale" and verb in ("update", "patch"):
            return _json(self._scale_write(request, target, await self._body(request, target)))
        return await handler(request, target)

    def _review(self, request: web.Request, t: Target, body: Any) -> dict[str, Any]:
        """SelfSubjectAccessReview, SelfSubjectRulesReview, SelfSubjectReview: the body back with its status, for
        the request's own user (pkg/registry/authorization/selfsubjectaccessreview/rest.go and its siblings)."""
        if not isinstance(body, dict) or body.get("kind") not in (None, t.rt.kind):
            raise bad_request(f"not a {t.rt.kind}: {type(body).__name__}")
        user = request.get(USER) or User("system:anonymous")
        auth = self.auth
        answer: dict[str, Any] = {
            "kind": t.rt.kind,
            "apiVersion": t.rt.api_version(t.version),
            "metadata": {"creationTimestamp": None} | (body.get("metadata") or {}),
        }
        spec = body.get("spec") or {}
        if t.rt.kind == "SelfSubjectReview":
            answer["metadata"]["creationTimestamp"] = now()
            answer["status"] = {"userInfo": user.info()}
        elif t.rt.kind == "SelfSubjectAccessReview":
            if bool(spec.get("resourceAttributes")) == bool(spec.get("nonResourceAttributes")):
                raise _invalid_review(
                    t.rt.kind, "exactly one of nonResourceAttributes or resourceAttributes must be specified"
                )
            answer["spec"] = spec
            answer["status"] = auth.access_review(user, spec) if auth else {"allowed": True}
        else:
            if not spec.get("namespace"):
                raise _invalid_review(t.rt.kind, "spec.namespace: Required value")
            answer["spec"] = spec
            answer["status"] = auth.rules_review(user, spec["namespace"]) if auth else {"incomplete": False}
        return answer

    def _token_request(self, t: Target, body: Any) -> dict[str, Any]:
        """TokenRequest (pkg/registry/core/serviceaccount/storage/token.go): a bound token for the account."""
        if self.auth is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        account = self.cluster.get(t.rt, t.version, t.namespace or "", t.name or "")  # 404 if it does not exist
        spec = (body or {}).get("spec") or {}
        expiration = int(spec.get("expirationSeconds") or DEFAULT_EXPIRATION)
        if expiration < MIN_EXPIRATION:
            raise ApiError(
                422,
                "Invalid",
                f'TokenRequest.authentication.k8s.io "{t.name}" is invalid: spec.expirationSeconds: Invalid value: '
                f"{expiration}: may not specify a duration less than 10 minutes",
                details={"name": t.name or "", "group": "authentication.k8s.io", "kind": "TokenRequest"},
            )
        audiences = list(spec.get("audiences") or [ISSUER])
        token, expires = self.auth.tokens.bound(account, audiences=audiences, expiration=expiration)
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": t.name, "namespace": t.namespace, "creationTimestamp": now()},
            "spec": {"audiences": audiences, "expirationSeconds": expiration, "boundObjectRef": None},
            "status": {
                "token": token,
                "expirationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
            },
        }

    async def _list(self, request: web.Request, t: Target) -> web.StreamResponse:
        query = request.query
        found = self.cluster.list(
            t.rt,
            t.version,
            t.namespace,
            labels=query.get("labelSelector"),
            field_selector=query.get("fieldSelector"),
            limit=int(query.get("limit", 0)),
            cont=query.get("continue"),
        )
        if not t.rt.builtin and tables.wants_table(request.headers.get("Accept", "")):
            meta = found.get("metadata") or {}
            columns = t.rt.crd_columns.get(t.version, [])
            return _json(
                tables.table(
                    found["items"],
                    columns,
                    resource_version=meta.get("resourceVersion", ""),
                    cont=meta.get("continue", ""),
                )
            )
        return _json(found)

    async def _get(self, request: web.Request, t: Target) -> web.StreamResponse:
        obj = self.cluster.get(t.rt, t.version, t.namespace or "", t.name or "")
        if t.subresource == "scale":
            return _json(_scale(obj))
        if t.subresource == "log":
            if request.query.get("follow") in ("true", "1"):
                return await self._follow(request, t)
            return self._logs(request, t)
        if not t.rt.builtin and not t.subresource and tables.wants_table(request.headers.get("Accept", "")):
            columns = t.rt.crd_columns.get(t.version, [])
            version = obj["metadata"].get("resourceVersion", "")
            return _json(tables.table([obj], columns, resource_version=version))
        return _json(obj)

    def _logs(self, request: web.Request, t: Target) -> web.Response:
        query = request.query
        tail = query.get("tailLines")
        try:
            if self.pods is None:
                raise ValueError("this sandbox runs no containers")
            data = self.pods.logs(
                t.namespace or "",
                t.name or "",
                query.get("container"),
                previous=query.get("previous") in ("true", "1"),
                tail=int(tail) if tail and tail.isdigit() else None,
            )
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        return web.Response(body=data, content_type="text/plain")

    async def _follow(self, request: web.Request, t: Target) -> web.StreamResponse:
        """log?follow=true: what the container printed so far, then more as it prints, until it has ended (the
        pod Succeeded or Failed, or is gone), as the kubelet's log stream does."""
        pods = self.cluster.rt("", "v1", "pods")
        namespace, name = t.namespace or "", t.name or ""
        container = request.query.get("container")
        try:
            if self.pods is None:
                raise ValueError("this sandbox runs no containers")
            data = self.pods.logs(namespace, name, container, previous=False, tail=None)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        sent = 0
        while True:
            if len(data) > sent:
                await response.write(data[sent:])
                sent = len(data)
            pod = self.cluster.store.get(self.cluster.key(pods, namespace, name))
            ended = pod is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
            if ended:
                break
            await asyncio.sleep(0.2)
            with contextlib.suppress(ValueError):
                data = self.pods.logs(namespace, name, container, previous=False, tail=None)
        with contextlib.suppress(ValueError):  # what it printed last, before the pod's status said it ended
            data = self.pods.logs(namespace, name, container, previous=False, tail=None)
            if len(data) > sent:
                await response.write(data[sent:])
        await response.write_eof()
        return response

    async def _proxy(self, request: web.Request, namespace: str, target: str, rest: str) -> web.StreamResponse:
        """pods/[scheme:]NAME[:PORT]/proxy/PATH: the request, forwarded to the pod as the apiserver does."""
        parts = target.split(":")
        if parts[0] in ("http", "https") and len(parts) > 1:
            scheme, parts = parts[0], parts[1:]
        else:
            scheme = "http"
        name, port_text = parts[0], (parts[1] if len(parts) > 1 else "")
        pod = self.cluster.get(self.cluster.rt("", "v1", "pods"), "v1", namespace, name)
        port = _pod_port(pod, port_text)
        ip = self.pods.address(namespace, name) if self.pods else None
        pod_ip = (pod.get("status") or {}).get("podIP") or ""
        if port is None:
            raise bad_request(f"invalid port {port_text!r} for pod {name}")
        if not ip or scheme != "http":
            raise ApiError(
                503,
                "ServiceUnavailable",
                f"error trying to reach service: dial tcp {pod_ip}:{port}: connect: connection refused",
            )
        if self.resets is not None and self.resets(pod, port):  # the apiserver is outside the mesh (istio#27169)
            raise ApiError(
                503,
                "ServiceUnavailable",
                f"error trying to reach service: read tcp {self.address.split(':')[0]}:{40000 + port % 20000}->"
                f"{pod_ip}:{port}: read: connection reset by peer",
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        url = f"http://{ip}:{port}{rest or '/'}"
        if request.query_string:
            url += f"?{request.query_string}"
        try:
            data = await request.read()
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
                session.request(request.method, url, headers=headers, data=data, allow_redirects=False) as answer,
            ):
                body = await answer.read()
                out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
                return web.Response(status=answer.status, body=body, headers=out)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(503, "ServiceUnavailable", f"error trying to reach service: {exc}") from None

    async def _collection(self, request: web.Request, t: Target) -> web.StreamResponse:
        return _json(self._delete_collection(request, t))

    async def _create(self, request: web.Request, t: Target) -> web.StreamResponse:
        query = request.query
        obj = self.cluster.create(
            t.rt,
            t.version,
            t.namespace or "",
            await self._body(request, t),
            manager=query.get("fieldManager") or _default_manager(request),
            mode=query.get("fieldValidation") or "Warn",
            dry_run=query.get("dryRun") == "All",
        )
        return _json(obj, status=201, headers=_warnings(self.cluster.warnings))

    async def _update(self, request: web.Request, t: Target) -> web.StreamResponse:
        query = request.query
        obj = self.cluster.update(
            t.rt,
            t.version,
            t.namespace or "",
            t.name or "",
            await self._body(request, t),
            manager=query.get("fieldManager") or _default_manager(request),
            subresource=t.subresource,
            mode=query.get("fieldValidation") or "Warn",
            dry_run=query.get("dryRun") == "All",
        )
        return _json(obj, headers=_warnings(self.cluster.warnings))

    async def _patch(self, request: web.Request, t: Target) -> web.StreamResponse:
        query, cluster = request.query, self.cluster
        patch_type = _PATCH_TYPES.get(request.content_type)
        if patch_type is None or patch_type == "apply-cbor":
            accepted = ", ".join(k for k in _PATCH_TYPES if not k.endswith("cbor"))
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: {accepted}",
            )
        existed = cluster.store.get(cluster.key(t.rt, t.namespace or "", t.name or "")) is not None
        manager = query.get("fieldManager") or (None if patch_type == "apply" else _default_manager(request))
        obj = cluster.patch(
            t.rt,
            t.version,
            t.namespace or "",
            t.name or "",
            patch_type=patch_type,
            body=await self._body(request, t),
            manager=manager,
            subresource=t.subresource,
            force=query.get("force") == "true",
            mode=query.get("fieldValidation") or ("Strict" if patch_type == "apply" else "Warn"),
            dry_run=query.get("dryRun") == "All",
        )
        return _json(obj, status=200 if existed else 201, headers=_warnings(cluster.warnings))

    async def _delete(self, request: web.Request, t: Target) -> web.StreamResponse:
        options = await self._delete_options(request)
        return _json(
            self.cluster.delete(
                t.rt,
                t.version,
                t.namespace or "",
                t.name or "",
                options=options,
                dry_run=request.query.get("dryRun") == "All",
            )
        )

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if request.can_read_body:
            body = await self._body(request, None)  # type: ignore[arg-type]
            if isinstance(body, dict):
                options = body
        for key in ("propagationPolicy", "gracePeriodSeconds", "orphanDependents"):
            if key in request.query:
                options[key] = request.query[key]
        if options.get("orphanDependents") in ("true", True):
            options["orphanDependents"] = True
        return options

    def _delete_collection(self, request: web.Request, target: Target) -> dict[str, Any]:
        listed = self.cluster.list(
            target.rt,
            target.version,
            target.namespace,
            labels=request.query.get("labelSelector"),
            field_selector=request.query.get("fieldSelector"),
        )
        for item in listed["items"]:
            meta = item["metadata"]
            self.cluster.delete(target.rt, target.version, meta.get("namespace", ""), meta["name"])
        return listed

    def _scale_write(self, request: web.Request, target: Target, body: Any) -> dict[str, Any]:
        cluster, rt = self.cluster, target.rt
        current = cluster.get(rt, target.version, target.namespace or "", target.name or "")
        scale = _scale(current)
        if request.method == "PATCH":
            patch_type = _PATCH_TYPES.get(request.content_type, "merge")
            scale = json_patch(scale, body) if patch_type == "json" else merge_patch(scale, body)
        else:
            scale = body
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(
                422,
                "Invalid",
                f'Scale.autoscaling "{target.name}" is invalid: spec.replicas: Invalid '
                f"value: {replicas}: must be greater than or equal to 0",
            )
        updated = cluster.patch(
            rt,
            target.version,
            target.namespace or "",
            target.name or "",
            patch_type="merge",
            body={"spec": {"replicas": replicas}},
            manager=request.query.get("fieldManager") or _default_manager(request),
            subresource="scale",
        )
        return _scale(updated)

    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        query = request.query
        timeout = float(query.get("timeoutSeconds") or 1800)
        events = watch(
            self.cluster,
            target.rt,
            target.version,
            target.namespace,
            resource_version=query.get("resourceVersion"),
            labels=query.get("labelSelector"),
            field_selector=_name_field(query.get("fieldSelector"), target.name),
            timeout=timeout,
            bookmarks=query.get("allowWatchBookmarks") == "true",
            send_initial=query.get("sendInitialEvents") == "true",
        )
        if query.get("sendInitialEvents") == "true" and (
            query.get("resourceVersionMatch") != "NotOlderThan" or query.get("allowWatchBookmarks") != "true"
        ):
            raise ApiError(
                422,
                "Invalid",
                'ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: Forbidden: '
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan "
                "and allowWatchBookmarks to true",
            )
        try:  # selector errors surface as a plain HTTP error, before the stream starts
            label_matcher(query.get("labelSelector"))
            field_matcher(query.get("fieldSelector"), target.rt.kind)
        except SelectorError as exc:
            raise bad_request(str(exc)) from None
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            async for event in events:
                await response.write(encode(event))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            await events.aclose()
        return response


def _invalid_review(kind: str, message: str) -> ApiError:
    group = "authorization.k8s.io"
    return ApiError(422, "Invalid", f'{kind}.{group} "" is invalid: {message}', details={"group": group, "kind": kind})


def _name_field(selector: str | None, name: str | None) -> str | None:
    if not name:
        return selector
    return f"metadata.name={name}" + (f",{selector}" if selector else "")


def _warnings(warnings: list[str]) -> dict[str, str] | None:
    if not warnings:
        return None
    return {"Warning": ", ".join('299 - "' + w.replace('"', '\\"') + '"' for w in warnings)}


def _default_manager(request: web.Request) -> str:
    """kube-apiserver names an Update's manager after the user agent's program name."""
    agent = request.headers.get("User-Agent", "unknown")
    return agent.split("/", 1)[0] or "unknown"


def _scale(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {
            "replicas": (obj.get("status") or {}).get("replicas", 0),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(selector.items())),
        },
    }


def _pod_port(pod: dict[str, Any], port: str) -> int | None:
    """A port of the proxy path: a number, a container port's name, or 80 when none is given."""
    if not port:
        return 80
    if port.isdigit():
        return int(port) if 0 < int(port) < 65536 else None
    return named_port((pod.get("spec") or {}).get("containers") or [], port)
