"""Wiring for `deployer serve`: the config's cluster, builder and registry, then the listeners."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from deployer.build import BuildahBuilder, Builder, BuildLimits, BuildUser, RegistryClient, choose_builder
from deployer.build.kaniko import KANIKO_IMAGE, BuildContexts, KanikoBuilder, KanikoSettings
from deployer.config.server import ServerConfig
from deployer.errors import DeployError
from deployer.helm import Helm
from deployer.kube import KubeClient, KubeJobRunner, connect
from deployer.pipeline.charts import ChartRegistries
from deployer.pipeline.push import Services
from deployer.pipeline.steps import BuildSettings
from deployer.pipeline.worker import RenderPool
from deployer.server.core import DeployServer
from deployer.server.http import GitHttp
from deployer.server.ssh import GitSsh

log = logging.getLogger("deployer.server")


def services(config: ServerConfig) -> Services:
    """The cluster, the builder and the registry client, as the operator configured them."""
    data = Path(config.data_dir).resolve()
    clusters = {
        name: connect(Path(c.kubeconfig) if c.kubeconfig else None, c.context) for name, c in config.clusters.items()
    }
    if config.cluster is not None:
        api = connect(Path(config.cluster.kubeconfig) if config.cluster.kubeconfig else None, config.cluster.context)
    else:  # every environment names its cluster (server.yaml is checked for it): this one is never asked
        api = next(iter(clusters.values()))
    registry = config.registry
    auth = Path(registry.auth_file) if registry.auth_file else None
    contexts = None
    if config.builder.kind == "kaniko":
        builder, contexts = _kaniko(config, data, clusters[config.builder.cluster] if config.builder.cluster else api)
    else:
        builder = choose_builder(
            config.builder.kind,
            storage=Path(config.builder.storage or data / "containers"),
            user=BuildUser.lookup(config.builder.run_as) if config.builder.run_as else None,
        )
    build = BuildSettings(
        builder=builder,
        registry=RegistryClient(insecure=frozenset([registry.host] if registry.insecure else []), auth_file=auth),
        max_context_bytes=config.builder.max_context_mb * 2**20,
        auth_file=auth,
        limits=BuildLimits(
            isolation=config.builder.isolation,
            memory_mb=config.builder.memory_mb,
            cpus=config.builder.cpus,
            processes=config.builder.processes,
            timeout=config.builder.timeout,
            image_mb=config.builder.max_image_mb,
        ),
        network_allowed=False,  # per app: the push pipeline asks server.yaml
    )
    renders = RenderPool(timeout=config.limits.render_timeout, memory_mb=config.limits.render_memory_mb)
    helm = Helm(timeout=config.limits.render_timeout)
    chart_auth = Path(config.charts.auth_file) if config.charts.auth_file else None
    charts = ChartRegistries(
        registry=RegistryClient(insecure=frozenset(config.charts.insecure), auth_file=chart_auth),
        allowed=frozenset(config.charts.registries),
        cache=data / "charts",
        auth_file=chart_auth,
    )
    return Services(
        server=config,
        api=api,
        build=build,
        helm=helm,
        renders=renders,
        charts=charts,
        clusters=clusters,
        contexts=contexts,
    )


def _kaniko(config: ServerConfig, data: Path, api: KubeClient) -> tuple[Builder, BuildContexts]:
    """server.yaml builder (kind: kaniko): each build a Job on `api`'s cluster, its context served by this server."""
    b = config.builder
    assert b.namespace is not None and b.context_url is not None  # the model requires them with kind: kaniko
    resources = b.resources
    sizes: dict[str, dict[str, str]] = {"limits": {"cpu": f"{b.cpus:g}", "memory": f"{b.memory_mb}Mi"}}
    if resources is not None:  # what server.yaml gives wins; requests default to KanikoSettings'
        sizes |= {kind: {str(k): v for k, v in given.items()} for kind, given in resources if given}
    settings = KanikoSettings(
        namespace=b.namespace,
        image=b.image or KANIKO_IMAGE,
        registry_secret=b.registry_secret,
        cache_repository=b.cache.repository if b.cache else None,
        context_ca=b.context_ca,
        timeout=b.timeout,
        ttl=b.ttl,
        max_concurrent=b.max_concurrent,
        **sizes,
    )
    contexts = BuildContexts(data / "build-contexts", base_url=b.context_url, lifetime=b.timeout + 60)
    contexts.clear_directory()
    return KanikoBuilder(runner=KubeJobRunner(api), settings=settings, contexts=contexts), contexts


def _tls(config: ServerConfig) -> ssl.SSLContext | None:
    if config.listen.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.listen.tls.cert_file, config.listen.tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise DeployError(f"cannot load the certificate and key: {why}", where="server.yaml: listen.tls") from None
    return context


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(config: ServerConfig, *, announce: Callable[[str], None] = print) -> None:
    """Run until SIGINT/SIGTERM; releases in flight get time to end before the process exits."""
    tls = _tls(config)  # a certificate that does not load stops the start before anything runs
    found = services(config)
    if isinstance(found.build.builder, BuildahBuilder) and found.build.builder.user is None and os.geteuid() == 0:
        log.warning(
            "builds run as root: a RUN step's root is the host's root inside its namespaces; set builder.runAs to "
            "an unprivileged user with /etc/subuid ranges (docs/server.md: What the server enforces)"
        )
    server = DeployServer(config, services=found)
    await server.start()
    runner: web.AppRunner | None = None
    acceptor = None
    try:
        if config.listen.http:
            host, port = _split(config.listen.http)
            runner = web.AppRunner(GitHttp(server).app(), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, port, ssl_context=tls)
            try:
                await site.start()
            except OSError as exc:
                raise DeployError(
                    f"cannot listen on {config.listen.http}: {exc.strerror}", where="listen.http"
                ) from None
            bound = runner.addresses[0][1]
            scheme = "https" if config.listen.tls else "http"
            announce(f"http: {scheme}://{host}:{bound}/APP.git  (/healthz, /metrics)")
        if config.listen.ssh:
            host, port = _split(config.listen.ssh)
            try:
                acceptor = await GitSsh(server).listen(host, port)
            except OSError as exc:
                raise DeployError(f"cannot listen on {config.listen.ssh}: {exc.strerror}", where="listen.ssh") from None
            bound = acceptor.sockets[0].getsockname()[1]
            announce(f"ssh: ssh://{config.listen.ssh_user}@{host}:{bound}/APP.git")
        announce("deployer serving; stop with Ctrl-C")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        if acceptor is not None:
            acceptor.close()
            with contextlib.suppress(Exception):
                await acceptor.wait_closed()
        if runner is not None:
            await runner.cleanup()
        await server.stop()
        for api in {server.services.api, *server.services.clusters.values()}:
            await api.close()
        if server.services.renders is not None:
            server.services.renders.kill()  # no render outlives the server
        if server.services.contexts is not None:
            server.services.contexts.clear()
