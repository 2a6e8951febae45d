"""charts/deployer: lint, each environment's values rendered and validated against the Kubernetes schema, the
server config it mounts accepted by the server, and RBAC that grants exactly the API calls the code makes."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import ROOT

from deployer.config.server import parse_server_config, with_authorized_keys
from deployer.kube import client as kube_client
from deployer.render.manifests import parse_objects
from deployer.render.validate import validate_objects

HELM = str(ROOT / ".tools" / "bin" / "helm")
CHART = ROOT / "charts" / "deployer"
ENVIRONMENTS = ["staging", "prod"]

pytestmark = pytest.mark.skipif(not Path(HELM).exists(), reason="helm is installed by `make setup`")


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=False)


def template(*args: str) -> list[dict[str, Any]]:
    """`helm template` of the chart into namespace deployer, with `args` (values files, --set...)."""
    done = helm("template", "deployer", str(CHART), "-n", "deployer", *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def rendered(*values: str) -> list[dict[str, Any]]:
    return template(*(arg for v in values for arg in ("-f", str(ROOT / "environments" / f"{v}.yaml"))))


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_helm_lint_passes(environment: str) -> None:
    done = helm("lint", "--strict", str(CHART), "-f", str(ROOT / "environments" / f"{environment}.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_each_environment_renders_objects_valid_against_the_kubernetes_schema(environment: str) -> None:
    text = helm(
        "template", "deployer", str(CHART), "-n", "deployer", "-f", str(ROOT / "environments" / f"{environment}.yaml")
    )
    assert text.returncode == 0, text.stderr
    objects = [obj for doc in text.stdout.split("\n---\n") for obj in parse_objects(doc, source=f"{environment}")]
    unvalidated = validate_objects(objects)
    assert unvalidated == (["ServiceMonitor/deployer"] if environment == "prod" else [])  # a CRD: metadata only


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_the_mounted_server_config_is_one_the_server_accepts(environment: str) -> None:
    docs = rendered(environment)
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    secret = next(d for d in docs if d["kind"] == "Secret")
    config = parse_server_config(config_map["data"]["server.yaml"], source="server.yaml")
    files = {
        env: base64.b64decode(secret["data"][Path(path).name]).decode() for env, path in config.authorized_keys.items()
    }
    merged = with_authorized_keys(config, files)
    assert config.cluster.in_cluster and config.host_key == "/etc/deployer/secret/ssh_host_key"
    assert "alice" in merged.users and environment in merged.users["alice"].environments
    assert base64.b64decode(secret["data"]["ssh_host_key"]).startswith(b"-----BEGIN PRIVATE KEY-----")


def test_staging_and_prod_really_differ() -> None:
    staging, prod = (rendered(e) for e in ENVIRONMENTS)
    deployment = {
        name: next(d for d in docs if d["kind"] == "Deployment") for name, docs in (("s", staging), ("p", prod))
    }
    assert (deployment["s"]["spec"]["replicas"], deployment["p"]["spec"]["replicas"]) == (1, 2)
    assert deployment["p"]["spec"]["strategy"]["type"] == "RollingUpdate"
    configs = {
        name: parse_server_config(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["server.yaml"], source="s")
        for name, docs in (("s", staging), ("p", prod))
    }
    assert configs["s"].policy("staging").push_options == ["dry-run", "skip-canary", "async", "set"]
    assert configs["p"].policy("prod").push_options == ["dry-run"]
    assert list(configs["s"].authorized_keys) == ["staging"] and list(configs["p"].authorized_keys) == ["prod"]
    assert {d["kind"] for d in prod} - {d["kind"] for d in staging} == {"ServiceMonitor", "NetworkPolicy"}


def test_bad_values_are_refused_by_the_schema() -> None:
    done = helm("template", "deployer", str(CHART), "--set", "replicas=0", "--set", "apps.Bad_Name.environments.x=y")
    assert done.returncode != 0
    assert "/replicas" in done.stderr and "minimum" in done.stderr


# --- least privilege -------------------------------------------------------------------------------------------

# The adapters the server runs; kube/secrets.py is `deployer secret set`, run by a developer with their own rights.
# Every call goes through the verbs of kube/client.py, on a resource the code names by constant (LEASES, PODS, ...)
# or on one found by discovery (whatever kinds a release renders: kube/cluster.py's `resource`).
SERVER_ADAPTERS = [*sorted((ROOT / "deployer" / "kube").glob("*.py")), ROOT / "deployer" / "pipeline" / "ports.py"]
CLIENT_ONLY = {ROOT / "deployer" / "kube" / "secrets.py", ROOT / "deployer" / "kube" / "client.py"}
VERBS = {
    "read": ("get",),
    "list": ("list",),
    "create": ("create",),
    "replace": ("update",),
    "patch": ("patch",),
    "apply": ("create", "patch"),  # server-side apply creates or patches
    "delete": ("delete",),
    "watch": ("watch",),
    "log": ("get",),
    "stream_log": ("get",),
    "proxy": ("get",),
}
FOLLOW = re.compile(r"\bapi\.follow\(\s*([A-Z_]+)((?:[^()]|\([^()]*\))*)\)")
CALL = re.compile(r"\bapi\.(" + "|".join(VERBS) + r")\(\s*([A-Za-z_]+)\b")


def code_calls(adapters: list[Path] = SERVER_ADAPTERS) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every API call in the server's adapters, read from the source."""
    calls: set[tuple[str, str, str]] = set()
    managed = [
        (m["apiGroup"], r)
        for m in yaml.safe_load((CHART / "values.yaml").read_text())["managedResources"]
        for r in m["resources"]
    ]
    for path in adapters:
        if path in CLIENT_ONLY:
            continue
        source = path.read_text()
        for verb, target in CALL.findall(source):
            if target == "resource":  # found by discovery: any kind the chart lets releases manage
                calls |= {(group, plural, v) for group, plural in managed for v in VERBS[verb]}
                continue
            known = getattr(kube_client, target, None)
            assert isinstance(known, kube_client.Resource), (
                f"{path.name}: api.{verb}({target}) on a resource the test does not know"
            )
            calls |= {(*known.rbac, v) for v in VERBS[verb]}
        # follow(R, ..., read=S): reads S (or R itself), then watches R
        for target, args in FOLLOW.findall(source):
            known = getattr(kube_client, target)
            read = getattr(kube_client, m.group(1)) if (m := re.search(r"\bread=([A-Z_]+)", args)) else known
            calls |= {(*known.rbac, "watch"), (*read.rbac, "get")}
        assert ".request(" not in source, f"{path.name}: a raw request the test cannot read"
    return calls


def role_rules(docs: list[dict[str, Any]], *, builds: bool = False) -> set[tuple[str, str, str]]:
    roles = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-builds") == builds]
    assert roles
    granted = [
        {
            (group, resource, verb)
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        for role in roles
    ]
    assert all(g == granted[0] for g in granted), "every namespace gets the same Role"
    return granted[0]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_the_role_grants_exactly_the_api_calls_the_code_makes(environment: str) -> None:
    code = code_calls()
    granted = role_rules(rendered(environment))
    watched = {(g, r, "watch") for g, r, v in code if v == "watch"}
    assert code - granted == set(), f"the code calls what the Role does not grant: {sorted(code - granted)}"
    assert granted - code - watched == set(), f"the Role grants what the code never calls: {sorted(granted - code)}"
    assert ("coordination.k8s.io", "leases", "update") in code and ("", "pods/proxy", "get") in code


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_no_cluster_wide_rights_and_no_wildcards(environment: str) -> None:
    docs = rendered(environment)
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for role in (d for d in docs if d["kind"] == "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
    namespaces = {d["metadata"]["namespace"] for d in docs if d["kind"] in ("Role", "RoleBinding")}
    config = parse_server_config(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["server.yaml"], source="s")
    assert namespaces == {ns for app in config.apps.values() for ns in app.environments.values()}
    # each cluster's deployer binds its own environment only (Helm merges maps: no defaults may leak in)
    assert {env for app in config.apps.values() for env in app.environments} == {environment}
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert "docker.sock" not in yaml.safe_dump(deployment)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert not container["securityContext"].get("privileged")
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SETUID", "SETGID"]}
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_notifications_and_chart_registries_reach_the_server_config() -> None:
    target = {"name": "chat", "kind": "slack", "urlFrom": {"file": "/etc/deployer/notifications/slack-url"}}
    docs = template(
        "-f",
        str(ROOT / "environments" / "staging.yaml"),
        "--set-json",
        f"notifications=[{json.dumps(target)}]",
        "--set",
        "notificationSecret=deployer-notifications",
        "--set-json",
        'charts={"registries": ["registry.example.com"]}',
    )
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    config = parse_server_config(config_map["data"]["server.yaml"], source="server.yaml")
    assert [(n.name, n.kind, n.url_from.file if n.url_from else None) for n in config.notifications] == [
        ("chat", "slack", "/etc/deployer/notifications/slack-url")
    ]
    assert config.charts.registries == ["registry.example.com"]
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert {"name": "notifications", "mountPath": "/etc/deployer/notifications", "readOnly": True} in pod["containers"][
        0
    ]["volumeMounts"]
    assert {"name": "notifications", "secret": {"secretName": "deployer-notifications", "defaultMode": 0o400}} in pod[
        "volumes"
    ]


def test_environments_on_another_cluster_mount_its_kubeconfig_and_get_no_role_here() -> None:
    docs = template(
        "--set",
        "apps.hello.environments.staging=hello-staging",
        "--set",
        "apps.hello.environments.prod=hello",
        "--set",
        "apps.hello.clusters.prod=prod-eu",
        "--set",
        "clusters.prod-eu.kubeconfigSecret=deployer-prod-eu",
        "--set",
        "clusters.prod-eu.context=prod",
    )
    server = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["server.yaml"]
    config = parse_server_config(server, source="s")
    assert config.cluster_of("hello", "prod") == "prod-eu" and config.cluster_of("hello", "staging") is None
    assert config.clusters["prod-eu"].kubeconfig == "/etc/deployer/clusters/prod-eu/kubeconfig"
    assert config.clusters["prod-eu"].context == "prod"
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"} == {"hello-staging"}
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "cluster-prod-eu")
    assert volume["secret"]["secretName"] == "deployer-prod-eu" and volume["secret"]["defaultMode"] == 0o400
    mounts = pod["containers"][0]["volumeMounts"]
    assert {"name": "cluster-prod-eu", "mountPath": "/etc/deployer/clusters/prod-eu", "readOnly": True} in mounts


KANIKO = ("--set", "builder.kind=kaniko", "--set", "tls.secret=deployer-tls", "--set", "networkPolicy.enabled=true")


def test_the_kaniko_builder_runs_the_deployer_without_privileges_and_grants_builds_exactly_what_they_use() -> None:
    docs = template(
        "-f", str(ROOT / "environments" / "prod.yaml"), *KANIKO, "--set", "builder.kaniko.cache.repository=r/c"
    )
    assert "Unconfined" not in yaml.safe_dump_all(docs)
    config = parse_server_config(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["server.yaml"], source="s")
    assert (config.builder.kind, config.builder.namespace) == ("kaniko", "deployer-builds")
    assert config.builder.context_url == "https://deployer-http.deployer.svc:80"
    assert config.listen.tls is not None and config.listen.tls.cert_file == "/etc/deployer/tls/tls.crt"
    assert config.builder.cache is not None and config.builder.cache.repository == "r/c"
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert "env" not in container, "no buildah settings"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # the build namespace's Role is exactly what running build Jobs calls (kube/jobs.py), nothing more
    jobs = code_calls([ROOT / "deployer" / "kube" / "jobs.py"])
    assert role_rules(docs, builds=True) == jobs
    assert jobs == {
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("batch", "jobs", "watch"),
        ("batch", "jobs/status", "get"),
        ("", "pods", "list"),
        ("", "pods/log", "get"),
    }
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"].endswith("-builds")]
    assert binding["metadata"]["namespace"] == "deployer-builds"
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    policy = next(d for d in policies if d["metadata"].get("namespace") == "deployer-builds")
    assert policy["spec"]["ingress"] == [] and set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert [rule["ports"] for rule in policy["spec"]["egress"]] == [
        [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
        [{"port": 8080, "protocol": "TCP"}],
    ]
    objects = [obj for doc in docs for obj in parse_objects(yaml.safe_dump(doc), source="kaniko")]
    assert validate_objects(objects) == ["ServiceMonitor/deployer"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((), "builder.kind kaniko: build Jobs fetch their context over https"),
        (("--set", "builder.kaniko.contextUrl=http://deployer:8080"), "/builder/kaniko/contextUrl"),
    ],
)
def test_the_kaniko_builder_without_an_https_context_url_is_refused_at_render(
    extra: tuple[str, ...], message: str
) -> None:
    prod = str(ROOT / "environments" / "prod.yaml")
    done = helm(
        "template", "deployer", str(CHART), "-n", "deployer", "-f", prod, "--set", "builder.kind=kaniko", *extra
    )
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
