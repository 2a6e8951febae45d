"""Smart HTTP (aiohttp around `git http-backend`), /healthz and /metrics.

Authentication is a token: HTTP basic (any user name, the token as password: http://alice:TOKEN@host/app.git)
or `Authorization: Bearer TOKEN`. Wrong tokens from one address earn it a growing wait (server/throttle.py);
a request without credentials (git's first, before it asks for them) is not a failure. Refusals after
authentication are answered the way git shows them best: an `ERR` packet in the ref advertisement, which git
prints as "fatal: remote error: ...". The CGI runs to its end even when the client goes away, so a release in
flight ends consistently and git moves the ref only then.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from typing import Any

from aiohttp import web

from deployer.build.kaniko import CONTEXT_PATH
from deployer.config.server import user_for_token
from deployer.errors import DeployError
from deployer.server.core import SERVICES, DeployServer
from deployer.server.throttle import Throttle
from deployer.server.web import WebView

log = logging.getLogger("deployer.server.http")
_CHUNK = 64 * 1024


def _pkt(text: str) -> bytes:
    data = text.encode()
    return f"{len(data) + 4:04x}".encode() + data


def _token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
    return ""


def _refused(service: str, message: str) -> web.Response:
    body = _pkt(f"# service={service}\n") + b"0000" + _pkt(f"ERR {message}\n")
    return web.Response(body=body, content_type=f"application/x-{service}-advertisement")


class GitHttp:
    def __init__(self, server: DeployServer) -> None:
        self.server = server
        limits = server.config.limits
        self.throttle = Throttle(free=limits.auth_free_failures, ceiling=limits.auth_max_wait)

    def app(self) -> web.Application:
        app = web.Application()
        if self.server.config.web.enabled:  # first: POST /ui/signin would otherwise match /{repo}/{service}
            WebView(self.server, self.throttle).add_routes(app)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get(CONTEXT_PATH + "{token}.tar.gz", self.build_context, allow_head=False)  # HEAD would take it
        app.router.add_get("/{repo}/info/refs", self.git)
        app.router.add_post("/{repo}/{service}", self.git)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "releasesInFlight": self.server.in_flight})

    async def build_context(self, request: web.Request) -> web.StreamResponse:
        """A kaniko build Job's context: its one-time token is the credential (fetched once, by its build)."""
        contexts = self.server.services.contexts
        found = contexts.take(request.match_info["token"]) if contexts is not None else None
        if found is None:
            return web.Response(status=404, text="no such build context (each is fetched once, by its own build)\n")
        path, what = found
        log.info("build context of %s fetched by %s", what, request.remote)
        return web.FileResponse(path, headers={"Content-Type": "application/gzip", "Cache-Control": "no-store"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.server.metrics.exposition(), content_type="text/plain", charset="utf-8")

    async def git(self, request: web.Request) -> web.StreamResponse:
        service = request.match_info.get("service") or request.query.get("service", "")
        if service not in SERVICES:
            return web.Response(status=403, text="only git-receive-pack and git-upload-pack are served here\n")
        if request.method == "POST" and request.content_type != f"application/x-{service}-request":
            return web.Response(status=415, text=f"expected Content-Type application/x-{service}-request\n")
        user = self._authenticate(request)
        if isinstance(user, web.Response):
            return user
        try:
            repo, env = await self.server.git_environment(service=service, path=request.match_info["repo"], user=user)
        except DeployError as exc:
            if request.method == "GET":
                return _refused(service, str(exc))
            return web.Response(status=403, text=f"{exc}\n")
        rest = "info/refs" if request.method == "GET" else service
        cgi = {
            "GIT_PROJECT_ROOT": str(repo.parent),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{repo.name}/{rest}",
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.query_string,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_USER": user,
            "REMOTE_ADDR": request.remote or "",
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
            **env,
        }
        if request.content_length is not None:
            cgi["CONTENT_LENGTH"] = str(request.content_length)
        # shielded: a client that goes away must not cancel a push whose release is running
        return await asyncio.shield(self._cgi(request, cgi))

    def _authenticate(self, request: web.Request) -> str | web.Response:
        """The user a request's token names, or the answer to a request that names none."""
        address = request.remote or ""
        if wait := self.throttle.wait(address):  # before any token is compared: guessing gets no answer
            return web.Response(
                status=429,
                text=f"too many wrong tokens from {address}: try again in {wait}s\n",
                headers={"Retry-After": str(wait)},
            )
        token = _token(request)
        user = user_for_token(self.server.config, token) if token else None
        if user is None:
            if token and (penalty := self.throttle.failed(address)):
                self.server.metrics.auth_failures.labels("throttled").inc()
                log.warning("wrong token from %s: it waits %gs before its next try", address, penalty)
            elif token:
                self.server.metrics.auth_failures.labels("wrong").inc()
            return web.Response(
                status=401,
                text="authentication required: a token as password, or Authorization: Bearer TOKEN\n",
                headers={"WWW-Authenticate": 'Basic realm="deployer"'},
            )
        self.throttle.succeeded(address)
        return user

    async def _cgi(self, request: web.Request, cgi: dict[str, str]) -> web.StreamResponse:
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **cgi},
        )
        assert proc.stdin and proc.stdout and proc.stderr
        feeder = asyncio.create_task(self._feed(request, proc.stdin))
        errors = asyncio.create_task(proc.stderr.read())
        status, headers = await _cgi_headers(proc.stdout)
        response = web.StreamResponse(status=status, headers=headers)
        client = True
        try:
            await response.prepare(request)
        except (ConnectionError, RuntimeError):
            client = False
        while chunk := await proc.stdout.read(_CHUNK):
            if client:
                try:
                    await response.write(chunk)
                except (ConnectionError, RuntimeError):
                    client = False  # keep draining: the git process and its hook run to their end
                    log.info("client went away during %s; the push goes on", cgi["PATH_INFO"])
        await proc.wait()
        self.server.forget(cgi)
        feeder.cancel()
        stderr = (await errors).decode(errors="replace").strip()
        if stderr:
            log.info("git http-backend: %s", " ".join(stderr.split()))
        if client:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await response.write_eof()
        return response

    async def _feed(self, request: web.Request, stdin: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):  # a broken body, or a git that stopped reading, ends the input
            async for chunk in request.content.iter_chunked(_CHUNK):
                stdin.write(chunk)
                await stdin.drain()
        with contextlib.suppress(Exception):
            stdin.close()


async def _cgi_headers(stdout: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    status, headers = 200, dict[str, Any]()
    while True:
        line = (await stdout.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            return status, headers
        name, _, value = line.partition(":")
        if name.lower() == "status":
            with contextlib.suppress(ValueError):
                status = int(value.strip().split()[0])
        else:
            headers[name.strip()] = value.strip()
