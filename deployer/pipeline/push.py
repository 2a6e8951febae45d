"""One push → at most one release (docs/architecture.md §1, steps 1 to 10), as the server runs it for pre-receive.

Plan first, before anything runs: each ref update is mapped to an environment by the deploy.yaml at the NEW
commit, and the server config decides whether this user may do it, with these push options. Then the secret
scan, then build, render, validate and the release. Any DeployError rejects the whole push: git leaves every
ref where it was.

The rules for refs, decided here and documented in docs/server.md:
- a branch no environment claims is accepted without a deploy; tags deploy nothing;
- deleting an environment's branch is refused (the branch records what is live);
- a push deploys one environment: two ref updates that would deploy two are refused (push them one by one);
- a non-fast-forward push to an environment's branch is accepted only when the new commit is an older commit of
  that branch (a rollback through the full pipeline, canary included); rewriting it with other history is refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import functools
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from deployer.build.kaniko import BuildContexts
from deployer.build.scan import scan_push
from deployer.build.source import ZERO, export_commit, is_ancestor, read_at, ref_value
from deployer.canary.istio import Reach
from deployer.canary.objects import canary_targets, owned_by_release, stable_set
from deployer.config import DEPLOY_FILE, RepoFiles, environments_for_branch, load_deploy_config, parse_deploy_config
from deployer.config.model import CanaryPolicy, DeployConfig
from deployer.config.server import ServerConfig, check_app, check_claims, check_environment
from deployer.errors import DeployError
from deployer.events import Event, EventSink, Record
from deployer.helm import Helm
from deployer.kube.client import KubeClient
from deployer.kube.cluster import Kube
from deployer.pipeline.charts import ChartRegistries
from deployer.pipeline.ports import cluster_ports
from deployer.pipeline.release import ReleaseOptions, allowed_cluster_kinds, release
from deployer.pipeline.steps import BuildSettings, Rendered, build_exported, render_environment
from deployer.pipeline.worker import RenderPool

OPTION_HELP = "known: dry-run, skip-canary, async, set.KEY=VALUE"


@dataclass(frozen=True)
class RefUpdate:
    old: str
    new: str
    ref: str

    @property
    def branch(self) -> str | None:
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None

    @property
    def short(self) -> str:
        return self.branch or self.ref


@dataclass(frozen=True)
class PushOptions:
    dry_run: bool = False
    skip_canary: bool = False
    follow: bool = True  # False with `-o async`
    sets: tuple[str, ...] = ()

    @classmethod
    def parse(cls, options: list[str]) -> PushOptions:
        """git push -o values → options; an unknown one is refused by name."""
        dry_run = skip = is_async = False
        sets: list[str] = []
        for option in options:
            if option == "dry-run":
                dry_run = True
            elif option == "skip-canary":
                skip = True
            elif option == "async":
                is_async = True
            elif option.startswith("set.") and "=" in option:
                sets.append(option.removeprefix("set."))
            else:
                raise DeployError(f"unknown push option {option!r} ({OPTION_HELP})", where="git push -o")
        return cls(dry_run=dry_run, skip_canary=skip, follow=not is_async, sets=tuple(sets))

    @property
    def names(self) -> set[str]:
        """The option names the server's per-environment policy allows or forbids."""
        chosen = {("dry-run", self.dry_run), ("skip-canary", self.skip_canary), ("async", not self.follow)}
        return {name for name, on in chosen if on} | ({"set"} if self.sets else set())


@dataclass(frozen=True)
class Push:
    """What git-receive-pack handed to pre-receive, and who pushed."""

    repo: Path
    app: str
    user: str
    updates: tuple[RefUpdate, ...]
    options: tuple[str, ...] = ()
    git_env: dict[str, str] = field(default_factory=dict)  # the quarantine: objects not yet in the repo

    @functools.cached_property
    def parsed(self) -> PushOptions:
        """The push options, parsed once (an unknown one raises DeployError at the first use: the plan)."""
        return PushOptions.parse(list(self.options))


@dataclass(frozen=True)
class Deploy:
    """The one release a push asks for."""

    update: RefUpdate
    environment: str
    namespace: str
    policy: CanaryPolicy


@dataclass
class Outcome:
    """One line of the verdict table."""

    ref: str
    environment: str
    commit: str
    result: str
    detail: str = ""


@dataclass(frozen=True)
class Services:
    """What the server lends a push: the cluster, the builder and registry, helm."""

    server: ServerConfig
    api: KubeClient  # the default cluster's (server.yaml cluster); `on` gives an environment's own
    build: BuildSettings
    helm: Helm | None = None
    renders: RenderPool | None = None  # Jinja renders off the event loop, with limits
    charts: ChartRegistries | None = None  # where oci:// charts may come from (server.yaml charts)
    # (repository, ref) -> the commit a release just made live there, until git has moved the ref to it
    settling: dict[tuple[str, str], str] = field(default_factory=dict)
    clusters: dict[str, KubeClient] = field(default_factory=dict)  # server.yaml clusters, by name
    contexts: BuildContexts | None = None  # kaniko builds' one-time contexts, served on the HTTP listener

    def on(self, app: str, environment: str) -> Services:
        """These services with the API of the cluster `app`'s `environment` lives on."""
        name = self.server.cluster_of(app, environment)
        return self if name is None else replace(self, api=self.clusters[name])


LiveBranches = Callable[[str, bool], Awaitable[list[str]]]  # (branch, deleting) -> environments live from it
SETTLE_WAIT = 10.0  # seconds git may take to move a ref after its pre-receive hook answered


async def plan(
    push: Push, server: ServerConfig, sink: EventSink, *, live: LiveBranches | None = None
) -> tuple[Deploy | None, list[Outcome]]:
    """Steps 1: ref updates → at most one deploy, or a DeployError refusing the push before anything runs.
    `live` names the environments whose live release a branch pushed (the records): a second source, beside
    deploy.yaml at the branch's tip, of which environments a change to that branch touches."""
    check_app(server, user=push.user, app=push.app)
    options = push.parsed
    deploys: list[Deploy] = []
    outcomes: list[Outcome] = []
    for update in push.updates:
        found = await _plan_update(push, update, server, options, live)
        if isinstance(found, Outcome):
            outcomes.append(found)
            sink(Event("plan", f"{update.short}: {found.detail}"))
        else:
            deploys.extend(found)
    if len(deploys) > 1:
        names = ", ".join(f"{d.update.short} → {d.environment}" for d in deploys)
        raise DeployError(f"this push would deploy {len(deploys)} environments ({names}); push them one at a time")
    for deploy in deploys:
        sink(
            Event(
                "plan",
                f"{deploy.update.short} → {deploy.environment} (namespace {deploy.namespace}), "
                f"commit {deploy.update.new[:12]} by {push.user}",
            )
        )
    return (deploys[0] if deploys else None), outcomes


async def _plan_update(
    push: Push, update: RefUpdate, server: ServerConfig, options: PushOptions, live: LiveBranches | None
) -> Outcome | list[Deploy]:
    if update.branch is None:
        return Outcome(update.ref, "-", update.new[:12], "accepted", "not a branch; nothing to deploy")
    current = await _deploy_config(push, update.old, required=False) if update.old != ZERO else None
    claimed = environments_for_branch(current, update.branch) if current else []
    check_claims(server, claimed, user=push.user, branch=update.branch, commit=update.old)
    if live is not None and update.old != ZERO:
        released = [e for e in await live(update.branch, update.new == ZERO) if e not in claimed]
        check_claims(server, released, user=push.user, branch=update.branch, commit=update.old, source="live")
        claimed = [*claimed, *released]
    if update.new == ZERO:
        if claimed:
            raise DeployError(
                f"deleting branch {update.branch!r} is refused: it records what is live in {', '.join(claimed)}",
                where=update.ref,
            )
        return Outcome(update.ref, "-", "-", "accepted", "branch deleted; nothing to deploy")
    config = await _deploy_config(push, update.new, required=True)
    assert config is not None
    environments = environments_for_branch(config, update.branch)
    if not environments:
        return Outcome(
            update.ref,
            "-",
            update.new[:12],
            "accepted",
            f"no environment claims branch {update.branch!r}; not deployed",
        )
    deploys = []
    for name in environments:
        policy = check_environment(
            server, config, user=push.user, app=push.app, environment=name, options=options.names
        )
        deploys.append(Deploy(update, name, config.environments[name].namespace, policy))
    fast_forward = update.old == ZERO or await is_ancestor(push.repo, update.old, update.new, env=push.git_env)
    if not fast_forward and not await is_ancestor(push.repo, update.new, update.old, env=push.git_env):
        raise DeployError(
            f"non-fast-forward push to {update.branch!r} ({environments[0]}): {update.new[:12]} is not in the "
            "branch's history. Merge instead; to roll back, push an older commit of the branch with --force",
            where=update.ref,
        )
    return deploys


async def _deploy_config(push: Push, commit: str, *, required: bool) -> DeployConfig | None:
    text = await read_at(push.repo, commit, DEPLOY_FILE, env=push.git_env)
    if text is None:
        if not required:
            return None
        raise DeployError(
            f"not found at commit {commit[:12]}; every app repo needs one at its top (see `deployer init`)",
            where=DEPLOY_FILE,
        )
    return parse_deploy_config(text, source=DEPLOY_FILE)


async def scan(push: Push, sink: EventSink) -> None:
    """Refuse likely secrets added to values and config files by the pushed commits, naming file and line."""
    found = []
    for update in push.updates:
        config = None if update.new == ZERO else await _deploy_config(push, update.new, required=False)
        found += await scan_push(
            push.repo,
            new=update.new,
            exclude=("--all",),
            env=push.git_env,
            paths=(config.render.directory,) if config else (),
        )
    if found:
        raise DeployError(
            f"{found[0]}: looks like a secret; keep secrets out of git (deployer secret set), or mark a false "
            "positive with '# pragma: allowlist secret'" + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""),
            where="secret scan",
            details=tuple(str(f) for f in found[1:10]),
        )
    sink(Event("scan", "no secrets found in values or config files"))


async def deploy(push: Push, target: Deploy, services: Services, sink: EventSink) -> Record:
    """Steps 3 to 10 for the planned deploy; returns the release record. A dry run ends in a DeployError."""
    options = push.parsed
    commit = target.update.new
    with tempfile.TemporaryDirectory(prefix="deployer-push-") as tmp:
        files = RepoFiles(await export_commit(push.repo, commit, Path(tmp) / "tree", env=push.git_env))
        config = load_deploy_config(files)
        granted = dataclasses.replace(services.build, network_allowed=services.server.apps[push.app].build_network)
        # `build: false`: -o set.image.tag=TAG (allowed where the server allows `set`) chooses the image's tag
        chosen = next((e.split("=", 1)[1] for e in options.sets if e.split("=", 1)[0] == "image.tag"), None)
        image = await build_exported(
            files=files,
            config=config,
            commit=commit,
            settings=granted,
            sink=sink,
            tag=None if config.builds else chosen,
        )
        rendered = await render_environment(
            repo=files,
            config=config,
            environment=target.environment,
            commit=commit,
            digest=image.digest,
            tag=image.tag,
            sets=options.sets,
            helm=services.helm,
            cluster_scoped=frozenset(services.server.apps[push.app].cluster_scoped),
            reach=_reach(services.server, push.app),
            worker=services.renders,
            charts=services.charts,
            sink=sink,
        )
    _render_summary(rendered, config, target, options, sink)
    if options.dry_run:
        await dry_run(services.api, rendered, target.policy, sink)
        raise DeployError(
            "dry run: built, rendered and compared with the cluster; nothing was changed and the push is rejected "
            "so that the branch stays where it was",
            where="dry-run",
        )
    ports = await cluster_ports(
        services.api,
        namespace=rendered.namespace,
        app=rendered.app,
        environment=rendered.environment,
        timeout=services.server.policy(target.environment).lock_wait,
        sink=sink,
    )
    return await release(
        ports,
        rendered=rendered,
        policy=target.policy,
        image=image,
        options=ReleaseOptions(
            skip_canary=options.skip_canary,
            rollout_timeout=services.server.limits.rollout_timeout,
            pusher=push.user,
            branch=target.update.branch or "",
            prometheus_url=services.server.prometheus,
            scrape_interval=services.server.prometheus_scrape_interval,
            mesh_gateway=services.server.mesh_gateway,
            mesh_client=services.server.mesh_client,
            precondition=lambda: _unmoved(push, target.update, services.settling),
            on_live=lambda: services.settling.__setitem__((str(push.repo), target.update.ref), target.update.new),
        ),
        sink=sink,
        jobs=tuple(config.environments[target.environment].jobs),
    )


def _reach(server: ServerConfig, app: str) -> Reach:
    granted = server.apps[app].routes
    return Reach(gateways=tuple(granted.gateways), hosts=tuple(granted.hosts))


async def _unmoved(push: Push, update: RefUpdate, settling: dict[tuple[str, str], str]) -> None:
    """A push that waited for the lock: the branch must still be where git will move it from. The release before
    it frees the lock a moment before its git moves the branch (receive-pack updates refs after pre-receive
    answers): a branch whose release just went live counts as moved there, for as long as git takes to move it."""
    key = (str(push.repo), update.ref)
    now = await ref_value(push.repo, update.ref)
    expected = settling.get(key)
    deadline = time.monotonic() + SETTLE_WAIT
    while expected is not None and now != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = await ref_value(push.repo, update.ref)
    if expected is not None and settling.get(key) == expected:
        del settling[key]  # moved, or git did not move it within SETTLE_WAIT: from now on the ref says
    if now != update.old:
        raise DeployError(
            f"{update.short} moved to {now[:12]} while this push waited for the release before it; "
            "fetch, merge and push again",
            where=update.ref,
        )


def _render_summary(
    rendered: Rendered, config: DeployConfig, target: Deploy, options: PushOptions, sink: EventSink
) -> None:
    kinds: dict[str, int] = {}
    for obj in rendered.manifests:
        kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
    files = config.environments[target.environment].values
    sources = ", ".join(files) if files else "no values files"
    if options.sets:
        sources += (
            f", -o set: {', '.join(expr.split('=', 1)[0] for expr in options.sets)}"  # keys: values may be private
        )
    counted = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    sink(Event("render", f"{len(rendered.manifests)} objects ({counted}) from {sources}; all valid"))


async def dry_run(api: KubeClient, rendered: Rendered, policy: CanaryPolicy, sink: EventSink) -> None:
    """What promotion would change, object by object, from a server-side dry-run apply (as `kubectl diff`)."""
    kube = Kube(api)
    objects = owned_by_release(rendered.manifests, app=rendered.app, environment=rendered.environment)
    kube.cluster_scoped = allowed_cluster_kinds(objects)
    targets = canary_targets(objects) if policy.enabled else []
    for obj in stable_set(objects, targets):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        live = await kube.get(
            obj["apiVersion"], obj["kind"], namespace=rendered.namespace, name=obj["metadata"]["name"]
        )
        if live is None:
            sink(Event("dry-run", f"{name}: would be created"))
            continue
        [after] = await kube.apply([obj], namespace=rendered.namespace, dry_run=True)
        lines = list(
            difflib.unified_diff(_comparable(live), _comparable(after), "live", "after this push", lineterm="", n=1)
        )
        if not lines:
            sink(Event("dry-run", f"{name}: unchanged"))
            continue
        sink(Event("dry-run", f"{name}: would change"))
        for line in lines[2:42]:
            sink(Event("dry-run", line, kind="output"))


def _comparable(obj: dict[str, Any]) -> list[str]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k in ("labels", "annotations") and v}
    body = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    return yaml.safe_dump({"metadata": meta, **body}, sort_keys=True).splitlines()
