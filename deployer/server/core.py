"""The server's heart, shared by both git transports: the app repositories, the pre-receive hook socket, and the
push → release run whose events become `remote:` lines.

A transport (SSH or HTTP) authenticates the pusher, then asks `git_environment` for the environment of its
git-receive-pack: a one-time push token ties the hook's connection back to that user and app, so a hook cannot
claim to be anyone else. Releases run in this process, not in the hook, and are never cancelled by a pusher
going away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.build.source import ZERO, git, ref_value
from deployer.config.model import DNS1123_LABEL
from deployer.config.server import ServerConfig, check_app, may_act
from deployer.errors import DeployError, RolledBack, TransientError
from deployer.events import Event, Record, line, live_release
from deployer.kube.client import ApiError, KubeClient
from deployer.kube.records import Records, pending_environments
from deployer.pipeline import operations
from deployer.pipeline.push import Deploy, Outcome, Push, RefUpdate, Services, deploy, plan, scan
from deployer.server.metrics import Metrics
from deployer.server.notify import Notifier
from deployer.server.notify import targets as notify_targets
from deployer.server.web import Feeds

log = logging.getLogger("deployer.server")
SERVICES = ("git-receive-pack", "git-upload-pack")
# The hook runs hook.py as a script, isolated (-I: no PYTHON* variables, no user site) and without site (-S): it
# needs the standard library only, and each push starts one (a third less start-up than `-m` through site-packages)
_HOOK = """#!/bin/sh
# Installed by the deployer (rewritten at each start): hands the push to the server's pipeline, streams its progress.
exec {python} -I -S {script}
"""


@dataclass(frozen=True)
class Pusher:
    user: str
    app: str


def _reap_hook_dirs() -> None:
    """Socket directories of servers that died without cleaning up (SIGKILL, OOM): their pid is gone."""
    for stale in Path(tempfile.gettempdir()).glob("deployer-hook-*-*"):
        pid = stale.name.split("-")[2]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(stale, ignore_errors=True)


def app_from_path(path: str) -> str:
    """`/hello.git`, `hello.git` or `/hello` → `hello`; anything else is refused."""
    name = path.strip("/").removesuffix(".git")
    if not re.fullmatch(DNS1123_LABEL, name) or len(name) > 63:
        raise DeployError(f"{path!r} is not a repository path such as /APP.git", where="git remote")
    return name


class DeployServer:
    def __init__(self, config: ServerConfig, *, services: Services) -> None:
        self.config = config
        self.services = services
        self.data = Path(config.data_dir).resolve()
        self.repos = self.data / "repos"
        # per process, outside dataDir: replicas may share dataDir (one volume), each hook talks to its own server
        _reap_hook_dirs()
        self.socket = Path(tempfile.mkdtemp(prefix=f"deployer-hook-{os.getpid()}-")) / "hook.sock"
        self.metrics = Metrics()
        self.notifier = Notifier(notify_targets(config), self.metrics)  # secrets read now: a missing one stops start
        self._pushers: dict[str, Pusher] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._hooks: asyncio.Server | None = None
        self._resync: asyncio.Task[None] | None = None
        self._mirrored: dict[tuple[str, str], Records] = {}
        self._unrecovered: set[tuple[str, str]] = set()  # environments whose cluster did not answer recovery
        self._recovering: dict[tuple[str, str], asyncio.Task[list[str]]] = {}
        self._unanswered: set[tuple[str, str]] = set()  # environments whose Release objects could not be synced
        self.feeds = Feeds()  # each environment's release log, for the web view

    async def start(self) -> None:
        """Listen for hooks, then bring releases left mid-flight by an earlier server to a consistent end."""
        try:
            self.repos.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = self.repos / ".writable"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise DeployError(f"cannot use {self.data}: {exc.strerror}", where="server.yaml: dataDir") from None
        for repo in sorted(self.repos.glob("*.git")):
            if (repo / "hooks").is_dir():
                await self._configure(repo)
        self._hooks = await asyncio.start_unix_server(self._hook, path=str(self.socket))
        self.socket.chmod(0o600)
        await self.recover()
        self._resync = asyncio.create_task(self._resync_loop())

    @property
    def in_flight(self) -> int:
        """Releases running now (async pushes included)."""
        return sum(1 for task in self._background if not task.done())

    async def stop(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
        for recovering in self._recovering.values():
            recovering.cancel()
        if self._hooks is not None:
            self._hooks.close()
            await self._hooks.wait_closed()
        for task in list(self._background):  # async releases: let them reach their end, for a while
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=30)
        await self.notifier.close()
        self.socket.unlink(missing_ok=True)
        self.socket.parent.rmdir()

    def api(self, app: str, environment: str) -> KubeClient:
        """The API of the cluster `app`'s `environment` lives on."""
        return self.services.on(app, environment).api

    async def recover(self, only: set[tuple[str, str]] | None = None) -> list[str]:
        """Releases a dead server left pending, in every environment the config binds (or `only` these),
        rolled back. An environment whose cluster does not answer is tried again later (`_unrecovered`)."""
        done = []
        for app, policy in self.config.apps.items():
            for environment, namespace in policy.environments.items():
                if only is not None and (app, environment) not in only:
                    continue
                api = self.api(app, environment)
                try:
                    for pending in await pending_environments(api, namespace=namespace, app=app):
                        env = operations.Environment(app=app, environment=pending, namespace=namespace)
                        sink = self._log(app, pending)
                        ports = await operations.ports_of(api, env, sink=sink)
                        revisions = await operations.recover(ports, env=env, sink=sink)
                        done += [f"{app}/{pending} revision {r}" for r in revisions]
                        for revision in revisions:
                            self.notifier.notify(
                                "recovered",
                                app=app,
                                environment=pending,
                                namespace=namespace,
                                revision=revision,
                                message=f"revision {revision}, left mid-flight by a server that stopped, recovered",
                            )
                    self._unrecovered.discard((app, environment))
                except (DeployError, ApiError, TransientError, OSError) as exc:
                    self._unrecovered.add((app, environment))
                    log.warning("recover %s/%s in %s: %s (tried again later)", app, environment, namespace, exc)
        for item in done:
            log.info("recovered %s (rolled back)", item)
        return done

    async def resync(self) -> int:
        """Every environment's Release objects brought in step with its records; returns how many changed."""
        changed = 0
        for app, policy in self.config.apps.items():
            for environment, namespace in policy.environments.items():
                key = (app, environment)
                if key not in self._mirrored:  # kept: a cluster without the CRD is found out once
                    self._mirrored[key] = Records(
                        self.api(app, environment), namespace=namespace, app=app, environment=environment
                    )
                try:
                    changed += await self._mirrored[key].resync()
                except (DeployError, TransientError, OSError) as exc:
                    if key not in self._unanswered:  # once per outage, not at every pass
                        log.warning("Release objects of %s/%s: %s", app, environment, exc)
                    self._unanswered.add(key)
                    continue
                if key in self._unanswered:
                    self._unanswered.discard(key)
                    log.info("Release objects of %s/%s: the cluster answers again", app, environment)
        return changed

    async def _resync_loop(self) -> None:
        while True:
            if changed := await self.resync():
                log.info("Release objects: %d brought in step with the records", changed)
            await asyncio.sleep(self.config.limits.resync)
            for key in list(self._unrecovered):  # each in its own task: one may wait for its lock a while
                if key not in self._recovering or self._recovering[key].done():
                    self._recovering[key] = asyncio.create_task(self.recover(only={key}))

    def environment(self, app: str, environment: str) -> operations.Environment:
        """An environment server.yaml binds (the caller checked that it does)."""
        return operations.Environment(app, environment, self.config.apps[app].environments[environment])

    async def branch_follows(self, app: str, record: Record) -> str | None:
        """After a rollback the server ran: the branch the restored release came from points at its commit
        again, so that git says what is live (the next push of that branch releases as any push does). Returns
        the branch moved, or None where there is none to move (a release of the CLI's, a commit not here)."""
        repo = self.repos / f"{app}.git"
        if not record.branch or not record.commit or not repo.exists():
            return None
        ref = f"refs/heads/{record.branch}"
        now = await ref_value(repo, ref)
        if now == record.commit:
            return None
        try:
            await git(
                repo, "update-ref", "-m", f"deployer: rollback, revision {record.revision}", ref, record.commit, now
            )
        except DeployError as exc:
            log.warning("%s: %s not moved to %s: %s", app, ref, record.commit[:12], exc)
            return None
        log.info("%s: %s moved to %s (revision %d, a rollback)", app, ref, record.commit[:12], record.revision)
        return record.branch

    # --- what transports use ------------------------------------------------------------------------------

    async def git_environment(self, *, service: str, path: str, user: str) -> tuple[Path, dict[str, str]]:
        """Check a git request (service, repository, user) and return the repository and the environment for
        git-receive-pack/upload-pack. The repository is created on the first push."""
        if service not in SERVICES:
            raise DeployError(f"only git-receive-pack and git-upload-pack are allowed, not {service!r}", where="server")
        app = app_from_path(path)
        check_app(self.config, user=user, app=app)
        repo = self.repos / f"{app}.git"
        if not repo.exists():
            if service == "git-upload-pack":
                raise DeployError(f"no repository {app}.git yet: push to it first", where="server")
            await self._create(repo)
        token = secrets.token_urlsafe(24)
        self._pushers[token] = Pusher(user, app)
        return repo, {"DEPLOYER_PUSH_TOKEN": token, "DEPLOYER_HOOK_SOCKET": str(self.socket)}

    def forget(self, env: dict[str, str]) -> None:
        """A git process ended: its push token is void."""
        self._pushers.pop(env.get("DEPLOYER_PUSH_TOKEN", ""), None)

    async def _create(self, repo: Path) -> None:
        await git(self.repos, "init", "--quiet", "--bare", str(repo))
        await self._configure(repo)
        log.info("created repository %s", repo.name)

    async def _configure(self, repo: Path) -> None:
        """The repository's git settings and hook as this server's config and install have them: at creation and
        at every start (a changed limits.maxPushMb, or a deployer installed elsewhere, reaches existing apps).
        What is already so is left alone: a start costs one `git config --list` per repository."""
        wanted = {
            "receive.advertisePushOptions": "true",
            "receive.maxInputSize": str(self.config.limits.max_push_mb * 2**20),
            "receive.denyNonFastForwards": "false",  # the pipeline's own rule (pipeline/push.py)
            "receive.denyDeletes": "false",
            "receive.denyDeleteCurrent": "false",  # deleting HEAD's branch: the pipeline's rule, then HEAD moves
            "core.logAllRefUpdates": "true",
        }
        listed = (await git(repo, "config", "--local", "--list", "-z")).decode(errors="replace")
        have = dict(entry.partition("\n")[::2] for entry in listed.split("\0") if entry)  # keys come lowercased
        for key, value in wanted.items():
            if have.get(key.lower()) != value:
                await git(repo, "config", key, value)
        hook = repo / "hooks" / "pre-receive"
        script = Path(__file__).with_name("hook.py")
        text = _HOOK.format(python=shlex.quote(sys.executable), script=shlex.quote(str(script)))
        if not hook.is_file() or hook.read_text(errors="replace") != text:
            hook.write_text(text)
        hook.chmod(0o755)

    # --- the hook ----------------------------------------------------------------------------------------

    async def _hook(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(text: str) -> None:
            if not writer.is_closing():
                writer.write(json.dumps({"line": text}).encode() + b"\n")

        try:
            request = json.loads(await reader.readline())
            pusher = self._pushers.get(str(request.get("token")))
            if pusher is None:
                say("error: this push did not come through the deployer's git remote")
                code = 1
            else:
                push = Push(
                    repo=Path(request["repo"]),
                    app=pusher.app,
                    user=pusher.user,
                    updates=tuple(RefUpdate(*u) for u in request["updates"]),
                    options=tuple(request.get("options") or ()),
                    git_env={k: str(v) for k, v in (request.get("git_env") or {}).items()},
                )
                code = await self.handle(push, say)
            writer.write(json.dumps({"exit": code}).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the hook is gone (its git process was killed); the release itself has ended consistently
        finally:
            writer.close()

    def _log(self, app: str, environment: str) -> Callable[[Event], None]:
        def write(event: Event) -> None:
            log.info("%s/%s [%s] %s", app, environment, event.step, event.message)

        return write

    async def handle(self, push: Push, say: Callable[[str], None]) -> int:
        """Run one push; `say` gets each line for the pusher. Returns the hook's exit status (0 accepts)."""
        status = await self._handle(push, say)
        if status == 0:
            await self._name_head(push)
        return status

    @staticmethod
    async def _name_head(push: Push) -> None:
        """HEAD names a branch that exists, so a clone checks one out: git's default names one that may never
        exist, and an accepted push may delete HEAD's own. main (or master) is preferred, then what was pushed."""
        head = (await git(push.repo, "symbolic-ref", "HEAD")).decode().strip()
        deleted = {u.ref for u in push.updates if u.new == ZERO}
        if head not in deleted and await ref_value(push.repo, head) != ZERO:
            return
        pushed = [u.ref for u in push.updates if u.branch is not None and u.new != ZERO]
        listed = (await git(push.repo, "for-each-ref", "--format=%(refname)", "refs/heads")).decode().split()
        candidates = [b for b in [*pushed, *listed] if b not in deleted]
        preferred = [b for b in ("refs/heads/main", "refs/heads/master") if b in candidates]
        if preferred or candidates:
            await git(push.repo, "symbolic-ref", "HEAD", (preferred or candidates)[0])

    async def _live_branches(self, app: str, branch: str, *, user: str, deleting: bool) -> list[str]:
        """The environments of `app` whose live release was pushed from `branch` (their records say so), of
        those where it matters: where `user` may not deploy (a rights check), and all when the branch is being
        deleted. A record that cannot be read refuses the push: what is not seen cannot be checked. (So a
        cluster that does not answer holds back only the pushes it could matter to.)"""
        found = []
        for environment, namespace in self.config.apps[app].environments.items():
            if not deleting and may_act(self.config, user=user, app=app, environment=environment):
                continue  # a user who may deploy there may change the branch it runs from
            records = Records(self.api(app, environment), namespace=namespace, app=app, environment=environment)
            try:
                history = await records.history()
            except (ApiError, TransientError, OSError) as exc:
                raise DeployError(
                    f"cannot read {environment}'s live release to check who may change branch {branch!r} "
                    f"({' '.join(str(exc).split())[:120]}); push again once the cluster answers",
                    where="server",
                ) from None
            live = live_release(history)
            if live is not None and live.branch == branch:
                found.append(environment)
        return found

    async def _handle(self, push: Push, say: Callable[[str], None]) -> int:
        started = time.monotonic()
        target: Deploy | None = None
        outcomes: list[Outcome] = []

        def emit(event: Event) -> None:
            say(line(event))
            log.info("%s %s [%s] %s", push.app, push.user, event.step, event.message)

        try:
            target, outcomes = await plan(
                push,
                self.config,
                emit,
                live=lambda branch, deleting: self._live_branches(push.app, branch, user=push.user, deleting=deleting),
            )
            await scan(push, emit)
            if target is None:
                _table(say, outcomes)
                say("accepted: nothing to deploy")
                self.metrics.pushes.labels(push.app, "accepted").inc()
                return 0
            return await self._release(push, target, outcomes=outcomes, emit=emit, say=say, started=started)
        except DeployError as exc:
            if target is not None:
                outcomes.append(Outcome(target.update.ref, target.environment, target.update.new[:12], "refused"))
            _error(say, exc)
            say("push rejected: nothing was deployed and no branch moved")
            self.metrics.pushes.labels(push.app, "rejected").inc()
            return 1

    async def _release(
        self,
        push: Push,
        target: Deploy,
        *,
        outcomes: list[Outcome],
        emit: Callable[[Event], None],
        say: Callable[[str], None],
        started: float,
    ) -> int:
        """Steps 3 to 10 in a task no disconnect cancels; with `-o async`, answer once the canary has traffic."""
        follow = push.parsed.follow
        traffic = asyncio.Event()
        listening = [True]

        about = {
            "app": push.app,
            "environment": target.environment,
            "namespace": target.namespace,
            "commit": target.update.new,
            "pusher": push.user,
        }

        feed = self.feeds(push.app, target.environment)
        feed.restart()

        def sink(event: Event) -> None:
            feed.publish(event)
            weight = int(event.data.get("canary_weight") or 0)
            if weight > 0:
                traffic.set()
                self.notifier.notify("step", weight=weight, message=event.message, **about)
            if event.data.get("promoting"):
                self.notifier.notify("promoted", message=event.message, **about)
            if listening[0]:
                emit(event)
            else:
                log.info("%s/%s [%s] %s", push.app, target.environment, event.step, event.message)

        gauge = self.metrics.in_flight.labels(push.app, target.environment)
        gauge.inc()
        self.notifier.notify("started", message=f"release of {target.update.new[:12]} started", **about)
        task = asyncio.create_task(self._run(push, target, sink, started, gauge, about))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        if not follow:
            waiter = asyncio.create_task(traffic.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not task.done():
                listening[0] = False
                outcomes.append(Outcome(target.update.ref, target.environment, target.update.new[:12], "accepted"))
                _table(say, outcomes)
                say(
                    "accepted (-o async): the canary goes on in the server; if it is rolled back, "
                    f"{target.update.short} moves back to {target.update.old[:12]}. Follow it: deployer status "
                    f"--env {target.environment} --app {push.app} --namespace {target.namespace}"
                )
                self.metrics.pushes.labels(push.app, "accepted").inc()
                return 0
        result, record, error = await asyncio.shield(task)
        outcomes.append(_outcome(target, result, record, error))
        _table(say, outcomes)
        if error is not None or record is None:
            _error(say, error or DeployError("the release ended without a record", where="server"))
            say(f"push rejected: {target.environment} still runs what it ran; {target.update.short} did not move")
            self.metrics.pushes.labels(push.app, "rejected").inc()
            return 1
        say(
            f"{target.environment} is live at {target.update.new[:12]} (revision {record.revision}); "
            f"{target.update.short} moves"
        )
        self.metrics.pushes.labels(push.app, "accepted").inc()
        return 0

    async def _run(  # noqa: PLR0917 - the release's context, as _release holds it
        self,
        push: Push,
        target: Deploy,
        sink: Callable[[Event], None],
        started: float,
        gauge: Any,
        about: dict[str, Any],
    ) -> tuple[str, Record | None, DeployError | None]:
        """The release, to its end; then metrics, and for an async push that failed, the branch put back."""
        record: Record | None = None
        error: DeployError | None = None
        try:
            record = await deploy(push, target, self.services.on(push.app, target.environment), sink)
            result = "released"
        except DeployError as exc:
            error = exc
            result = "dry-run" if exc.where == "dry-run" else "rolled-back" if isinstance(exc, RolledBack) else "failed"
        except TransientError as exc:  # still failing after its retries; an interrupted release is recovered
            error = DeployError(f"no answer after retries: {exc}; push again once it answers", where="server")
            result = "failed"
        except Exception as exc:
            log.exception("release of %s to %s", push.app, target.environment)
            error = DeployError(f"internal error: {type(exc).__name__}: {exc}", where="server")
            result = "failed"
        finally:
            gauge.dec()
        self.metrics.ended(
            app=push.app, environment=target.environment, result=result, seconds=time.monotonic() - started
        )
        if result != "dry-run":
            revision = record.revision if record is not None else None
            said = f"revision {revision} is live" if record is not None else (error.message if error else result)
            reason = error.message if error is not None else None
            self.notifier.notify(result, revision=revision, reason=reason, message=said, **about)
            if error is not None:
                # a release that could not end (its cluster stopped answering) may be left pending: the next
                # pass of the resync loop recovers it; one that ended leaves nothing pending, and costs one list
                self._unrecovered.add((push.app, target.environment))
        if error is not None and not push.parsed.follow:
            await self._put_back(push, target.update)
        return result, record, error

    async def _put_back(self, push: Push, update: RefUpdate) -> None:
        """An async push that failed after git accepted it: the branch goes back to what is live."""
        with contextlib.suppress(DeployError):
            if update.old == ZERO:
                await git(push.repo, "update-ref", "-d", update.ref, update.new)
            else:
                await git(
                    push.repo, "update-ref", "-m", "deployer: release rolled back", update.ref, update.old, update.new
                )
            log.info("%s: %s put back to %s (release failed)", push.app, update.ref, update.old[:12])


def _outcome(target: Deploy, result: str, record: Record | None, error: DeployError | None) -> Outcome:
    commit = target.update.new[:12]
    if error is not None or record is None:
        return Outcome(target.update.ref, target.environment, commit, result, error.message if error else "")
    weights = [f"{r.weight}%" for r in record.rounds]
    checks = sorted({c.name for r in record.rounds for c in r.checks})
    path = " → ".join([*weights, "100%"]) if weights else "no canary"
    detail = f"revision {record.revision}: {path}" + (f"; checks: {', '.join(checks)}" if checks else "")
    return Outcome(target.update.ref, target.environment, commit, result, detail)


def _table(say: Callable[[str], None], outcomes: list[Outcome]) -> None:
    rows = [("ref", "environment", "commit", "result", "detail")] + [
        (o.ref, o.environment, o.commit, o.result, o.detail) for o in outcomes
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    say("")
    for row in rows:
        say("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])


def _error(say: Callable[[str], None], exc: DeployError) -> None:
    say(f"error: {exc}")
    for detail in exc.details:
        say(f"  | {detail}")
