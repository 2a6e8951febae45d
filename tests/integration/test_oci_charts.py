"""Charts from OCI registries: `render.helm.chart: oci://...` with an exact version renders as the same chart in
the repository does; a version the registry lacks, or a chart without its version, is one line."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import EXAMPLES, Registry, edit, run_deployer, start_registry

from deployer.build.registry import RegistryClient
from deployer.errors import DeployError
from deployer.helm import Helm
from deployer.pipeline.charts import ChartRegistries

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry"), reason="docker-registry: make setup")
HELM = shutil.which("helm") or "helm"


def helm(*args: str | Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [HELM, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def charts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry holding examples/hello's chart as oci://HOST/charts/hello:0.1.0 (helm push)."""
    tmp = tmp_path_factory.mktemp("charts")
    registry = start_registry(tmp / "registry")
    helm("package", EXAMPLES / "hello" / "charts" / "hello", "-d", tmp)
    said = helm("push", tmp / "hello-0.1.0.tgz", f"oci://{registry.host}/charts", "--plain-http")
    assert "Digest: sha256:" in said
    yield registry
    registry.stop()


def from_registry(repo: Path, host: str, version: str = "0.1.0") -> Path:
    edit(
        repo / "deploy.yaml",
        "    chart: charts/hello\n",
        f"    chart: oci://{host}/charts/hello\n    version: {version}\n",
    )
    shutil.rmtree(repo / "charts")  # what renders comes from the registry
    return repo


def test_a_chart_from_a_registry_renders_as_the_chart_in_the_repo(
    charts: Registry, example: Callable[[str], Path], tmp_path: Path
) -> None:
    local = run_deployer("render", "--env", "prod", "--repo", example("hello"), "--commit", "a" * 40)
    assert local.code == 0, local.err
    repo = from_registry(shutil.copytree(EXAMPLES / "hello", tmp_path / "oci"), charts.host)
    pulled = run_deployer("render", "--env", "prod", "--repo", repo, "--commit", "a" * 40)
    assert pulled.code == 0, pulled.err
    assert pulled.out == local.out
    assert run_deployer("validate", "--repo", repo).code == 0


def test_a_version_the_registry_lacks_is_one_line(charts: Registry, example: Callable[[str], Path]) -> None:
    repo = from_registry(example("hello"), charts.host, version="9.9.9")
    result = run_deployer("render", "--env", "prod", "--repo", repo)
    assert result.code == 1
    assert result.error_line == (
        f"error: deploy.yaml: render.helm.version: oci://{charts.host}/charts/hello has no version 9.9.9"
    )


@pytest.mark.parametrize(
    ("chart", "why"),
    [
        ("    chart: oci://registry.example.com/charts/hello\n", "an oci:// chart needs its exact version"),
        ("    chart: charts/hello\n    version: 1.0.0\n", "version is for oci:// charts"),
        ("    chart: oci://registry.example.com/Charts/../x\n    version: 1.0.0\n", "is not a chart in a registry"),
    ],
)
def test_a_chart_reference_is_checked(example: Callable[[str], Path], chart: str, why: str) -> None:
    repo = example("hello")
    edit(repo / "deploy.yaml", "    chart: charts/hello\n", chart)
    result = run_deployer("validate", "--repo", repo)
    assert result.code == 1
    assert result.error_line.startswith("error: deploy.yaml:1") and "render.helm" in result.error_line
    assert why in result.error_line


COMMON = {
    "Chart.yaml": "apiVersion: v2\nname: common\nversion: 0.1.0\n",
    "values.yaml": "greeting: the dependency's own default\n",
    "templates/greeting.yaml": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: '{{ .Release.Name }}-greeting'}\n"
        "data: {greeting: {{ .Values.greeting | quote }}}\n"
    ),
}


@pytest.fixture(scope="module")
def common(charts: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A chart `common` pushed to the registry: the dependency of the next test's chart; its repository URL."""
    tmp = tmp_path_factory.mktemp("common")
    for name, text in COMMON.items():
        (tmp / "common" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "common" / name).write_text(text)
    helm("package", tmp / "common", "-d", tmp)
    helm("push", tmp / "common-0.1.0.tgz", f"oci://{charts.host}/library", "--plain-http")
    return f"oci://{charts.host}/library"


def test_a_chart_with_a_dependency_in_a_registry_renders_with_the_dependencys_values(
    common: str, example: Callable[[str], Path]
) -> None:
    repo = example("hello")
    chart = repo / "charts" / "hello"
    with (chart / "Chart.yaml").open("a") as meta:
        meta.write(f"dependencies:\n  - {{name: common, version: 0.1.0, repository: '{common}'}}\n")
    with (chart / "values.yaml").open("a") as values:
        values.write("common: {greeting: set by the app's chart}\n")
    helm("dependency", "update", chart, "--plain-http")  # as a developer does: Chart.lock is committed,
    shutil.rmtree(chart / "charts")  # charts/ is not
    result = run_deployer("render", "--env", "prod", "--repo", repo, "--output", "json")
    assert result.code == 0, result.err
    items = {(o["kind"], o["metadata"]["name"]): o for o in json.loads(result.out)["items"]}
    assert items[("ConfigMap", "hello-greeting")]["data"] == {"greeting": "set by the app's chart"}
    assert not (chart / "charts").exists()  # built in a copy: the repository is never written


@pytest.fixture(scope="module")
def chart_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A classic chart repository (index.yaml and packages, `helm repo index`) served over http on loopback."""
    root = tmp_path_factory.mktemp("repository")
    for name, text in COMMON.items():
        (root / "src" / "common" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "src" / "common" / name).write_text(text)
    (root / "site").mkdir()
    helm("package", root / "src" / "common", "-d", root / "site")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root / "site")))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    helm("repo", "index", root / "site", "--url", url)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield url
    server.shutdown()


def test_a_dependency_from_a_chart_repository_is_added_to_a_config_of_its_own(
    chart_repository: str, example: Callable[[str], Path], tmp_path: Path
) -> None:
    repo = example("hello")
    chart = repo / "charts" / "hello"
    with (chart / "Chart.yaml").open("a") as meta:
        meta.write(f"dependencies:\n  - {{name: common, version: 0.1.0, repository: '{chart_repository}'}}\n")
    home = tmp_path / "home"  # helm's own config for `dependency update`, as a developer has it
    env = {"HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache")}
    helm("repo", "add", "library", chart_repository, env=env)
    helm("dependency", "update", chart, env=env)
    shutil.rmtree(chart / "charts")
    result = run_deployer("render", "--env", "prod", "--repo", repo, "--output", "json")
    assert result.code == 0, result.err
    names = {o["metadata"]["name"] for o in json.loads(result.out)["items"]}
    assert "hello-greeting" in names
    assert not (chart / "charts").exists()


def test_a_dependency_that_is_neither_registry_nor_chart_repository_is_one_line(example: Callable[[str], Path]) -> None:
    repo = example("hello")
    with (repo / "charts" / "hello" / "Chart.yaml").open("a") as meta:
        meta.write("dependencies:\n  - {name: redis, version: 1.0.0, repository: 'http://charts.example.com'}\n")
    result = run_deployer("render", "--env", "prod", "--repo", repo)
    assert result.code == 1
    assert result.error_line == (
        "error: charts/hello/Chart.yaml: dependencies[0] (redis): 'http://charts.example.com' is not an oci:// "
        "registry or an https:// chart repository; vendor it in charts/ otherwise"
    )


def test_a_chart_repository_behind_basic_auth_is_reached_with_the_servers_credentials_for_its_host(
    example: Callable[[str], Path], tmp_path: Path
) -> None:
    """charts.authFile (a docker config.json) gives https:// chart repositories their credentials by host, as it
    gives oci:// registries theirs; without them, one line with helm's own words."""
    login = base64.b64encode(b"ci:s3cret-repo-password").decode()  # pragma: allowlist secret
    root = tmp_path / "repository"
    for name, text in COMMON.items():
        (root / "src" / "common" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "src" / "common" / name).write_text(text)
    (root / "site").mkdir()
    helm("package", root / "src" / "common", "-d", root / "site")

    class Guarded(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != f"Basic {login}":
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="charts"')
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Guarded, directory=str(root / "site")))
    host = f"127.0.0.1:{server.server_address[1]}"
    helm("repo", "index", root / "site", "--url", f"http://{host}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        chart = example("hello") / "charts" / "hello"
        with (chart / "Chart.yaml").open("a") as meta:
            meta.write(f"dependencies:\n  - {{name: common, version: 0.1.0, repository: 'http://{host}'}}\n")
        home = tmp_path / "home"  # the developer's own helm, logged in to the repository
        env = {"HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache")}
        helm(
            "repo",
            "add",
            "library",
            f"http://{host}",
            "--username",
            "ci",
            "--password",
            "s3cret-repo-password",
            env=env,
        )
        helm("dependency", "update", chart, env=env)
        shutil.rmtree(chart / "charts")
        auth = tmp_path / "auth.json"
        auth.write_text(json.dumps({"auths": {host: {"auth": login}}}))

        def build(registries: ChartRegistries) -> Path:
            scratch = Path(tempfile.mkdtemp(dir=tmp_path))
            return asyncio.run(
                registries.dependencies(Helm(timeout=60), chart, chart_label="charts/hello", scratch=scratch)
            )

        built = build(ChartRegistries(registry=RegistryClient(auth_file=auth), auth_file=auth))
        assert [p.name for p in (built / "charts").iterdir()] == ["common-0.1.0.tgz"]
        with pytest.raises(DeployError) as refused:
            build(ChartRegistries(registry=RegistryClient()))
        assert refused.value.where == "charts/hello/Chart.yaml"
        assert refused.value.message.startswith("helm repo add: ") and "401" in refused.value.message
        assert "s3cret" not in refused.value.message
    finally:
        server.shutdown()
