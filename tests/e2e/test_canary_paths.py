"""Canary v2 on real containers and the sandbox's Istio-like mesh (1 s route propagation): every path traffic takes
follows the weights or reaches stable only, a chart's gateway VirtualService is adopted, the canary reads its
own config, and promotion and abort under steady traffic fail no request."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube_sandbox.testing import Running
from kube_sandbox.testing.workloads import BROKEN, apply, ready_pods
from kubernetes import client
from routes import routed, vs_split
from support import edit, run_deployer

pytestmark = [
    pytest.mark.sandbox_only,  # the sandbox's mesh answers who served each request
    pytest.mark.skipif(
        not (shutil.which("dockerd") and shutil.which("docker-registry")),
        reason="dockerd and docker-registry are installed by `make setup`",
    ),
]
GATEWAY = "istio-system/istio-ingressgateway"
SERVE = "mkdir -p /tmp/www && echo $VERSION > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"

DEPLOY = """\
app: web
image: {{repository: 127.0.0.1:5000/web}}
render: {{templates: {{dir: templates}}}}
environments:
  test:
    branches: [main]
    namespace: {namespace}
    values: [values.yaml]
    canary:
      steps: [10]
      interval: 2m
      threshold: 1
      grace: 2s
      gateways: [{gateway}]
      hosts: [web-direct.example.test]
"""

TEMPLATES = {
    "config.yaml.j2": """\
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {VERSION: "{{ values.version }}"}
""",
    "deployment.yaml.j2": """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: "{{ values.image }}"  # busybox from the test registry, whatever the release's tag
        command: {{ ["sh", "-c", values.command] | to_json }}
        env: [{name: VERSION, valueFrom: {configMapKeyRef: {name: web-config, key: VERSION}}}]
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
""",
    "service.yaml.j2": """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
""",
    "public.yaml.j2": """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web-public}
spec:
  hosts: [web.example.test]
  gateways: [GATEWAY]
  http:
  - match: [{uri: {prefix: /}}]
    timeout: 5s
    route: [{destination: {host: web, port: {number: 80}}}]
""".replace("GATEWAY", GATEWAY),
    "ingress.yaml.j2": """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  ingressClassName: istio
  rules:
  - host: web-ingress.example.test
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
""",
}


@pytest.fixture(scope="module")
def cluster(containers_cluster: Running) -> Running:
    return containers_cluster


@pytest.fixture
def app(tmp_path: Path, mesh_namespace: str, busybox: str) -> Path:
    repo = tmp_path / "web"
    (repo / "templates").mkdir(parents=True)
    (repo / "deploy.yaml").write_text(DEPLOY.format(namespace=mesh_namespace, gateway=GATEWAY))
    (repo / "values.yaml").write_text(yaml.safe_dump({"image": busybox, "version": "v1", "command": SERVE}))
    (repo / "Dockerfile").write_text("FROM scratch\n")
    for name, text in TEMPLATES.items():
        (repo / "templates" / name).write_text(text)
    return repo


def deploy_args(app: Path, cluster: Running, image: str) -> list[str]:
    return [
        "deploy",
        "--env",
        "test",
        "--repo",
        str(app),
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--image",
        image,
        "--rollout-timeout",
        "60",
    ]


def start(app: Path, cluster: Running, image: str) -> subprocess.Popen[str]:
    exe = shutil.which("deployer", path=str(Path(sys.executable).parent)) or "deployer"
    return subprocess.Popen(
        [exe, *deploy_args(app, cluster, image), "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], message: str) -> list[str]:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(json.loads(line)["message"])
        if seen[-1] == message:
            return seen
    raise AssertionError(f"never saw {message!r}: {seen} {proc.stderr.read() if proc.stderr else ''}")


def versions(answers: list[tuple[int, str]]) -> Counter[str]:
    return Counter(body.strip() if status == 200 else f"{status} {body.strip()}" for status, body in answers)


def within(count: int, total: int, share: float) -> bool:
    """`count` of `total` is within the two-sided 99.9% binomial bound of `share` (at 99%, the suite's dozen such
    assertions fail a correct run one time in ten)."""
    mean, sd = total * share, math.sqrt(total * share * (1 - share))
    return mean - 3.291 * sd <= count <= mean + 3.291 * sd


class Steady:
    """Requests through the gateway and from a mesh client, back to back, until stopped: what failed."""

    def __init__(self, cluster: Running, namespace: str, *, every_path: bool = False) -> None:
        self.cluster, self.namespace, self.every_path = cluster, namespace, every_path
        self.answers: Counter[str] = Counter()
        self.batches: list[tuple[float, Counter[str]]] = []  # when each batch of requests had its last answer
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        paths: list[tuple[str, int, dict[str, Any]]] = [
            ("web.example.test", 10, {}),
            ("web", 10, {"source": self.namespace}),
        ]
        if self.every_path:  # the environment's host, the Kubernetes Ingress, a pod without a sidecar
            paths += [
                ("web-direct.example.test", 5, {}),
                ("web-ingress.example.test", 5, {}),
                ("web", 5, {"source": self.namespace, "sidecar": False}),
            ]
        while not self.stopped.is_set():
            for host, count, how in paths:
                batch = versions(self.cluster.send(host, count, **how))
                self.answers += batch
                self.batches.append((time.monotonic(), batch))

    def __enter__(self) -> Steady:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=60)

    def failed(self) -> dict[str, int]:
        return {k: n for k, n in self.answers.items() if not k.startswith("v")}


@pytest.fixture
def first(app: Path, cluster: Running, busybox: str, mesh_namespace: str) -> Iterator[str]:
    """v1 live, through the deployer's first release."""
    result = run_deployer(*deploy_args(app, cluster, busybox))
    assert result.code == 0, result.err
    cluster.propagated()
    assert versions(cluster.send("web.example.test", 10)) == {"v1": 10}
    yield busybox


def test_at_10_percent_the_mesh_and_the_gateways_follow_the_weights_and_other_paths_reach_stable_only(
    app: Path, cluster: Running, api: client.ApiClient, mesh_namespace: str, first: str
) -> None:
    ns = mesh_namespace
    edit(app / "values.yaml", "version: v1", "version: v2")  # a config-only change goes through the canary
    proc = start(app, cluster, first)
    try:
        read_until(proc, "weights stable 90% / canary 10%")
        cluster.propagated()
        gateway = versions(cluster.send("web.example.test", 1000))
        direct = versions(cluster.send("web-direct.example.test", 500))
        mesh = versions(cluster.send("web", 1000, source=ns))
        ingress = versions(cluster.send("web-ingress.example.test", 300))
        plain = versions(cluster.send("web", 300, source=ns, sidecar=False))
        assert set(gateway) == {"v1", "v2"} and within(gateway["v2"], 1000, 0.1), gateway
        assert set(direct) == {"v1", "v2"} and within(direct["v2"], 500, 0.1), direct
        assert set(mesh) == {"v1", "v2"} and within(mesh["v2"], 1000, 0.1), mesh
        assert ingress == {"v1": 300}, "a Kubernetes Ingress does not pass through the routes: stable only"
        assert plain == {"v1": 300}, "a pod without a sidecar reaches the Service's endpoints: stable only"
        public = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "networking.istio.io", "v1", ns, "virtualservices", "web-public"
        )
        assert public["spec"]["gateways"] == [GATEWAY], "the chart's VirtualService keeps its gateway"
        assert routed(public)["timeout"] == "5s"
        assert vs_split(public) == [90, 10]
        assert run_deployer("promote", "--env", "test", "--repo", app, "--kubeconfig", cluster.kubeconfig).code == 0
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
    cluster.propagated()
    assert versions(cluster.send("web.example.test", 50)) == {"v2": 50}
    names = sorted(d.metadata.name for d in client.AppsV1Api(api).list_namespaced_deployment(ns).items)
    assert names == ["web-primary"], "the canary is gone after promotion"
    configs = sorted(c.metadata.name for c in client.CoreV1Api(api).list_namespaced_config_map(ns).items)
    assert "web-config-canary" not in configs, "the canary's config copy is gone too"
    public = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "networking.istio.io", "v1", ns, "virtualservices", "web-public"
    )
    assert public["spec"]["gateways"] == [GATEWAY] and vs_split(public) == [100, 0]


def test_no_path_reaches_the_canary_before_its_first_weight(
    app: Path, cluster: Running, mesh_namespace: str, first: str
) -> None:
    """From the push to the first weight, while the canary's pods start and become ready: every path (gateway,
    the environment's host, the mesh, a Kubernetes Ingress, a pod without a sidecar) reaches stable only."""
    edit(app / "values.yaml", "version: v1", "version: v2")
    edit(app / "deploy.yaml", "interval: 2m", "interval: 3s")
    with Steady(cluster, mesh_namespace, every_path=True) as steady:
        proc = start(app, cluster, first)
        try:
            read_until(proc, "weights stable 90% / canary 10%")
            weighted = time.monotonic()  # routes reach the proxies a propagation delay later: nothing before
            assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            proc.kill()
    before = sum((batch for ended, batch in steady.batches if ended < weighted), Counter())
    assert before["v1"] > 50 and "v2" not in before, before
    assert steady.failed() == {}, steady.answers
    assert steady.answers["v2"] > 0, "the canary did get traffic once weighted"


@pytest.mark.parametrize(("command", "code", "after"), [("promote", 0, "v2"), ("abort", 1, "v1")])
def test_promotion_and_abort_under_steady_traffic_fail_no_request(
    app: Path, cluster: Running, mesh_namespace: str, first: str, command: str, code: int, after: str
) -> None:
    edit(app / "values.yaml", "version: v1", "version: v2")
    edit(app / "deploy.yaml", "interval: 2m", "interval: 10s")  # a request is taken up when the interval ends
    proc = start(app, cluster, first)
    try:
        read_until(proc, "weights stable 90% / canary 10%")
        with Steady(cluster, mesh_namespace) as steady:
            cluster.propagated()
            asked = run_deployer(command, "--env", "test", "--repo", app, "--kubeconfig", cluster.kubeconfig)
            assert asked.code == 0, asked.err
            assert proc.wait(timeout=120) == code, proc.stderr.read() if proc.stderr else ""
            cluster.propagated()
        assert steady.failed() == {}, steady.answers
        assert steady.answers["v2"] > 0 and steady.answers["v1"] > 0, steady.answers
    finally:
        proc.kill()
    assert versions(cluster.send("web.example.test", 50)) == {after: 50}


def test_under_strict_mtls_http_checks_reach_the_canary_through_the_gateway(
    app: Path, cluster: Running, api: client.ApiClient, mesh_namespace: str, first: str
) -> None:
    """The pod proxy is plaintext from outside the mesh, which a STRICT sidecar resets: the checks go through the
    ingress gateway instead, pinned to the canary by a header, and still tell a good canary from a broken one."""
    apply(cluster, mesh_namespace, [PEER_AUTHENTICATION])
    edit(app / "deploy.yaml", "interval: 2m", "interval: 1s")
    edit(
        app / "deploy.yaml",
        "      hosts: [web-direct.example.test]\n",
        "      hosts: [web-direct.example.test]\n"
        "      checks: [{name: homepage, retries: 0, http: {path: /, port: 8080}}]\n",
    )
    gateway = ["--mesh-gateway", cluster.info()["gateway"]]
    edit(app / "values.yaml", "version: v1", "version: v2")
    good = run_deployer(*deploy_args(app, cluster, first), *gateway)
    assert good.code == 0, good.err
    assert "check homepage: ok HTTP 200" in good.out
    without = run_deployer(*deploy_args(app, cluster, first))  # the same change again, through the pod proxy
    assert without.code == 1
    assert "homepage: " in without.err and "HTTP 200" not in without.err, "STRICT mTLS resets the pod proxy"
    assert "give the server a way into the mesh (meshClient, or meshGateway" in without.err
    values = yaml.safe_load((app / "values.yaml").read_text())
    (app / "values.yaml").write_text(yaml.safe_dump({**values, "version": "v3", "command": BROKEN}))
    broken = run_deployer(*deploy_args(app, cluster, first), *gateway)
    assert broken.code == 1
    assert "homepage: HTTP 500" in broken.err and "expected 200" in broken.err
    cluster.propagated()
    assert versions(cluster.send("web.example.test", 20)) == {"v2": 20}


def test_under_strict_mtls_a_mesh_only_environment_is_checked_from_inside_the_mesh(
    app: Path, cluster: Running, mesh_namespace: str, first: str
) -> None:
    """An environment that names no gateway: the deployer, a client of the mesh (here through the sandbox's
    client port as an HTTP proxy, as a pod of the namespace; on a cluster, `direct` from a pod with a sidecar),
    sends the checks to the Service's host with the header that pins the canary: mTLS all the way."""
    apply(cluster, mesh_namespace, [PEER_AUTHENTICATION])
    edit(app / "deploy.yaml", f"      gateways: [{GATEWAY}]\n      hosts: [web-direct.example.test]\n", "")
    edit(app / "deploy.yaml", "interval: 2m", "interval: 1s")
    edit(
        app / "deploy.yaml",
        "      grace: 2s\n",
        "      grace: 2s\n      checks: [{name: homepage, retries: 0, http: {path: /, port: 8080}}]\n",
    )
    client = ["--mesh-client", cluster.info()["clients"].replace("http://", f"http://{mesh_namespace}@")]
    edit(app / "values.yaml", "version: v1", "version: v2")
    good = run_deployer(*deploy_args(app, cluster, first), *client)
    assert good.code == 0, good.err
    assert "check homepage: ok HTTP 200" in good.out
    values = yaml.safe_load((app / "values.yaml").read_text())
    (app / "values.yaml").write_text(yaml.safe_dump({**values, "version": "v3", "command": BROKEN}))
    broken = run_deployer(*deploy_args(app, cluster, first), *client)
    assert broken.code == 1
    assert "homepage: HTTP 500" in broken.err and "expected 200" in broken.err
    cluster.propagated()
    assert versions(cluster.send("web", 20, source=mesh_namespace)) == {"v2": 20}


PEER_AUTHENTICATION = {
    "apiVersion": "security.istio.io/v1",
    "kind": "PeerAuthentication",
    "metadata": {"name": "default"},
    "spec": {"mtls": {"mode": "STRICT"}},
}


def test_adopting_an_app_kubectl_deployed_fails_no_request_and_deletes_nothing(
    app: Path, cluster: Running, api: client.ApiClient, mesh_namespace: str, busybox: str
) -> None:
    """The same objects applied by kubectl first (Deployment `web`, Service `web`, the chart's VirtualService):
    the first release moves the traffic to `web-primary` under steady traffic, and scales kubectl's `web` to
    zero without deleting it or touching its selector."""
    rendered = run_deployer("render", "--env", "test", "--repo", app, "--commit", "v1")
    assert rendered.code == 0, rendered.err
    apply(cluster, mesh_namespace, list(yaml.safe_load_all(rendered.out)))
    ready_pods(api, mesh_namespace, "app=web", 2)
    cluster.propagated()
    assert versions(cluster.send("web.example.test", 10)) == {"v1": 10}
    with Steady(cluster, mesh_namespace) as steady:
        result = run_deployer(*deploy_args(app, cluster, busybox))
        assert result.code == 0, result.err
        cluster.propagated()
    assert steady.failed() == {}, steady.answers
    assert steady.answers["v1"] > 0, steady.answers
    kubectls = client.AppsV1Api(api).read_namespaced_deployment("web", mesh_namespace)
    assert (kubectls.spec.replicas, kubectls.spec.selector.match_labels) == (0, {"app": "web"})
    service = client.CoreV1Api(api).read_namespaced_service("web", mesh_namespace)
    assert service.spec.selector == {"app": "web", "deployer.dev/track": "primary"}


HELM = Path(__file__).resolve().parents[2] / ".tools" / "bin" / "helm"


def as_chart(app: Path) -> Path:
    """The same app as a Helm chart: the templates with Helm's syntax, rendered by the deployer through helm."""
    chart = app / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: web\nversion: 0.1.0\n")
    helm_syntax = {
        "{{ values.version }}": "{{ .Values.version }}",
        '"{{ values.image }}"': "{{ .Values.image | quote }}",
        '{{ ["sh", "-c", values.command] | to_json }}': '{{ list "sh" "-c" .Values.command | toJson }}',
    }
    for name, jinja in TEMPLATES.items():
        text = jinja
        for old, new in helm_syntax.items():
            text = text.replace(old, new)
        (chart / "templates" / name.removesuffix(".j2")).write_text(text)
    edit(app / "deploy.yaml", "render: {templates: {dir: templates}}", "render: {helm: {chart: chart}}")
    return chart


@pytest.mark.skipif(not HELM.exists(), reason="helm is installed by `make setup`")
def test_adopting_an_app_helm_installed_and_switching_the_canary_off_and_on_fail_no_request(
    app: Path, cluster: Running, api: client.ApiClient, mesh_namespace: str, busybox: str
) -> None:
    """`helm install` first; then the deployer's first release, a release with `canary: false`, and a canary
    release again, all under steady traffic: no request fails, and neither helm's Deployment nor its Service is
    ever deleted (the same objects, by uid, at the end)."""
    ns = mesh_namespace
    chart = as_chart(app)
    edit(app / "deploy.yaml", "interval: 2m", "interval: 1s")
    installed = subprocess.run(
        [
            str(HELM),
            "install",
            "web",
            str(chart),
            "-n",
            ns,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "-f",
            str(app / "values.yaml"),
            "--wait",
            "--timeout",
            "60s",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stderr
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    uids = (
        apps.read_namespaced_deployment("web", ns).metadata.uid,
        core.read_namespaced_service("web", ns).metadata.uid,
    )
    cluster.propagated()
    assert versions(cluster.send("web.example.test", 10)) == {"v1": 10}
    with Steady(cluster, ns) as steady:
        adopted = run_deployer(*deploy_args(app, cluster, busybox))
        assert adopted.code == 0, adopted.err
        cluster.propagated()
        edit(app / "deploy.yaml", "      steps: [10]", "      enabled: false\n      steps: [10]")
        off = run_deployer(*deploy_args(app, cluster, busybox))
        assert off.code == 0, off.err
        cluster.propagated()
        edit(app / "deploy.yaml", "      enabled: false\n", "")
        edit(app / "values.yaml", "version: v1", "version: v2")
        on = run_deployer(*deploy_args(app, cluster, busybox))
        assert on.code == 0, on.err
        assert "weights stable 90% / canary 10%" in on.out + on.err
        cluster.propagated()
    assert steady.failed() == {}, steady.answers
    assert steady.answers["v1"] > 0 and steady.answers["v2"] > 0, steady.answers
    assert (
        apps.read_namespaced_deployment("web", ns).metadata.uid,
        core.read_namespaced_service("web", ns).metadata.uid,
    ) == uids
    assert versions(cluster.send("web.example.test", 20)) == {"v2": 20}
