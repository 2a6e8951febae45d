"""One push → one release, as a sequence of steps (docs/architecture.md §1).

So far: the build step (3), which turns one commit into an image in the registry pinned by digest, and the
render and validate steps (4 and 5), which turn one commit and one environment into the exact,
schema-checked manifests that environment should get.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from deployer.build import (
    Builder,
    BuildLimits,
    BuildRequest,
    RegistryClient,
    Repository,
    export_commit,
    resolve_commit,
    tree_size,
)
from deployer.build.registry import check_tag
from deployer.canary.gateway import GatewayRouter, refuse_foreign_routes
from deployer.canary.istio import IstioRouter, Reach, refuse_foreign
from deployer.canary.objects import require_targets
from deployer.canary.router import Routing
from deployer.config import DeployConfig, RepoFiles, load_deploy_config, load_values_file
from deployer.config.load import DEPLOY_FILE
from deployer.config.model import BuildConfig, CanaryPolicy
from deployer.errors import DeployError
from deployer.events import Event, EventSink, discard
from deployer.pipeline.worker import RenderPool, render_templates
from deployer.render.manifests import (
    RenderedObject,
    parse_objects,
    place_in_namespace,
    sort_for_apply,
    split_helm_output,
)
from deployer.render.validate import validate_objects
from deployer.render.values import layer_values

if TYPE_CHECKING:
    from deployer.helm import Helm
    from deployer.pipeline.charts import ChartRegistries


@dataclass(frozen=True)
class ImageRef:
    """The image a release runs: pinned by digest once built, by the commit tag before."""

    repository: str
    tag: str
    digest: str = ""
    commit: str = ""  # the commit it is released from, where the tag is not it (an image built elsewhere)

    @property
    def ref(self) -> str:
        return f"{self.repository}@{self.digest}" if self.digest else f"{self.repository}:{self.tag}"


@dataclass(frozen=True)
class Rendered:
    """What one commit renders for one environment, in apply order, validated."""

    app: str
    environment: str
    namespace: str
    release: str
    objects: tuple[RenderedObject, ...]
    values: dict[str, Any] = field(repr=False)
    unvalidated: tuple[str, ...] = ()

    @property
    def manifests(self) -> list[dict[str, Any]]:
        return [item.obj for item in self.objects]

    @property
    def values_digest(self) -> str:
        """sha256 of the values the templates saw, for the release record."""
        return "sha256:" + hashlib.sha256(json.dumps(self.values, sort_keys=True, default=str).encode()).hexdigest()


def injected_values(*, config: DeployConfig, environment: str, image: ImageRef, commit: str) -> dict[str, Any]:
    """The `deployer` key every chart and template sees."""
    return {
        "app": config.app,
        "environment": environment,
        "namespace": config.environments[environment].namespace,
        "commit": commit,
        "image": {"repository": image.repository, "tag": image.tag, "digest": image.digest, "ref": image.ref},
    }


async def render_environment(
    *,
    repo: RepoFiles,
    config: DeployConfig,
    environment: str,
    commit: str,
    digest: str = "",
    tag: str | None = None,
    sets: tuple[str, ...] = (),
    helm: Helm | None = None,
    cluster_scoped: frozenset[str] = frozenset(),
    reach: Reach | None = None,
    worker: RenderPool | None = None,
    charts: ChartRegistries | None = None,
    sink: EventSink = discard,
) -> Rendered:
    """Render and validate `environment` at `commit`; raise DeployError naming file and field on any fault.
    With `reach` (the server's grant), routing objects may claim only the hosts and gateways it grants; with
    `worker`, Jinja templates render in its worker processes, under its limits, off the event loop."""
    env = config.environment(environment)
    files = [
        (path, load_values_file(repo, path, where=f"{DEPLOY_FILE}: environments.{environment}.values[{i}]"))
        for i, path in enumerate(env.values)
    ]
    image = ImageRef(repository=config.image.repository, tag=tag or commit, digest=digest)
    injected = injected_values(config=config, environment=environment, image=image, commit=commit)
    if config.render.helm is not None:
        if helm is None:
            from deployer.helm import Helm  # noqa: PLC0415 - pyhelm3 loads only to render a chart

            helm = Helm()
        with tempfile.TemporaryDirectory(prefix="deployer-chart-") as scratch:
            chart, chart_dir, chart_files, values_path = await _chart(
                repo, config, helm=helm, charts=charts, scratch=Path(scratch), sink=sink
            )
            defaults = (
                load_values_file(chart_files, values_path, where=f"{chart}/values.yaml")
                if (chart_dir / "values.yaml").is_file()
                else {}
            )
            values = layer_values(defaults=defaults, files=files, sets=list(sets), injected=injected)
            text = await helm.template(
                chart_dir=chart_dir,
                chart_label=chart,
                release=config.release_name,
                namespace=env.namespace,
                values=values.user,
            )
        objects = [
            obj
            for source, doc in split_helm_output(text)
            for obj in parse_objects(doc, source=_chart_source(chart, source))
        ]
    else:
        assert config.render.templates is not None
        values = layer_values(defaults={}, files=files, sets=list(sets), injected=injected)
        objects = await _render_templates(
            repo,
            config.render.templates.dir,
            worker,
            {
                "values": values.final,
                "deployer": values.final["deployer"],
                "app": config.app,
                "environment": environment,
                "namespace": env.namespace,
                "release": {"name": config.release_name, "namespace": env.namespace},
            },
        )
    ordered = sort_for_apply(place_in_namespace(objects, env.namespace, cluster_scoped=cluster_scoped))
    unvalidated = validate_objects(ordered)
    if reach is not None:
        check_reach(ordered, env.canary, environment=environment, namespace=env.namespace, reach=reach)
    check_routing([o.obj for o in ordered], env.canary)
    return Rendered(
        app=config.app,
        environment=environment,
        namespace=env.namespace,
        release=config.release_name,
        objects=tuple(ordered),
        values=values.final,
        unvalidated=tuple(unvalidated),
    )


def check_reach(
    objects: list[RenderedObject], policy: CanaryPolicy, *, environment: str, namespace: str, reach: Reach
) -> None:
    """The environment's canary.gateways/hosts and every routing object claim only what the server grants."""
    routing = Routing(tuple(policy.gateways), tuple(policy.hosts))
    where = f"{DEPLOY_FILE}: environments.{environment}.canary"
    refuse_foreign([], routing, namespace=namespace, reach=reach, policy=where)
    for item in objects:
        try:
            refuse_foreign([item.obj], Routing(), namespace=namespace, reach=reach)
            refuse_foreign_routes([item.obj], namespace=namespace, reach=reach)
        except DeployError as exc:
            raise DeployError(exc.message, where=item.source) from None


def check_routing(objects: list[dict[str, Any]], policy: CanaryPolicy) -> None:
    """What a canary needs of the rendered objects, at render time: a Service for a Deployment, no object named
    as the canary's copies, and routing objects the router can adopt or leave alone."""
    if policy.enabled and any(o["kind"] == "Deployment" for o in objects):
        targets = require_targets(objects)
        routing = Routing(tuple(policy.gateways), tuple(policy.hosts), policy.provider)
        router = GatewayRouter(routing=routing) if policy.provider == "gateway-api" else IstioRouter(routing=routing)
        router.check(objects, targets)


async def _chart(
    repo: RepoFiles,
    config: DeployConfig,
    *,
    helm: Helm,
    charts: ChartRegistries | None,
    scratch: Path,
    sink: EventSink,
) -> tuple[str, Path, RepoFiles, str]:
    """(the chart as the user names it, its directory, the files its values.yaml is read from, that path)."""
    settings = config.render.helm
    assert settings is not None
    if not settings.oci:
        chart = settings.chart.rstrip("/")
        chart_dir = repo.directory(chart, where=f"{DEPLOY_FILE}: render.helm.chart", what="chart directory")
        if charts is not None:  # dependencies from allowed registries, into a copy of the chart
            built = await charts.dependencies(helm, chart_dir, chart_label=chart, scratch=scratch)
            if built != chart_dir:
                return chart, built, RepoFiles(built), "values.yaml"
        return chart, chart_dir, repo, f"{chart}/values.yaml"
    if charts is None:
        raise DeployError("oci:// charts are not pulled here", where=f"{DEPLOY_FILE}: render.helm.chart")
    assert settings.version is not None
    chart_dir = await charts.fetch(helm, settings.chart, settings.version, scratch=scratch, sink=sink)
    return settings.chart, chart_dir, RepoFiles(chart_dir), "values.yaml"


def _chart_source(chart: str, helm_source: str) -> str:
    # helm names files "<chart name>/templates/x.yaml"; the user knows them as "<chart dir>/templates/x.yaml".
    parts = PurePosixPath(helm_source).parts
    return str(PurePosixPath(chart, *parts[1:])) if len(parts) > 1 else helm_source


async def _render_templates(
    repo: RepoFiles, templates_dir: str, worker: RenderPool | None, context: dict[str, Any]
) -> list[RenderedObject]:
    if worker is not None:
        texts = await worker.render(repo, templates_dir, context)
    else:  # the CLI: the operator's own process and templates
        rendered = render_templates(str(repo.root), templates_dir, context)
        if isinstance(rendered, DeployError):
            raise rendered
        texts = rendered
    base = templates_dir.rstrip("/")
    return [obj for name, text in texts for obj in parse_objects(text, source=f"{base}/{name}")]


MAX_CONTEXT_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class BuildSettings:
    """How the server builds: the builder, the registry client and the limits (never from the pushed repo)."""

    builder: Builder
    registry: RegistryClient
    max_context_bytes: int = MAX_CONTEXT_BYTES
    secret_args: dict[str, str] = field(default_factory=dict)
    auth_file: Path | None = None
    limits: BuildLimits = field(default_factory=BuildLimits)
    network_allowed: bool = True  # the server's grant for the app; the CLI's operator may give any build one


async def build_image(*, repo: Path, ref: str, settings: BuildSettings, sink: EventSink = discard) -> ImageRef:
    """Step 3: the commit's image, tagged with its SHA and pinned by digest; built only if the registry lacks it."""
    commit = await resolve_commit(repo, ref)
    with tempfile.TemporaryDirectory(prefix="deployer-build-") as tmp:
        files = RepoFiles(await export_commit(repo, commit, Path(tmp) / "tree"))
        return await build_exported(
            files=files, config=load_deploy_config(files), commit=commit, settings=settings, sink=sink
        )


async def build_exported(
    *,
    files: RepoFiles,
    config: DeployConfig,
    commit: str,
    settings: BuildSettings,
    sink: EventSink = discard,
    tag: str | None = None,
) -> ImageRef:
    """Step 3 over a commit's exported tree: build and push unless the registry has the commit's image; with
    `build: false`, the image built elsewhere (`tag`, else image.tag) resolved to its digest instead."""
    build = config.builds
    if build is None:
        return await prebuilt_image(config, commit=commit, tag=tag, registry=settings.registry, sink=sink)
    if build.network and not settings.network_allowed:
        raise DeployError(
            f"RUN steps may not have a network for app {config.app!r}: an operator allows it with server.yaml "
            f"apps.{config.app}.buildNetwork",
            where=f"{DEPLOY_FILE}: build.network",
        )
    repository = Repository.parse(config.image.repository)
    found = await settings.registry.digest(repository, commit)
    if found is not None:
        sink(
            Event(
                "build",
                f"{config.image.repository}:{commit[:12]} is already in the registry; not rebuilt",
                data={"digest": found, "built": False},
            )
        )
        return ImageRef(repository=config.image.repository, tag=commit, digest=found)
    request = _build_request(
        files,
        config,
        build,
        commit=commit,
        settings=settings,
        insecure=settings.registry.scheme(repository.registry) == "http",
    )
    sink(Event("build", f"building {request.image} with {settings.builder.name}"))
    await settings.builder.build_and_push(request, sink)
    digest = await settings.registry.digest(repository, commit)
    if digest is None:
        raise DeployError(f"{request.image} was pushed but the registry does not list it", where="registry")
    sink(Event("build", f"pushed {config.image.repository}@{digest}", data={"digest": digest, "built": True}))
    return ImageRef(repository=config.image.repository, tag=commit, digest=digest)


async def prebuilt_image(
    config: DeployConfig, *, commit: str, tag: str | None, registry: RegistryClient, sink: EventSink = discard
) -> ImageRef:
    """`build: false`: the tag of an image built elsewhere, resolved to the digest the release pins (a tag that
    moves later never changes what runs); a tag the registry does not have is refused in one line."""
    chosen = tag or config.image.tag
    where = "-o set.image.tag" if tag else f"{DEPLOY_FILE}: image.tag"
    if not chosen:
        raise DeployError(
            "build: false needs the tag of the image built elsewhere (image.tag, or -o set.image.tag=TAG where the "
            "server allows set)",
            where=f"{DEPLOY_FILE}: image.tag",
        )
    check_tag(chosen, where=where)
    digest = await registry.digest(Repository.parse(config.image.repository), chosen)
    if digest is None:
        raise DeployError(f"{config.image.repository}:{chosen} is not in the registry", where=where)
    sink(
        Event(
            "build",
            f"build: false: {config.image.repository}:{chosen} is {digest}",
            data={"digest": digest, "built": False},
        )
    )
    return ImageRef(repository=config.image.repository, tag=chosen, digest=digest, commit=commit)


def _build_request(
    files: RepoFiles,
    config: DeployConfig,
    build: BuildConfig,
    *,
    commit: str,
    settings: BuildSettings,
    insecure: bool,
) -> BuildRequest:
    """The builder's input from the exported tree: context and Dockerfile checked, the context's size capped."""
    context = files.directory(build.context, where=f"{DEPLOY_FILE}: build.context", check_tree=False)
    dockerfile = files.file(build.dockerfile, where=f"{DEPLOY_FILE}: build.dockerfile", what="Dockerfile")
    size = tree_size(context)
    if size > settings.max_context_bytes:
        raise DeployError(
            f"build context {build.context!r} is {size / 2**20:.1f} MiB, over the limit of "
            f"{settings.max_context_bytes / 2**20:.0f} MiB",
            where=f"{DEPLOY_FILE}: build.context",
        )
    return BuildRequest(
        context=context,
        dockerfile=dockerfile,
        image=f"{config.image.repository}:{commit}",
        args={**build.args, "GIT_COMMIT": commit},
        secret_args=settings.secret_args,
        insecure=insecure,
        auth_file=settings.auth_file,
        network=build.network,
        limits=settings.limits,
    )
