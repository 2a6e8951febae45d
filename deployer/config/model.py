"""The deploy.yaml model: what an app repository promises the deployer (docs/architecture.md §2).

Unknown keys are errors so that a typo never silently turns a setting off. Keys are camelCase as in
Kubernetes manifests; durations are strings such as "30s" or "1m30s".
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from deployer.config.repo import check_relative
from deployer.errors import DeployError

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h))+$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# A docker reference without tag or digest: [host[:port]/]path, lowercase path components.
_IMAGE_REPOSITORY = re.compile(
    r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$"
)
_BRANCH_GLOB = re.compile(r"^[A-Za-z0-9._/*\-+]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(value: object) -> float:
    """Seconds in a duration string such as "500ms", "30s", "1m30s" or "2h"."""
    if not isinstance(value, str) or not _DURATION.match(value):
        raise ValueError(f'expected a duration such as "30s", "1m30s" or "500ms", got {value!r}')
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))


def _format_duration(seconds: float) -> str:
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(_format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": _DURATION.pattern, "examples": ["30s", "1m30s"]}),
]


def _relative_path(value: str) -> str:
    try:
        check_relative(value, where="path")
    except DeployError as exc:
        raise ValueError(exc.message) from None
    return value


def _image_repository(value: str) -> str:
    if "@" in value or re.search(r":[^/]*$", value.split("/", 1)[-1] if "/" in value else value):
        raise ValueError(f"{value!r} carries a tag or digest; the deployer tags each image with its commit")
    if not _IMAGE_REPOSITORY.match(value):
        raise ValueError(f"{value!r} is not an image repository such as registry.example.com:5000/team/app")
    return value


def _branch_glob(value: str) -> str:
    if not _BRANCH_GLOB.match(value) or value.startswith(("/", "refs/")) or value.endswith("/") or ".." in value:
        raise ValueError(f"{value!r} is not a branch name or glob such as 'main' or 'release/*'")
    return value


RelPath = Annotated[str, AfterValidator(_relative_path)]
Name = Annotated[str, Field(pattern=DNS1123_LABEL, max_length=63)]
# An Istio Gateway as a VirtualService names it: NAME (in the release's namespace) or NAMESPACE/NAME; `mesh` is
# always bound, so it is not named.
GatewayRef = Annotated[
    str,
    Field(
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        max_length=253,
        description="An Istio Gateway: NAME or NAMESPACE/NAME.",
    ),
]
# A host a client asks for (istio/istio pkg/config/validation: a DNS name, `*` only as the leftmost label).
HostName = Annotated[
    str,
    Field(pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", max_length=253),
]


class StrictModel(BaseModel):
    """Unknown keys are errors; YAML keys are camelCase."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True, strict=False
    )


class ImageConfig(StrictModel):
    repository: Annotated[str, AfterValidator(_image_repository)] = Field(
        description="Where built images are pushed, without tag: the tag is always the full commit SHA."
    )
    tag: Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")] | None = Field(
        default=None,
        description="With `build: false`: the tag of the image built elsewhere (resolved to its digest at each "
        "release; `-o set.image.tag=TAG` chooses another where the server allows `set`).",
    )


class BuildConfig(StrictModel):
    dockerfile: RelPath = "Dockerfile"
    context: RelPath = "."
    args: dict[Annotated[str, Field(pattern=_ENV_NAME.pattern)], str] = Field(default_factory=dict)
    network: bool = Field(
        default=False,
        description="RUN steps need a network (e.g. to download packages); the server must allow it for the app.",
    )


OCI_CHART = re.compile(
    r"^oci://([A-Za-z0-9.-]+(?::\d{1,5})?)/((?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*)$"
)


def _chart(value: str) -> str:
    if value.startswith("oci://"):
        if not OCI_CHART.match(value):
            raise ValueError(f"{value!r} is not a chart in a registry such as oci://registry.example.com/charts/hello")
        return value
    return _relative_path(value)


class HelmRender(StrictModel):
    chart: Annotated[str, AfterValidator(_chart)] = Field(
        description="Directory of an ordinary Helm chart inside the repo, or oci://HOST/PATH/NAME in a registry "
        "server.yaml allows (then `version` is required)."
    )
    version: Annotated[str, Field(pattern=r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,127}$")] | None = Field(
        default=None, description="An oci:// chart's exact version (a chart in the repo has its own Chart.yaml)."
    )
    release: Annotated[str, Field(pattern=DNS1123_LABEL, max_length=53)] | None = Field(
        default=None, description="Helm release name; defaults to the app name."
    )

    @property
    def oci(self) -> bool:
        return self.chart.startswith("oci://")

    @model_validator(mode="after")
    def _version(self) -> Self:
        if self.oci and self.version is None:
            raise ValueError("an oci:// chart needs its exact version (version: 1.2.3)")
        if not self.oci and self.version is not None:
            raise ValueError("version is for oci:// charts; a chart in the repo has its own Chart.yaml")
        return self


class TemplatesRender(StrictModel):
    dir: RelPath = Field(description="Directory of Jinja2 templates (*.yaml.j2); files starting with _ are partials.")


class RenderConfig(StrictModel):
    helm: HelmRender | None = None
    templates: TemplatesRender | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.helm is None) == (self.templates is None):
            raise ValueError("set exactly one of 'helm' or 'templates'")
        return self

    @property
    def directory(self) -> str:
        """The chart or templates directory: everything in it may be read by a render."""
        return self.helm.chart if self.helm is not None else self.templates.dir if self.templates is not None else ""


class HttpCheck(StrictModel):
    path: Annotated[str, Field(pattern=r"^/")] = "/"
    port: Annotated[int, Field(ge=1, le=65535)] | Annotated[str, Field(pattern=r"^[a-z0-9-]{1,15}$")]
    status: Annotated[int, Field(ge=100, le=599)] = 200
    timeout: Duration = 5.0


class PrometheusCheck(StrictModel):
    query: str | None = Field(
        default=None,
        description="PromQL; {namespace}, {workload} and {window} ({interval}: the same) are replaced before it "
        "is sent.",
    )
    template: Literal["request-success-rate", "request-duration"] | None = None
    min: float | None = None
    max: float | None = None
    no_data: Literal["fail", "skip"] = Field(
        default="fail",
        description="`skip` passes a round without data only once the canary has had requests in the window.",
    )
    window: Duration = Field(
        default=60.0,
        description="The range the query looks back over; at least twice the scrape interval the server states.",
    )

    @model_validator(mode="after")
    def _query_and_bounds(self) -> Self:
        if (self.query is None) == (self.template is None):
            raise ValueError("set exactly one of 'query' or 'template'")
        if self.min is None and self.max is None:
            raise ValueError("set 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min}) is greater than 'max' ({self.max})")
        return self


class Check(StrictModel):
    name: Name
    retries: Annotated[int, Field(ge=0, le=20)] = 2
    http: HttpCheck | None = None
    prometheus: PrometheusCheck | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.http is None) == (self.prometheus is None):
            raise ValueError("set exactly one of 'http' or 'prometheus' (readiness is always checked)")
        return self


class CanaryPolicy(StrictModel):
    enabled: bool = Field(default=True, description="`canary: false` applies and waits, without a canary.")
    steps: Annotated[list[Annotated[int, Field(ge=1, le=99)]], Field(min_length=1)] = Field(
        default_factory=lambda: [10, 25, 50],
        description="Canary traffic weights in percent, strictly increasing; promotion follows the last.",
    )
    interval: Duration = 30.0
    threshold: Annotated[int, Field(ge=1)] = 2
    checks: list[Check] = Field(default_factory=list)
    provider: Literal["istio", "gateway-api"] = Field(
        default="istio",
        description="How traffic is split: Istio VirtualServices, or Gateway API HTTPRoutes (gateway.networking.k8s.io"
        "/v1: the Service as a GAMMA parent for the mesh, `gateways` as Gateway parents), for any implementation.",
    )
    gateways: list[GatewayRef] = Field(
        default_factory=list,
        description="Gateways (NAMESPACE/NAME; Istio's, or Gateway API's with provider gateway-api) whose traffic "
        "follows the canary's weights too (the mesh always does).",
    )
    hosts: list[HostName] = Field(
        default_factory=list, description="Hosts the canary's routes serve besides the Service's own name."
    )
    grace: Duration = Field(
        default=5.0,
        description="How long what a route stops naming is kept, so the route change reaches every proxy first.",
    )

    @model_validator(mode="after")
    def _increasing(self) -> Self:
        if self.gateways and not self.hosts:
            raise ValueError("gateways need hosts: a gateway routes the hosts a client asks it for")
        if "mesh" in self.gateways:
            raise ValueError("'mesh' is always bound; gateways lists the others")
        for before, after in zip(self.steps, self.steps[1:], strict=False):
            if after <= before:
                raise ValueError(f"steps must increase strictly, got {before} then {after}")
        names = [c.name for c in self.checks]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"check name {name!r} is used twice")
        return self


def _canary_shorthand(value: object) -> object:
    """`canary: false` (or true) is short for `canary: {enabled: false}`."""
    return {"enabled": value} if isinstance(value, bool) else value


class Job(StrictModel):
    name: Name
    command: Annotated[list[str], Field(min_length=1)]
    args: list[str] = Field(default_factory=list)
    timeout: Duration = 300.0
    backoff_limit: Annotated[int, Field(ge=0, le=10)] = 0


class Environment(StrictModel):
    branches: Annotated[list[Annotated[str, AfterValidator(_branch_glob)]], Field(min_length=1)]
    namespace: Name
    values: list[RelPath] = Field(default_factory=list)
    canary: Annotated[CanaryPolicy, BeforeValidator(_canary_shorthand)] = Field(default_factory=CanaryPolicy)
    jobs: list[Job] = Field(default_factory=list)


def _false_not_null(schema: dict[str, Any]) -> None:
    """The JSON schema says what deploy.yaml may say: `build: false`, not `build: null`."""
    schema["anyOf"] = [s if s.get("type") != "null" else {"const": False} for s in schema.get("anyOf", [])]


class DeployConfig(StrictModel):
    """The whole of deploy.yaml."""

    app: Name = Field(description="The app's name: a DNS-1123 label.")
    image: ImageConfig
    # `false` is read as None (see _build_off): an Optional, not a union with Literal[False], so that a mistake
    # inside build keeps its own path in the error (build.args.1BAD, not build)
    build: BuildConfig | None = Field(
        default_factory=BuildConfig,
        description="How to build the image from the repository; `false`: it is built elsewhere (image.tag).",
        json_schema_extra=_false_not_null,
    )
    render: RenderConfig
    environments: Annotated[
        dict[Annotated[str, Field(pattern=DNS1123_LABEL, max_length=63)], Environment], Field(min_length=1)
    ]

    @field_validator("build", mode="before")
    @classmethod
    def _build_off(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("say `build: false` for an image built elsewhere, or leave build out")
        return None if value is False else value

    @property
    def builds(self) -> BuildConfig | None:
        """How the image is built from the repository, or None when it is built elsewhere (`build: false`)."""
        return self.build

    def environment(self, name: str) -> Environment:
        """The environment called `name`, or one DeployError listing the ones there are."""
        if name not in self.environments:
            raise DeployError(
                f"no environment {name!r} (environments: {', '.join(self.environments)})", where="deploy.yaml"
            )
        return self.environments[name]

    @property
    def release_name(self) -> str:
        """The Helm release name (or the app name in template mode)."""
        if self.render.helm is not None and self.render.helm.release:
            return self.render.helm.release
        return self.app


def conflicts(config: DeployConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Rules across environments, as (path in deploy.yaml, message): no literal branch or namespace twice."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    if config.image.tag is not None and config.build is not None:
        found.append((("image", "tag"), "is for images built elsewhere (build: false); built ones carry their commit"))
    claimed: dict[str, str] = {}
    namespaces: dict[str, str] = {}
    for env_name, env in config.environments.items():
        for index, branch in enumerate(env.branches):
            owner = claimed.setdefault(branch, env_name)
            if "*" not in branch and owner != env_name:
                found.append(
                    (
                        ("environments", env_name, "branches", index),
                        f"branch {branch!r} is claimed by both {owner!r} and {env_name!r}",
                    )
                )
        owner = namespaces.setdefault(env.namespace, env_name)
        if owner != env_name:
            found.append(
                (
                    ("environments", env_name, "namespace"),
                    f"namespace {env.namespace!r} is used by both {owner!r} and {env_name!r}; "
                    "each environment needs its own",
                )
            )
    return found


def branch_matches(pattern: str, branch: str) -> bool:
    """Git-style glob: `*` matches within one path segment, `**` across segments."""
    regex = "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part)
        for part in re.split(r"(\*\*|\*)", pattern)
    )
    return re.fullmatch(regex, branch) is not None


def environments_for_branch(config: DeployConfig, branch: str) -> list[str]:
    """Environments a push to `branch` deploys: a literal claim wins over globs; several globs may match."""
    literal = [name for name, env in config.environments.items() if branch in env.branches]
    if literal:
        return literal[:1]
    return [
        name
        for name, env in config.environments.items()
        if any(branch_matches(p, branch) for p in env.branches if "*" in p)
    ]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of deploy.yaml, for editors."""
    schema = DeployConfig.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "deploy.yaml"
    return schema


def check_windows(policy: CanaryPolicy, *, scrape_interval: float, where: str) -> None:
    """Refuse a Prometheus window shorter than two scrapes: rate() needs two samples in it, or it is empty. The
    canary's interval too: its pods are new series, which have their second sample a scrape after the first, so
    a shorter round would judge every canary on no data."""
    prometheus = [c for c in policy.checks if c.prometheus is not None]
    for check in prometheus:
        assert check.prometheus is not None
        if check.prometheus.window < 2 * scrape_interval:
            raise DeployError(
                f"{where}.checks[{check.name}].prometheus.window: {check.prometheus.window:g}s is shorter than "
                f"twice the scrape interval the server states ({scrape_interval:g}s), so rate() would see "
                f"nothing; use at least {2 * scrape_interval:g}s",
                where="deploy.yaml",
            )
    if prometheus and policy.interval < 2 * scrape_interval:
        raise DeployError(
            f"{where}.interval: {policy.interval:g}s is shorter than twice the scrape interval the server states "
            f"({scrape_interval:g}s): a new canary's metrics would not exist yet when check {prometheus[0].name} "
            f"runs; use at least {2 * scrape_interval:g}s",
            where="deploy.yaml",
        )
