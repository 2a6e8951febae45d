"""One commit renders exactly the manifests each environment should get: what `deployer render` and
`deployer validate` print for the two example repos."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from support import EXAMPLES, edit, run_deployer, run_deployer_process

from deployer.config import RepoFiles, load_deploy_config, parse_deploy_config
from deployer.config.model import environments_for_branch
from deployer.errors import DeployError
from deployer.helm import Helm
from deployer.pipeline import render_environment
from deployer.render.validate import KUBERNETES_VERSION, has_schema

Example = Callable[[str], Path]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def render(repo: Path, env: str, *extra: str) -> list[dict[str, Any]]:
    result = run_deployer("render", "--env", env, "--repo", repo, "--commit", COMMIT, *extra)
    assert result.code == 0, result.err
    return [doc for doc in yaml.safe_load_all(result.out) if doc]


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


@pytest.mark.parametrize(("name", "app"), [("hello", "hello"), ("hello-jinja", "hello-jinja")])
def test_staging_and_prod_get_different_valid_manifests(name: str, app: str) -> None:
    staging = by_kind(render(EXAMPLES / name, "staging"))
    prod = by_kind(render(EXAMPLES / name, "prod"))
    assert list(staging) == list(prod) == ["Service", "Deployment", "Ingress"]
    assert staging["Deployment"]["spec"]["replicas"] == 1
    assert prod["Deployment"]["spec"]["replicas"] == 3
    staging_limits = staging["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    prod_limits = prod["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert (staging_limits, prod_limits) == ({"memory": "32Mi"}, {"memory": "64Mi"})
    assert [r["host"] for r in staging["Ingress"]["spec"]["rules"]] == [f"{app}.staging.example.com"]
    assert f"{app}.example.com" in [r["host"] for r in prod["Ingress"]["spec"]["rules"]]
    assert {o["metadata"]["namespace"] for o in staging.values()} == {f"{app}-staging"}
    assert {o["metadata"]["namespace"] for o in prod.values()} == {f"{app}-prod"}


@pytest.mark.parametrize("name", ["hello", "hello-jinja"])
def test_the_image_is_the_commit_and_the_environment_is_injected(name: str) -> None:
    deployment = by_kind(render(EXAMPLES / name, "prod"))["Deployment"]
    pod = deployment["spec"]["template"]
    assert pod["spec"]["containers"][0]["image"] == f"127.0.0.1:5000/{name}:{COMMIT}"
    assert pod["metadata"]["annotations"]["deployer.dev/environment"] == "prod"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == COMMIT[:12]


def test_render_through_the_console_script() -> None:
    staging = run_deployer_process("render", "--env", "staging", "--repo", EXAMPLES / "hello")
    prod = run_deployer_process("render", "--env", "prod", "--repo", EXAMPLES / "hello")
    assert staging.code == prod.code == 0
    assert staging.out != prod.out
    assert staging.err == prod.err == ""


def test_set_has_the_last_word() -> None:
    deployment = by_kind(render(EXAMPLES / "hello", "prod", "--set", "replicas=5"))["Deployment"]
    assert deployment["spec"]["replicas"] == 5


def test_json_output_is_a_kubernetes_list() -> None:
    result = run_deployer("render", "--env", "staging", "--repo", EXAMPLES / "hello", "-o", "json")
    assert result.code == 0
    document = json.loads(result.out)
    assert document["kind"] == "List"
    assert [item["kind"] for item in document["items"]] == ["Service", "Deployment", "Ingress"]


def test_rendering_is_deterministic() -> None:
    assert render(EXAMPLES / "hello", "prod") == render(EXAMPLES / "hello", "prod")


def test_objects_come_in_apply_order(example: Example) -> None:
    repo = example("hello-jinja")
    (repo / "templates" / "aaa.yaml.j2").write_text(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: migrate}\nspec:\n  template:\n    spec:\n"
        "      restartPolicy: Never\n      containers: [{name: m, image: x}]\n---\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config}\n---\n"
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: app}\n"
    )
    kinds = [obj["kind"] for obj in render(repo, "prod")]
    assert kinds == ["ServiceAccount", "ConfigMap", "Service", "Deployment", "Job", "Ingress"]


def test_the_same_object_rendered_twice_is_an_error(example: Example) -> None:
    repo = example("hello-jinja")
    (repo / "templates" / "again.yaml.j2").write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: hello-jinja\nspec: {ports: [{port: 80}]}\n"
    )
    result = run_deployer("render", "--env", "prod", "--repo", repo)
    assert result.code == 1
    assert result.error_line == (
        "error: templates/service.yaml.j2: Service/hello-jinja is rendered twice (also by templates/again.yaml.j2)"
    )


def test_custom_resources_without_a_schema_are_noted_not_refused(example: Example) -> None:
    repo = example("hello-jinja")
    (repo / "templates" / "vs.yaml.j2").write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: {{ app }}-public}\n"
        "spec: {hosts: [{{ app }}.example.com]}\n"
    )
    result = run_deployer("render", "--env", "prod", "--repo", repo)
    assert result.code == 0
    assert result.err == (
        "note: VirtualService/hello-jinja-public has no Kubernetes schema here; only its metadata was checked\n"
    )
    assert not has_schema("VirtualService", "networking.istio.io/v1")
    assert has_schema("Deployment", "apps/v1", version=KUBERNETES_VERSION)


def test_jinja_filters_for_yaml_json_quoting_and_base64(example: Example) -> None:
    repo = example("hello-jinja")
    (repo / "templates" / "cm.yaml.j2").write_text(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
        "data:\n  token: {{ 'hunter2' | b64encode }}\n"
        "stringData:\n  env: {{ values.env | to_json | quote }}\n  quoted: {{ 'a: b' | quote }}\n"
        "  yaml: |\n    {{ values.resources | to_yaml | indent(4) }}\n"
    )
    secret = by_kind(render(repo, "prod"))["Secret"]
    assert secret["data"]["token"] == "aHVudGVyMg=="
    assert json.loads(secret["stringData"]["env"]) == {"LOG_LEVEL": "info"}
    assert secret["stringData"]["quoted"] == "a: b"
    assert yaml.safe_load(secret["stringData"]["yaml"])["limits"] == {"memory": "64Mi"}


def test_values_files_later_in_the_list_win(example: Example) -> None:
    staging = by_kind(render(EXAMPLES / "hello-jinja", "staging"))["Deployment"]
    env = staging["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "LOG_LEVEL", "value": "debug"}]


def test_validate_checks_every_environment() -> None:
    for name in ("hello", "hello-jinja"):
        result = run_deployer("validate", "--repo", EXAMPLES / name)
        assert result.code == 0, result.out
        assert [line.split()[1] for line in result.out.splitlines()] == ["staging", "prod"]


def test_validate_reports_each_broken_environment_and_exits_1(example: Example) -> None:
    repo = example("hello")
    edit(repo / "environments" / "prod.yaml", "replicas: 3", "replicas: -1x")
    result = run_deployer("validate", "--repo", repo)
    assert result.code == 1
    lines = result.out.splitlines()
    assert lines[0].startswith("ok   staging")
    assert lines[1] == (
        "FAIL prod: charts/hello/templates/deployment.yaml: Deployment/hello: spec.replicas: "
        "'-1x' is not of type integer"
    )
    only_staging = run_deployer("validate", "--repo", repo, "--env", "staging")
    assert only_staging.code == 0


def test_schema_is_a_json_schema_that_editors_can_use_on_deploy_yaml() -> None:
    result = run_deployer("schema")
    assert result.code == 0
    schema = json.loads(result.out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for name in ("hello", "hello-jinja"):
        document = yaml.safe_load((EXAMPLES / name / "deploy.yaml").read_text())
        assert list(validator.iter_errors(document)) == []
        document["environments"]["prod"]["branhces"] = ["x"]
        assert [e.validator for e in validator.iter_errors(document)] == ["additionalProperties"]


DEPLOY = """\
app: shop
image: {repository: registry.example.com/team/shop}
render: {templates: {dir: t}}
environments:
  staging: {branches: [main, "feature/*"], namespace: shop-staging}
  preview: {branches: ["feature/**", "fix/*"], namespace: shop-preview}
  prod: {branches: [prod], namespace: shop-prod}
"""


@pytest.mark.parametrize(
    ("branch", "environments"),
    [
        ("main", ["staging"]),
        ("prod", ["prod"]),
        ("feature/x", ["staging", "preview"]),
        ("feature/x/y", ["preview"]),
        ("fix/y", ["preview"]),
        ("docs", []),
    ],
)
def test_branches_map_to_environments(branch: str, environments: list[str]) -> None:
    config = parse_deploy_config(DEPLOY)
    assert environments_for_branch(config, branch) == environments


def test_defaults_of_a_minimal_deploy_yaml() -> None:
    config = parse_deploy_config(DEPLOY)
    assert config.build.dockerfile == "Dockerfile"
    assert config.build.context == "."
    assert config.release_name == "shop"
    canary = config.environments["prod"].canary
    assert (canary.steps, canary.interval, canary.threshold, canary.checks) == ([10, 25, 50], 30.0, 2, [])


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ("image: {repository: registry.example.com/team/shop:v1}", "carries a tag or digest"),
        ("image: {repository: Registry/Team}", "is not an image repository"),
        ("app: shop\nbuild: {args: {1BAD: x}}", "build.args.1BAD"),
        ("render: {templates: {dir: t}, helm: {chart: c}}", "set exactly one of 'helm' or 'templates'"),
    ],
)
def test_top_level_mistakes_are_named(change: str, problem: str) -> None:
    key = change.split(":", 1)[0]
    lines = [line for line in DEPLOY.splitlines() if not line.startswith(f"{key}:")]
    text = "\n".join([change, *lines]) + "\n"
    with pytest.raises(DeployError) as info:
        parse_deploy_config(text)
    assert problem in str(info.value)
    assert str(info.value).startswith("deploy.yaml:")


@pytest.mark.parametrize(
    ("canary", "problem"),
    [
        ("{steps: [50, 20]}", "steps must increase strictly, got 50 then 20"),
        ("{steps: [0]}", "greater than or equal to 1"),
        ("{steps: [100]}", "less than or equal to 99"),
        ("{interval: 30}", 'expected a duration such as "30s"'),
        ("{interval: 30 s}", 'expected a duration such as "30s"'),
        ("{checks: [{name: a}]}", "set exactly one of 'http' or 'prometheus'"),
        ("{checks: [{name: a, prometheus: {query: up}}]}", "set 'min', 'max' or both"),
        (
            "{checks: [{name: a, prometheus: {query: up, template: request-duration, max: 1}}]}",
            "exactly one of",
        ),
        ("{checks: [{name: a, prometheus: {template: nope, max: 1}}]}", "'request-success-rate'"),
        (
            "{checks: [{name: a, http: {port: 8080}}, {name: a, http: {port: 8080}}]}",
            "check name 'a' is used twice",
        ),
        ("{checks: [{name: a, http: {port: 8080, path: healthz}}]}", "should match pattern '^/'"),
    ],
)
def test_canary_policy_mistakes_are_named(canary: str, problem: str) -> None:
    text = DEPLOY.replace("namespace: shop-prod}", f"namespace: shop-prod, canary: {canary}}}")
    with pytest.raises(DeployError) as info:
        parse_deploy_config(text)
    assert problem in str(info.value)
    assert "environments.prod.canary" in str(info.value)
    assert str(info.value).startswith("deploy.yaml:7:")


CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object}}
"""


def test_chart_crds_are_rendered_first_and_stay_cluster_scoped_when_allowed(example: Example) -> None:
    repo = example("hello")
    (repo / "charts" / "hello" / "crds").mkdir()
    (repo / "charts" / "hello" / "crds" / "widgets.yaml").write_text(CRD)
    objects = render(repo, "staging", "--allow-cluster-scoped", "CustomResourceDefinition")
    assert [o["kind"] for o in objects] == ["CustomResourceDefinition", "Service", "Deployment", "Ingress"]
    assert "namespace" not in objects[0]["metadata"]


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (
            "ClusterRoleBinding",
            "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}",
        ),
        ("Namespace", ""),
    ],
)
def test_cluster_scoped_objects_are_refused_unless_allowed(example: Example, kind: str, body: str) -> None:
    repo = example("hello")
    template = f"apiVersion: {'v1' if kind == 'Namespace' else 'rbac.authorization.k8s.io/v1'}\nkind: {kind}\n"
    (repo / "charts" / "hello" / "templates" / "escape.yaml").write_text(
        template + "metadata: {name: other-app}\n" + body
    )
    result = run_deployer("render", "--env", "staging", "--repo", repo, "--commit", COMMIT)
    assert result.code == 1
    assert result.err.splitlines() == [
        f"error: charts/hello/templates/escape.yaml: {kind}/other-app: a cluster-scoped {kind} is refused: a release "
        "stays in its namespace 'hello-staging' (an operator may allow the kind for this app: server.yaml "
        f"apps.APP.clusterScoped, or deployer --allow-cluster-scoped {kind})"
    ]


def test_a_helm_render_that_loops_is_killed_at_the_limit_and_leaves_no_helm(example: Example) -> None:
    repo = example("hello")
    loop = "{{- range $i := until 1000000 }}{{- range $j := until 1000000 }}{{- end }}{{- end }}\n"  # hours of work
    (repo / "charts" / "hello" / "templates" / "loop.yaml").write_text(loop)
    files = RepoFiles(repo)
    outcome: list[BaseException] = []

    def render() -> None:
        helm = Helm(timeout=1.0)
        try:
            asyncio.run(render_environment(repo=files, config=load_deploy_config(files), environment="prod",
                                           commit=COMMIT, helm=helm))  # fmt: skip
        except DeployError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=render, daemon=True)
    worker.start()
    worker.join(timeout=30)  # not a speed bound: a helm that is not killed renders for hours
    assert not worker.is_alive(), "the render did not end at its 1 s limit"
    assert [str(e) for e in outcome] == ["charts/hello: helm template took longer than 1s"]
    leftover = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and str(repo) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                leftover.append(proc.name)
    assert leftover == [], "no helm process is left rendering"


def test_helm_yaml_error_names_the_chart_file(example: Example) -> None:
    repo = example("hello")
    (repo / "charts" / "hello" / "templates" / "broken.yaml").write_text("apiVersion: v1\nkind: ConfigMap\ndata: [\n")
    result = run_deployer("render", "--env", "staging", "--repo", repo)
    assert result.code == 1
    assert result.error_line.startswith("error: charts/hello/templates/broken.yaml: helm template failed: invalid YAML")


def test_a_helm_render_that_takes_too_long_is_stopped() -> None:
    repo = RepoFiles(EXAMPLES / "hello")
    with pytest.raises(DeployError) as info:
        asyncio.run(
            render_environment(
                repo=repo, config=load_deploy_config(repo), environment="prod", commit=COMMIT, helm=Helm(timeout=0.001)
            )
        )
    assert str(info.value) == "charts/hello: helm template took longer than 0.001s"
