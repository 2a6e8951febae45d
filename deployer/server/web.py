"""The web view (docs/web.md): what runs where, each environment's history and its canary live, and the actions
the CLI has (promote, abort, roll back) for users whose rights include the environment.

Served on the HTTP listener under /ui/. Server-rendered Jinja2 (autoescaped), one small script for live updates
over Server-Sent Events, no build step. Sign-in is a user's token (as git over HTTP takes it, throttled the same
way); the session is a cookie signed with a key kept in dataDir (replicas that share dataDir share sessions) and
bound to the user's token digests in server.yaml, so removing a token ends its sessions. Cookies are HttpOnly,
SameSite=Strict and Secure behind TLS; every action needs the session's CSRF token and a same-origin request.
Pages show records, never values, `-o set` values or tokens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote, urlsplit

import jinja2
from aiohttp import web

from deployer.build.source import git
from deployer.config.server import ServerConfig, may_act, may_push, user_for_token
from deployer.errors import DeployError, TransientError
from deployer.events import Event, Record, Status, line, live_release
from deployer.pipeline import operations as ops
from deployer.server.throttle import Throttle

if TYPE_CHECKING:
    from deployer.server.core import DeployServer

log = logging.getLogger("deployer.server.web")
COOKIE = "deployer_session"
FRESH = 1.0  # seconds a read of an environment's records is shared by every page and stream
UNANSWERED = 10.0  # seconds a cluster that did not answer is not asked again for pages
HEARTBEAT = 15.0
MAX_STREAMS = 16  # open live pages (event streams) per user; more answer 429
LOG_LINES = 500
STATIC = Path(__file__).parent / "static"
SAID = {
    "promote": "Promotion asked: the canary skips its remaining steps at its next round.",
    "abort": "Abort asked: the canary is rolled back at its next round.",
    "rollback": "Rollback started: follow it in the log below.",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# --- sessions ---------------------------------------------------------------------------------------------


def session_key(data_dir: Path) -> bytes:
    """The key that signs sessions: made once in dataDir (0600) and kept, so a restart keeps people signed in."""
    path = data_dir / "web-session.key"
    with contextlib.suppress(FileExistsError):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signed, expiring sessions; a session names a user and is valid only while that user's tokens are the same."""

    def __init__(self, key: bytes, config: ServerConfig) -> None:
        self.key, self.config = key, config

    def _sign(self, payload: str, user: str) -> str:
        bound = ",".join(sorted(self.config.users[user].tokens))
        return _b64(hmac.new(self.key, f"{payload}|{bound}".encode(), hashlib.sha256).digest())

    def issue(self, user: str) -> str:
        body = {"u": user, "e": int(time.time() + self.config.web.session), "n": secrets.token_hex(8)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload, user)}"

    def user(self, cookie: str | None) -> str | None:
        payload, _, signature = (cookie or "").partition(".")
        try:
            body = json.loads(_unb64(payload))
            user = str(body["u"])
            expires = float(body["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if user not in self.config.users or not self.config.users[user].tokens or expires < time.time():
            return None
        return user if hmac.compare_digest(signature, self._sign(payload, user)) else None

    def csrf(self, cookie: str) -> str:
        return _b64(hmac.new(self.key, f"csrf|{cookie}".encode(), hashlib.sha256).digest())


# --- what the pages read -----------------------------------------------------------------------------------


@dataclass
class Feed:
    """An environment's release log as the server runs it: the last lines, and whoever listens now."""

    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    listeners: set[asyncio.Queue[str]] = field(default_factory=set)

    def publish(self, event: Event) -> None:
        said = line(event)
        self.lines.append(said)
        for queue in self.listeners:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(said)

    def restart(self) -> None:
        self.lines.clear()


class Feeds:
    def __init__(self) -> None:
        self._feeds: dict[tuple[str, str], Feed] = {}

    def __call__(self, app: str, environment: str) -> Feed:
        return self._feeds.setdefault((app, environment), Feed())


class Histories:
    """Records read through a short cache: any number of viewers cost one read per environment per FRESH; a
    cluster that did not answer (after the client's retries) is not asked again for UNANSWERED seconds, so a
    page with an environment on it stays quick."""

    def __init__(self, server: DeployServer) -> None:
        self.server = server
        self._cache: dict[tuple[str, str], tuple[float, list[Record]]] = {}
        self._failed: dict[tuple[str, str], tuple[float, Exception]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def __call__(self, app: str, environment: str) -> list[Record]:
        key = (app, environment)
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._cache.get(key)
            if cached is not None and time.monotonic() - cached[0] < FRESH:
                return cached[1]
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < UNANSWERED:
                raise failed[1]
            env = self.server.environment(app, environment)
            try:
                records = await ops.records_of(self.server.api(app, environment), env).history()
            except (DeployError, TransientError, OSError) as exc:
                self._failed[key] = (time.monotonic(), exc)
                raise
            self._failed.pop(key, None)
            self._cache[key] = (time.monotonic(), records)
            return records


@dataclass(frozen=True)
class Commit:
    subject: str = ""
    author: str = ""


class Commits:
    """A commit's subject and author from the app's repository (commits never change: kept once read)."""

    def __init__(self, repos: Path) -> None:
        self.repos = repos
        self._known: dict[str, Commit] = {}

    async def __call__(self, app: str, sha: str) -> Commit:
        if not sha:
            return Commit()
        if sha not in self._known:
            repo = self.repos / f"{app}.git"
            try:
                out = (await git(repo, "log", "-1", "--format=%s%x1f%an", sha, "--")).decode(errors="replace")
            except (DeployError, OSError):
                return Commit()
            subject, _, author = out.strip().partition("\x1f")
            self._known[sha] = Commit(subject[:120], author[:80])
        return self._known[sha]


def _age(seconds: float) -> str:
    if seconds <= 0:
        return ""
    left = max(0, int(time.time() - seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if left >= size:
            return f"{left // size}{unit}"
    return f"{left}s"


def _digest(image: str) -> str:
    _, at, digest = image.partition("@")
    return digest.removeprefix("sha256:")[:12] if at else image.rpartition(":")[2][:20]


def state_of(records: list[Record]) -> dict[str, Any]:
    """What an environment page shows live, as JSON (records without manifests or values)."""
    last = records[-1] if records else None
    live = live_release(records)
    state: dict[str, Any] = {
        "live": live.revision if live else None,
        "history": [
            {
                "revision": r.revision,
                "commit": r.commit[:12],
                "pusher": r.pusher,
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.started)) if r.started else "",
                "result": r.status.value,
                "duration": f"{r.finished - r.started:.0f}s" if r.finished and r.started else "",
                "reason": r.reason,
                "rollback": r.status is Status.DEPLOYED and live is not None and r.revision != live.revision,
            }
            for r in reversed(records)
        ],
    }
    if last is not None:
        stable, canary = last.weights or (100, 0)
        state["release"] = {
            "revision": last.revision,
            "commit": last.commit[:12],
            "result": last.status.value,
            "pending": last.status is Status.PENDING,
            "phase": last.where,
            "stable": stable,
            "canary": canary,
            "reason": last.reason,
            "rounds": [
                {
                    "round": number,
                    "weight": r.weight,
                    "checks": [
                        {
                            "name": c.name,
                            "value": "" if c.value is None else f"{c.value:g}",
                            "limit": c.limit,
                            "ok": c.ok,
                            "message": c.message,
                        }
                        for c in r.checks
                    ],
                }
                for number, r in enumerate(last.rounds, 1)
            ],
        }
    return state


# --- the view ----------------------------------------------------------------------------------------------


class WebView:
    def __init__(self, server: DeployServer, throttle: Throttle) -> None:
        self.server, self.config, self.throttle = server, server.config, throttle
        self.sessions = Sessions(session_key(server.data), server.config)
        self.histories = Histories(server)
        self.commits = Commits(server.repos)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("deployer.server", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._actions: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()
        self._streams: dict[str, int] = {}  # open event streams per user: each holds a task and reads records

    async def _shutdown(self, app: web.Application) -> None:
        self._closing.set()  # event streams end: a stopping server waits for no open page

    def add_routes(self, app: web.Application) -> None:
        app.on_shutdown.append(self._shutdown)
        app.router.add_get("/", self.root)
        app.router.add_get("/ui/", self.overview)
        app.router.add_get("/ui/signin", self.signin_page)
        app.router.add_post("/ui/signin", self.signin)
        app.router.add_post("/ui/signout", self.signout)
        app.router.add_get("/ui/static/{name}", self.static)
        app.router.add_get("/ui/{app}/{environment}", self.environment)
        app.router.add_get("/ui/{app}/{environment}/events", self.events)
        app.router.add_post("/ui/{app}/{environment}/{action}", self.act)

    # --- plumbing

    def _page(self, template: str, status: int = 200, **context: Any) -> web.Response:
        text = self.templates.get_template(template).render(**context)
        return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=HEADERS)

    def _user(self, request: web.Request) -> str | None:
        return self.sessions.user(request.cookies.get(COOKIE))

    def _signin_redirect(self, request: web.Request) -> NoReturn:
        raise web.HTTPSeeOther(f"/ui/signin?next={quote(request.path_qs, safe='')}", headers=HEADERS)

    def _secure(self, request: web.Request) -> bool:
        return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"

    def _same_origin(self, request: web.Request) -> bool:
        """A POST from this site's own pages: browsers send Origin (and Sec-Fetch-Site) with every POST."""
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        return origin is None or urlsplit(origin).netloc == request.host

    def _visible(self, user: str) -> list[str]:
        return [a for a in sorted(self.config.apps) if may_push(self.config, user=user, app=a)]

    def _known(self, request: web.Request, user: str) -> tuple[str, str]:
        app, environment = request.match_info["app"], request.match_info["environment"]
        if app not in self._visible(user) or environment not in self.config.apps[app].environments:
            raise web.HTTPNotFound(text=f"no environment {app}/{environment} here\n", headers=HEADERS)
        return app, environment

    def _common(self, request: web.Request, user: str) -> dict[str, Any]:
        cookie = request.cookies.get(COOKIE, "")
        return {"user": user, "csrf": self.sessions.csrf(cookie)}

    # --- pages

    async def root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        types = {"style.css": "text/css", "live.js": "text/javascript"}
        if name not in types:
            raise web.HTTPNotFound()
        headers = {**HEADERS, "Cache-Control": "max-age=300"}
        return web.Response(body=(STATIC / name).read_bytes(), content_type=types[name], headers=headers)

    async def signin_page(self, request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
        target = request.query.get("next", "/ui/")
        return self._page("signin.html", status=status, next=_local(target), error=error, user=None)

    async def signin(self, request: web.Request) -> web.Response:
        if not self._same_origin(request):
            return web.Response(status=403, text="cross-site sign-in refused\n", headers=HEADERS)
        address = request.remote or ""
        form = await request.post()
        target = _local(str(form.get("next") or "/ui/"))
        if wait := self.throttle.wait(address):
            page = self._page(
                "signin.html", status=429, next=target, user=None, error=f"Too many wrong tokens: try again in {wait}s."
            )
            page.headers["Retry-After"] = str(wait)
            return page
        user = user_for_token(self.config, str(form.get("token") or "").strip())
        if user is None:
            self.throttle.failed(address)
            self.server.metrics.auth_failures.labels("wrong").inc()
            return self._page("signin.html", status=401, next=target, user=None, error="That token is not known here.")
        self.throttle.succeeded(address)
        log.info("web: %s signed in from %s", user, address)
        response = web.HTTPSeeOther(target, headers=HEADERS)
        response.set_cookie(
            COOKIE,
            self.sessions.issue(user),
            max_age=int(self.config.web.session),
            path="/ui/",
            httponly=True,
            secure=self._secure(request),
            samesite="Strict",
        )
        raise response

    async def signout(self, request: web.Request) -> web.Response:
        await self._checked_form(request)
        response = web.HTTPSeeOther("/ui/signin", headers=HEADERS)
        response.del_cookie(COOKIE, path="/ui/")
        raise response

    async def overview(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if user is None:
            self._signin_redirect(request)
        rows = await asyncio.gather(  # at once: a cluster that does not answer costs the page one wait
            *(
                self._row(app, environment, namespace)
                for app in self._visible(user)
                for environment, namespace in self.config.apps[app].environments.items()
            )
        )
        return self._page("overview.html", rows=rows, **self._common(request, user))

    async def _row(self, app: str, environment: str, namespace: str) -> dict[str, Any]:
        row: dict[str, Any] = {
            "app": app,
            "environment": environment,
            "namespace": namespace,
            "error": "",
            "live": None,
            "last": None,
            "cluster": self.config.cluster_of(app, environment) or "default" if self.config.clusters else "",
        }
        try:
            records = await self.histories(app, environment)
        except (DeployError, TransientError, OSError) as exc:
            return {**row, "error": _unreadable(exc)}
        live = live_release(records)
        last = records[-1] if records else None
        if live is not None:
            commit = await self.commits(app, live.commit)
            row["live"] = {
                "revision": live.revision,
                "commit": live.commit[:12],
                "subject": commit.subject,
                "author": commit.author,
                "pusher": live.pusher,
                "digest": _digest(live.image),
                "age": _age(live.finished or live.started),
            }
        if last is not None:
            stable, canary = last.weights or (100, 0)
            row["last"] = {
                "revision": last.revision,
                "result": last.status.value,
                "phase": last.where,
                "weights": f"{stable}/{canary}",
                "reason": last.reason,
            }
        return row

    async def environment(self, request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
        user = self._user(request)
        if user is None:
            self._signin_redirect(request)
        app, environment = self._known(request, user)
        try:
            state = await self._state(app, environment)
        except (DeployError, TransientError, OSError) as exc:
            state, error = state_of([]), error or _unreadable(exc)
        return self._page(
            "environment.html",
            status=status,
            app=app,
            environment=environment,
            namespace=self.config.apps[app].environments[environment],
            state=state,
            log=list(self.server.feeds(app, environment).lines),
            allowed=may_act(self.config, user=user, app=app, environment=environment),
            said=SAID.get(request.query.get("said", ""), ""),
            error=error,
            **self._common(request, user),
        )

    async def _state(self, app: str, environment: str) -> dict[str, Any]:
        records = await self.histories(app, environment)
        state = state_of(records)
        if records:
            state["release"]["subject"] = (await self.commits(app, records[-1].commit)).subject
        return state

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: `state` (the page's JSON) when it changes, `log` for each line of the release."""
        user = self._user(request)
        if user is None:
            return web.Response(status=401, text="sign in first\n", headers=HEADERS)
        app, environment = self._known(request, user)
        if self._streams.get(user, 0) >= MAX_STREAMS:
            return web.Response(
                status=429,
                text=f"{MAX_STREAMS} live pages are open for {user} already: close some\n",
                headers={**HEADERS, "Retry-After": "30"},
            )
        self._streams[user] = self._streams.get(user, 0) + 1
        try:
            return await self._stream(request, app, environment)
        finally:
            self._streams[user] -= 1
            if not self._streams[user]:
                del self._streams[user]

    async def _stream(self, request: web.Request, app: str, environment: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        feed = self.server.feeds(app, environment)
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        feed.listeners.add(queue)
        sent: dict[str, Any] | None = None
        quiet = time.monotonic()
        try:
            while not self._closing.is_set():
                if request.transport is None or request.transport.is_closing():
                    break  # the page went away (noticed here, not at the next write: its place is free at once)
                try:
                    state = await self._state(app, environment)
                except (DeployError, TransientError, OSError):
                    state = None  # the page keeps what it shows; the next pass asks again
                if state is not None and state != sent:
                    await response.write(_sse("state", json.dumps(state)))
                    sent, quiet = state, time.monotonic()
                with contextlib.suppress(TimeoutError):
                    line = await asyncio.wait_for(queue.get(), timeout=FRESH)
                    lines = [line]
                    while not queue.empty():
                        lines.append(queue.get_nowait())
                    await response.write(b"".join(_sse("log", json.dumps(x)) for x in lines))
                    quiet = time.monotonic()
                if time.monotonic() - quiet > HEARTBEAT:
                    await response.write(b": still here\n\n")
                    quiet = time.monotonic()
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass  # the page went away (or the server stops)
        finally:
            feed.listeners.discard(queue)
        return response

    # --- actions

    async def _checked_form(self, request: web.Request) -> tuple[str, dict[str, str]]:
        """The user of a same-origin POST that carries its session's CSRF token, and its form."""
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="cross-site request refused\n", headers=HEADERS)
        cookie = request.cookies.get(COOKIE, "")
        user = self.sessions.user(cookie)
        if user is None:
            raise web.HTTPUnauthorized(text="sign in first\n", headers=HEADERS)
        form = {k: str(v) for k, v in (await request.post()).items()}
        if not hmac.compare_digest(form.get("csrf", ""), self.sessions.csrf(cookie)):
            raise web.HTTPForbidden(
                text="the form's CSRF token is missing or stale: reload the page\n", headers=HEADERS
            )
        return user, form

    async def act(self, request: web.Request) -> web.Response:
        user, form = await self._checked_form(request)
        app, environment = self._known(request, user)
        action = request.match_info["action"]
        if action not in SAID:
            raise web.HTTPNotFound(headers=HEADERS)
        if not may_act(self.config, user=user, app=app, environment=environment):
            log.warning("web: %s may not %s %s/%s", user, action, app, environment)
            return await self.environment(
                request, error=f"User {user!r} may not {action} in {environment}.", status=403
            )
        env = self.server.environment(app, environment)
        try:
            if action == "rollback":
                revision = int(form.get("revision", ""))
                self._start_rollback(env, revision, user)
            else:
                api = self.server.api(app, environment)
                revision = await ops.request(ops.records_of(api, env), env=env, what=action)
        except ValueError:
            return await self.environment(request, error="No revision to roll back to was given.", status=400)
        except (DeployError, TransientError) as exc:
            return await self.environment(request, error=str(exc), status=409)
        log.info("web: %s asked %s of %s/%s revision %s", user, action, app, environment, revision)
        raise web.HTTPSeeOther(f"/ui/{app}/{environment}?said={action}", headers=HEADERS)

    def _start_rollback(self, env: ops.Environment, revision: int, user: str) -> None:
        """The CLI's rollback, under the environment's lock, in the server (it outlives the request)."""
        feed = self.server.feeds(env.app, env.environment)
        feed.restart()

        def sink(event: Event) -> None:
            feed.publish(event)
            log.info("%s/%s [%s] %s", env.app, env.environment, event.step, event.message)

        async def run() -> None:
            sink(Event("rollback", f"{user} asked for revision {revision} again"))
            try:
                ports = await ops.ports_of(self.server.api(env.app, env.environment), env, sink=sink)
                record = await ops.rollback(ports, env=env, to=revision, sink=sink)
                sink(Event("rollback", f"rolled back: revision {record.revision} runs {record.image}"))
                if branch := await self.server.branch_follows(env.app, record):
                    sink(Event("rollback", f"branch {branch} moved to {record.commit[:12]}: git says what is live"))
            except (DeployError, TransientError) as exc:
                sink(Event("rollback", f"rollback failed: {exc}", kind="warning"))

        task = asyncio.create_task(run())
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)


def _unreadable(exc: Exception) -> str:
    return f"records not readable: {' '.join(str(exc).split())[:160]}"


def _local(target: str) -> str:
    """Only a path of this view: a sign-in never sends anyone elsewhere."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/") or "\\" in target:
        return "/ui/"
    return target


def _sse(kind: str, data: str) -> bytes:
    return f"event: {kind}\ndata: {data}\n\n".encode()
