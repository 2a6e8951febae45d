"""The server config (server.yaml): what the operator allows. It never comes from a pushed repo.

It binds each app's environments to their namespaces (a pushed deploy.yaml must agree: it chooses among these,
never beyond), says who may push to which environments (SSH keys, or
HTTP tokens stored as sha256 digests), the registry, the builder, the cluster, the default canary policy
and its limits, and which push options each environment allows. The checks a push must pass are pure
functions here; the server applies them before anything runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from deployer.config.load import parse_model
from deployer.config.model import (
    DNS1123_LABEL,
    CanaryPolicy,
    DeployConfig,
    Duration,
    GatewayRef,
    HostName,
    Name,
    StrictModel,
    check_windows,
)
from deployer.errors import DeployError

PUSH_OPTIONS = ("dry-run", "skip-canary", "async", "set")
PushOption = Literal["dry-run", "skip-canary", "async", "set"]
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
_TOKEN_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")


def _host_port(value: str) -> str:
    match = _HOST_PORT.match(value)
    if not match or int(match.group(2)) > 65535:
        raise ValueError(f"{value!r} is not HOST:PORT such as 127.0.0.1:2222 (port 0 picks a free one)")
    return value


def _public_key(value: str) -> str:
    parts = value.split()
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        raise ValueError(
            f"expected an OpenSSH public key line such as 'ssh-ed25519 AAAA... alice@laptop', got {value!r}"
        )
    try:
        base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ValueError(f"the key data of {parts[0]} key is not base64") from None
    return value


def _token_digest(value: str) -> str:
    if not _TOKEN_DIGEST.match(value):
        raise ValueError(
            "expected 'sha256:' and 64 lowercase hex digits (the digest of the token, never the token: "
            'printf %s "$TOKEN" | sha256sum)'
        )
    return value


def _all_options() -> list[PushOption]:
    return ["dry-run", "skip-canary", "async", "set"]


HostPort = Annotated[str, AfterValidator(_host_port)]
Glob = Annotated[str, Field(pattern=r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")]


class ListenTls(StrictModel):
    cert_file: str = Field(description="PEM certificate chain the HTTP listener presents.")
    key_file: str = Field(description="Its PEM private key.")


class Listen(StrictModel):
    ssh: HostPort | None = Field(default="127.0.0.1:2222", description="SSH remote; null turns it off.")
    http: HostPort | None = Field(default="127.0.0.1:8080", description="Smart HTTP, /healthz and /metrics.")
    ssh_user: str = Field(default="git", description="The user name in ssh://USER@HOST/APP.git.")
    tls: ListenTls | None = Field(
        default=None,
        description="Serve the HTTP listener over TLS (https): kaniko build Jobs fetch their context only over "
        "https, so a kaniko builder whose contextUrl points at this server needs it (or an https ingress).",
    )


class User(StrictModel):
    keys: list[Annotated[str, AfterValidator(_public_key)]] = Field(default_factory=list)
    tokens: list[Annotated[str, AfterValidator(_token_digest)]] = Field(default_factory=list)
    apps: list[Glob] = Field(default_factory=lambda: ["*"], description="Apps this user may push; '*' is all.")
    environments: list[Glob] = Field(
        default_factory=lambda: ["*"], description="Environments this user may deploy to; '*' is all."
    )


class RouteGrant(StrictModel):
    gateways: list[GatewayRef] = Field(
        default_factory=list,
        description="Istio Gateways (NAMESPACE/NAME) the app's routes may bind besides the mesh (none by default).",
    )
    hosts: list[HostName] = Field(
        default_factory=list,
        description="Hosts the app's routing objects may claim besides its namespaces' own Services: "
        "`hello.example.com`, or `*.hello.example.com` for any name under it (none by default).",
    )

    @model_validator(mode="after")
    def _qualified(self) -> Self:
        for gateway in self.gateways:
            if "/" not in gateway:
                raise ValueError(f"gateway {gateway!r}: name it as NAMESPACE/NAME (server.yaml serves every namespace)")
        return self


class AppPolicy(StrictModel):
    build_network: bool = Field(
        default=False,
        description="Whether this app's builds may have a network in their RUN steps (a private one; deploy.yaml "
        "asks with build.network). Without it, RUN steps have no network at all.",
    )
    routes: RouteGrant = Field(
        default_factory=RouteGrant,
        description="What the app's routes may reach beyond its namespace: another app's host or a shared "
        "gateway is refused at render unless granted here.",
    )
    environments: Annotated[dict[Name, Name], Field(min_length=1)] = Field(
        description="ENVIRONMENT: NAMESPACE for each environment of the app; deploy.yaml must name the same."
    )
    clusters: dict[Name, Name] = Field(
        default_factory=dict,
        description="ENVIRONMENT: CLUSTER for environments that live on a cluster of `clusters` rather than the "
        "default `cluster`; its releases, lock and records are there.",
    )
    cluster_scoped: list[Annotated[str, Field(pattern=r"^[A-Z][A-Za-z0-9]*$")]] = Field(
        default_factory=list,
        description="Cluster-scoped kinds this app's releases may create (none by default), e.g. "
        "[CustomResourceDefinition].",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "namespaces" in data:
            raise ValueError(
                "'namespaces' is replaced by 'environments: {ENVIRONMENT: NAMESPACE}': server.yaml binds each "
                "environment to its namespace, so a push cannot aim one environment's rights at another's namespace"
            )
        return data

    @model_validator(mode="after")
    def _one_namespace_each(self) -> Self:
        for environment in self.clusters:
            if environment not in self.environments:
                raise ValueError(f"clusters.{environment}: no such environment in 'environments'")
        seen: dict[tuple[str | None, str], str] = {}
        for environment, namespace in self.environments.items():
            where = (self.clusters.get(environment), namespace)
            if seen.setdefault(where, environment) != environment:
                cluster = f" of cluster {where[0]!r}" if where[0] else ""
                raise ValueError(
                    f"namespace {namespace!r}{cluster} is bound to both {seen[where]!r} and {environment!r}: "
                    "one environment per namespace, so that its rules cannot be escaped by another name"
                )
        return self

    def environment_of(self, namespace: str, cluster: str | None = None) -> str | None:
        return next(
            (e for e, n in self.environments.items() if n == namespace and self.clusters.get(e) == cluster), None
        )


class CanaryDefaults(StrictModel):
    """Used for what an environment's `canary` in deploy.yaml leaves unset."""

    steps: list[Annotated[int, Field(ge=1, le=99)]] | None = None
    interval: Duration | None = None
    threshold: Annotated[int, Field(ge=1)] | None = None
    grace: Duration | None = Field(
        default=None, description="How long the mesh takes to propagate a route change (default 5s)."
    )

    @model_validator(mode="after")
    def _increasing(self) -> Self:
        steps = self.steps or []
        if any(after <= before for before, after in itertools.pairwise(steps)):
            raise ValueError(f"steps must increase strictly, got {steps}")
        return self


class CanaryLimits(StrictModel):
    required: bool = Field(default=False, description="Refuse `canary: false` (and `-o skip-canary`).")
    min_interval: Duration = 0.0
    max_interval: Duration | None = None
    min_steps: Annotated[int, Field(ge=1)] = 1


class EnvironmentPolicy(StrictModel):
    push_options: list[PushOption] = Field(default_factory=_all_options)
    canary: CanaryLimits | None = Field(
        default=None, description="Limits for this environment (default: canary.limits)."
    )
    lock_wait: Duration = Field(default=600.0, description="How long a push waits for a release in flight.")


class CanaryConfig(StrictModel):
    defaults: CanaryDefaults = Field(default_factory=CanaryDefaults)
    limits: CanaryLimits = Field(default_factory=CanaryLimits)


class ClusterConfig(StrictModel):
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.kubeconfig is None) == (not self.in_cluster):
            raise ValueError("set exactly one of 'kubeconfig' or 'inCluster: true'")
        return self


class RegistryConfig(StrictModel):
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-\[\]:]+$")] = Field(
        description="Images must live in this registry (deploy.yaml's image.repository starts with it)."
    )
    insecure: bool = Field(default=False, description="Plain http (loopback registries always are).")
    auth_file: str | None = None


RegistryHost = Annotated[str, Field(pattern=r"^[A-Za-z0-9.-]+(:\d{1,5})?$")]


class ChartsConfig(StrictModel):
    """Where oci:// charts may come from: the only registries a push's chart is pulled from."""

    registries: list[RegistryHost] = Field(
        default_factory=list, description="Registry hosts (HOST or HOST:PORT); none by default."
    )
    insecure: list[RegistryHost] = Field(
        default_factory=list, description="Those reached over plain http (loopback registries always are)."
    )
    auth_file: str | None = Field(default=None, description="Credentials for them, as a docker config.json.")


class BuildCache(StrictModel):
    repository: str = Field(
        description="Where kaniko keeps cached layers (its --cache-repo), e.g. registry.example.com/cache."
    )


class BuildResources(StrictModel):
    requests: dict[Literal["cpu", "memory", "ephemeral-storage"], str] = Field(default_factory=dict)
    limits: dict[Literal["cpu", "memory", "ephemeral-storage"], str] = Field(default_factory=dict)


KANIKO_FIELDS = ("namespace", "cluster", "image", "context_url", "context_ca", "registry_secret", "cache", "resources")


class BuilderConfig(StrictModel):
    kind: Literal["auto", "buildah", "docker", "kaniko"] = Field(
        default="auto",
        description="`auto` (buildah, else docker), `buildah`, `docker`, or `kaniko`: every build a Job in the "
        "cluster (namespace), its context fetched from this server (contextUrl), no privileges in this server.",
    )
    namespace: Name | None = Field(default=None, description="kaniko: the namespace build Jobs run in.")
    cluster: Name | None = Field(
        default=None, description="kaniko: the cluster (of `clusters`) build Jobs run on; default: `cluster`."
    )
    image: str | None = Field(default=None, description="kaniko: the executor image (default: a pinned release).")
    context_url: Annotated[str, Field(pattern=r"^https://[^\s/?#]+(/[^\s?#]*)?$")] | None = Field(
        default=None,
        description="kaniko: this server's https URL as build Jobs reach it (kaniko fetches a context only over "
        "https); each build fetches its commit's context once from CONTEXTURL/build-context/TOKEN.tar.gz.",
    )
    context_ca: Name | None = Field(
        default=None,
        description="kaniko: a ConfigMap in the build namespace whose `ca.crt` signed contextUrl's certificate "
        "(added to kaniko's roots); not needed for a publicly trusted certificate.",
    )
    registry_secret: Name | None = Field(
        default=None,
        description="kaniko: a kubernetes.io/dockerconfigjson Secret in the build namespace with the registry's "
        "push credentials (mounted as kaniko's /kaniko/.docker/config.json).",
    )
    cache: BuildCache | None = Field(default=None, description="kaniko: layer cache in the registry.")
    resources: BuildResources | None = Field(
        default=None,
        description="kaniko: the build container's requests and limits (default: requests cpu 500m, memory 512Mi; "
        "limits from cpus and memoryMb).",
    )
    max_concurrent: Annotated[int, Field(ge=1)] = Field(
        default=4, description="kaniko: builds running at once (as Jobs); further pushes wait for a slot."
    )
    ttl: Duration = Field(
        default=600.0, description="kaniko: a finished build Job and its pod are deleted this long after it ends."
    )
    storage: str | None = Field(default=None, description="buildah storage root (default: DATA_DIR/containers).")
    max_context_mb: Annotated[int, Field(ge=1)] = 200
    isolation: Literal["oci", "chroot"] = Field(
        default="oci",
        description="How buildah runs RUN steps: `oci` (runc: their own PID, IPC, mount and network namespaces) or "
        "`chroot` (the host's namespaces: only where no runtime can run).",
    )
    run_as: str | None = Field(
        default=None,
        description="A server running as root runs buildah as this unprivileged user (rootless; it needs "
        "/etc/subuid and /etc/subgid ranges): RUN's root is that user on the host, not root.",
    )
    timeout: Duration = Field(default=900.0, description="A build is killed (its process group) past this.")
    memory_mb: Annotated[int, Field(ge=64)] = Field(default=2048, description="Memory (and swap) of RUN steps.")
    cpus: Annotated[float, Field(gt=0)] = Field(default=2.0, description="CPUs RUN steps may use.")
    processes: Annotated[int, Field(ge=16)] = Field(default=1024, description="Processes RUN steps may run.")
    max_image_mb: Annotated[int, Field(ge=1)] = Field(
        default=4096, description="The largest image a push may build (all its layers); over it, nothing is pushed."
    )

    @model_validator(mode="after")
    def _kaniko(self) -> Self:
        keys = type(self).model_fields  # their aliases are server.yaml's keys (camelCase)
        if self.kind == "kaniko":
            for needed in ("namespace", "context_url"):
                if getattr(self, needed) is None:
                    raise ValueError(f"builder.{keys[needed].alias} is needed with kind: kaniko")
            return self
        for name in KANIKO_FIELDS:
            if getattr(self, name) is not None:
                raise ValueError(f"builder.{keys[name].alias} is for kind: kaniko (this builder is {self.kind!r})")
        return self


class Limits(StrictModel):
    max_push_mb: Annotated[int, Field(ge=1)] = Field(default=100, description="git's receive.maxInputSize.")
    rollout_timeout: Duration = 300.0
    render_timeout: Duration = Field(
        default=30.0, description="A Jinja or Helm render of a push is stopped (its process killed) past this."
    )
    render_memory_mb: Annotated[int, Field(ge=64)] = Field(
        default=1024, description="The address space a Jinja render's worker process may use."
    )
    auth_free_failures: Annotated[int, Field(ge=1)] = Field(
        default=5,
        description="Wrong tokens one client address may send before each further one doubles its wait (from 1s).",
    )
    auth_max_wait: Duration = Field(
        default=60.0,
        description="The longest a client address that sent wrong tokens waits (answered 429 meanwhile, whatever "
        "its token): how long a real user behind the same address can be kept out.",
    )
    resync: Duration = Field(
        default=60.0,
        description="How often the server brings Release objects in step with the records and tries again to "
        "recover environments whose cluster did not answer (a release it could not end, a recovery at start).",
    )


NotificationEvent = Literal["started", "step", "promoted", "released", "rolled-back", "failed", "recovered"]
NOTIFICATION_EVENTS: tuple[NotificationEvent, ...] = (
    "started",
    "step",
    "promoted",
    "released",
    "rolled-back",
    "failed",
    "recovered",
)


class SecretSource(StrictModel):
    """Where a secret is read at start: a file (e.g. a mounted Secret) or an environment variable; never inline."""

    file: str | None = None
    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of file or env")
        return self


class Notification(StrictModel):
    """A target that hears about releases: a generic webhook (JSON, HMAC-SHA256 signed) or a Slack-compatible
    incoming webhook. A target that fails never fails or slows a release."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    kind: Literal["webhook", "slack"]
    url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = Field(
        default=None, description="The target's URL when it is no secret; else urlFrom."
    )
    url_from: SecretSource | None = Field(
        default=None, description="The URL from a file or variable (Slack's are secrets)."
    )
    secret_from: SecretSource | None = Field(
        default=None, description="webhook: the HMAC-SHA256 key signing each body (X-Deployer-Signature)."
    )
    apps: list[Annotated[str, Field(pattern=DNS1123_LABEL, max_length=63)]] = Field(
        default_factory=list, description="Only these apps (default: all)."
    )
    environments: list[Glob] = Field(default_factory=list, description="Only these environments (default: all).")
    events: list[NotificationEvent] = Field(default_factory=lambda: list(NOTIFICATION_EVENTS))
    timeout: Duration = 5.0

    @model_validator(mode="after")
    def _target(self) -> Self:
        if (self.url is None) == (self.url_from is None):
            raise ValueError("give exactly one of url or urlFrom")
        if self.secret_from is not None and self.kind != "webhook":
            raise ValueError("secretFrom signs webhook bodies; a slack target has none")
        return self

    def wants(self, app: str, environment: str, event: str) -> bool:
        return (
            (not self.apps or app in self.apps)
            and (not self.environments or environment in self.environments or "*" in self.environments)
            and event in self.events
        )


class WebConfig(StrictModel):
    enabled: bool = Field(
        default=True,
        description="The web view at /ui/ on the HTTP listener: releases, live canaries, promote, abort and "
        "rollback for signed-in users (their tokens).",
    )
    session: Duration = Field(
        default=43200.0,
        description="How long a sign-in lasts (12h by default); removing a user's token ends their sessions.",
    )


class ServerConfig(StrictModel):
    """The whole of server.yaml."""

    host_key: str | None = Field(
        default=None, description="An OpenSSH private host key file (e.g. from a Secret); default: made in dataDir."
    )
    authorized_keys: dict[Glob, str] = Field(
        default_factory=dict,
        description="Per environment, an authorized_keys file: each key may deploy there, as the user its comment "
        "names. How an operator gives a developer prod: add the key to prod's file.",
    )
    data_dir: str = Field(description="The bare repositories and the SSH host key (created once, kept) live here.")
    listen: Listen = Field(default_factory=Listen)
    cluster: ClusterConfig | None = Field(
        default=None, description="The default cluster: environments that `apps.APP.clusters` does not place."
    )
    clusters: dict[Name, ClusterConfig] = Field(
        default_factory=dict,
        description="Other clusters by name ({kubeconfig, context} or {inCluster: true}), for `apps.APP.clusters`.",
    )
    registry: RegistryConfig
    builder: BuilderConfig = Field(default_factory=BuilderConfig)
    charts: ChartsConfig = Field(default_factory=ChartsConfig)
    prometheus: str | None = Field(default=None, description="Prometheus URL for the canary's prometheus checks.")
    mesh_gateway: str | None = Field(
        default=None,
        description="The Istio ingress gateway's URL as the server reaches it: HTTP checks of environments that "
        "name a gateway go through it to the canary, as users' requests do (mTLS inside the mesh).",
    )
    mesh_client: Annotated[str, Field(pattern=r"^(direct|https?://\S+)$")] | None = Field(
        default=None,
        description="How the server's own requests enter the mesh, for HTTP checks of environments that name no "
        "gateway: `direct` when the server's pod has an Istio sidecar, or an HTTP proxy URL whose clients the mesh "
        "treats as its pods (the sandbox's client port: http://NAMESPACE@HOST:PORT). They are sent to the "
        "Service's host with the header that pins the canary, so they pass under STRICT mTLS.",
    )
    prometheus_scrape_interval: Duration = Field(
        default=15.0,
        description="How often that Prometheus scrapes the mesh; a check's window must be at least twice it.",
    )
    apps: Annotated[dict[Annotated[str, Field(pattern=DNS1123_LABEL, max_length=63)], AppPolicy], Field(min_length=1)]
    users: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")], User] = Field(default_factory=dict)
    environments: dict[Glob, EnvironmentPolicy] = Field(
        default_factory=dict, description="Policy per environment name; '*' is the default."
    )
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    limits: Limits = Field(default_factory=Limits)
    notifications: list[Notification] = Field(
        default_factory=list, description="Who hears about releases: webhooks and Slack-compatible targets."
    )
    web: WebConfig = Field(default_factory=WebConfig)

    @model_validator(mode="after")
    def _clusters_known(self) -> Self:
        if self.builder.kind == "kaniko":
            if self.builder.cluster is not None and self.builder.cluster not in self.clusters:
                known = ", ".join(sorted(self.clusters)) or "none"
                raise ValueError(
                    f"builder.cluster: no cluster {self.builder.cluster!r} in 'clusters' (it has: {known})"
                )
            if self.builder.cluster is None and self.cluster is None:
                raise ValueError("builder.cluster: kaniko Jobs need a cluster: give 'cluster' or builder.cluster")
        for app, policy in self.apps.items():
            for environment in policy.environments:
                cluster = policy.clusters.get(environment)
                if cluster is not None and cluster not in self.clusters:
                    known = ", ".join(sorted(self.clusters)) or "none"
                    raise ValueError(
                        f"apps.{app}.clusters.{environment}: no cluster {cluster!r} in 'clusters' (it has: {known})"
                    )
                if cluster is None and self.cluster is None:
                    raise ValueError(
                        f"apps.{app}.environments.{environment}: no cluster: give 'cluster' (the default) or "
                        f"apps.{app}.clusters.{environment}"
                    )
        return self

    def cluster_of(self, app: str, environment: str) -> str | None:
        """The name of the cluster `app`'s `environment` lives on (None: the default `cluster`)."""
        return self.apps[app].clusters.get(environment)

    def policy(self, environment: str) -> EnvironmentPolicy:
        """The environment's own policy, else the '*' entry, else the defaults."""
        return self.environments.get(environment) or self.environments.get("*") or EnvironmentPolicy()


def parse_server_config(text: str, *, source: str) -> ServerConfig:
    """server.yaml text → ServerConfig, or one DeployError naming `file:line:col` and the field."""
    config, _ = parse_model(ServerConfig, text, source=source, keys="dataDir, cluster, registry, apps, users")
    return config


def with_authorized_keys(config: ServerConfig, files: dict[str, str]) -> ServerConfig:
    """`config` with the users of its authorizedKeys files (environment → file text) added: each line
    `TYPE DATA NAME` lets NAME deploy to that environment (users: entries of the same name gain the key)."""
    users = {name: user.model_copy(deep=True) for name, user in config.users.items()}
    for environment, text in files.items():
        where = config.authorized_keys.get(environment, environment)
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split()
            try:
                _public_key(line)
            except ValueError as exc:
                raise DeployError(str(exc), where=f"{where}:{number}") from None
            if len(parts) < 3:
                raise DeployError(
                    "each key needs a comment naming its user (ssh-ed25519 AAAA... alice)", where=f"{where}:{number}"
                )
            name = parts[2]
            user = users.get(name) or User(environments=[])
            keys = user.keys if line in user.keys else [*user.keys, line]
            envs = (
                user.environments
                if environment in user.environments or "*" in user.environments
                else [*user.environments, environment]
            )
            users[name] = user.model_copy(update={"keys": keys, "environments": envs})
    return config.model_copy(update={"users": users})


def token_digest(token: str) -> str:
    """What server.yaml stores for a token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def user_for_token(config: ServerConfig, token: str) -> str | None:
    """The user a token belongs to (compared in constant time), or None."""
    digest = token_digest(token)
    for name, user in config.users.items():
        if any(hmac.compare_digest(digest, known) for known in user.tokens):
            return name
    return None


def user_for_key(config: ServerConfig, key_type: str, key_data: str) -> str | None:
    """The user an SSH public key (type and base64 data) belongs to, or None."""
    for name, user in config.users.items():
        for line in user.keys:
            parts = line.split()
            if parts[0] == key_type and hmac.compare_digest(parts[1], key_data):
                return name
    return None


def _allowed(patterns: list[str], name: str) -> bool:
    return "*" in patterns or name in patterns


def may_push(config: ServerConfig, *, user: str, app: str) -> bool:
    """Whether `user` may push `app` (and see its releases in the web view)."""
    return _allowed(config.users[user].apps, app)


def may_act(config: ServerConfig, *, user: str, app: str, environment: str) -> bool:
    """Whether `user` may change what runs in `app`'s `environment` (push to it, promote, abort, roll back)."""
    return may_push(config, user=user, app=app) and _allowed(config.users[user].environments, environment)


def check_app(config: ServerConfig, *, user: str, app: str) -> None:
    """The repository may be pushed at all: a known app, and a user allowed to push it."""
    if app not in config.apps:
        raise DeployError(f"unknown app {app!r}: the server deploys {', '.join(sorted(config.apps))}", where="server")
    if not may_push(config, user=user, app=app):
        raise DeployError(f"user {user!r} may not push app {app!r}", where="server")


def check_environment(
    server: ServerConfig, deploy: DeployConfig, *, user: str, app: str, environment: str, options: set[str]
) -> CanaryPolicy:
    """Everything the server decides before a release runs; returns the canary policy to use (server defaults
    filled in). Raises DeployError naming what is refused and why."""
    if deploy.app != app:
        raise DeployError(
            f"app: {deploy.app!r} does not match the repository {app}.git; push to {deploy.app}.git or rename it",
            where="deploy.yaml",
        )
    if not _allowed(server.users[user].environments, environment):
        raise DeployError(f"user {user!r} may not deploy to {environment}", where="server")
    env = deploy.environments[environment]
    bound = server.apps[app].environments
    if environment not in bound:
        raise DeployError(
            f"environments.{environment}: the server has no environment {environment!r} for app {app!r} "
            f"(it has: {', '.join(sorted(bound))})",
            where="deploy.yaml",
        )
    if env.namespace != bound[environment]:
        owner = server.apps[app].environment_of(env.namespace, server.cluster_of(app, environment))
        extra = f", which is {owner}'s" if owner else ""
        raise DeployError(
            f"environments.{environment}.namespace: {env.namespace!r} is refused: the server binds {environment} "
            f"to {bound[environment]!r}{extra}",
            where="deploy.yaml",
        )
    if not deploy.image.repository.startswith(server.registry.host.rstrip("/") + "/"):
        raise DeployError(
            f"image.repository: {deploy.image.repository!r} is not in the server's registry {server.registry.host}",
            where="deploy.yaml",
        )
    policy = server.policy(environment)
    for option in sorted(options - set(policy.push_options)):
        allowed_text = ", ".join(policy.push_options) or "none"
        raise DeployError(f"push option {option!r} is not allowed for {environment} (allowed: {allowed_text})")
    return effective_canary(server, env.canary, environment=environment, skip=("skip-canary" in options))


def check_claims(
    server: ServerConfig, claimed: list[str], *, user: str, branch: str, commit: str, source: str = "deploy.yaml"
) -> None:
    """Changing a branch that environments deploy from now (by deploy.yaml at its current commit, or, `source`
    "live", because their live release came from it) needs the rights to each of them, whatever the pushed
    commit's deploy.yaml says: a rewrite could otherwise unclaim another environment's branch."""
    for environment in claimed:
        if not _allowed(server.users[user].environments, environment):
            why = f"deploy.yaml at {commit[:12]}" if source == "deploy.yaml" else "its live release came from it"
            raise DeployError(
                f"branch {branch!r} deploys {environment} now ({why}); user {user!r} may not deploy to "
                f"{environment}, so may not change it",
                where="server",
            )


def effective_canary(server: ServerConfig, canary: CanaryPolicy, *, environment: str, skip: bool) -> CanaryPolicy:
    """The environment's canary with the server's defaults for what deploy.yaml left unset, checked against the
    server's limits for that environment."""
    defaults = server.canary.defaults
    unset = {
        key: value
        for key, value in (
            ("steps", defaults.steps),
            ("interval", defaults.interval),
            ("threshold", defaults.threshold),
            ("grace", defaults.grace),
        )
        if value is not None and key not in canary.model_fields_set
    }
    policy = canary.model_copy(update=unset)  # both sides are validated already
    limits = server.policy(environment).canary or server.canary.limits
    where = "deploy.yaml"
    field = f"environments.{environment}.canary"
    if limits.required and (not policy.enabled or skip):
        what = "-o skip-canary" if skip else "canary: false"
        raise DeployError(f"{field}: {what} is refused: the server requires a canary for {environment}", where=where)
    if not policy.enabled:
        return policy
    if policy.interval < limits.min_interval:
        raise DeployError(
            f"{field}.interval: {policy.interval:g}s is below the server's minimum for {environment} "
            f"({limits.min_interval:g}s)",
            where=where,
        )
    if limits.max_interval is not None and policy.interval > limits.max_interval:
        raise DeployError(
            f"{field}.interval: {policy.interval:g}s is above the server's maximum for {environment} "
            f"({limits.max_interval:g}s)",
            where=where,
        )
    check_windows(policy, scrape_interval=server.prometheus_scrape_interval, where=field)
    if len(policy.steps) < limits.min_steps:
        raise DeployError(
            f"{field}.steps: {len(policy.steps)} step(s), the server requires at least {limits.min_steps} "
            f"for {environment}",
            where=where,
        )
    return policy
