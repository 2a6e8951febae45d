"""Charts from OCI registries: `render.helm.chart: oci://...` with an exact version renders as the same chart in
the repository does; a version the registry lacks, or a chart without its version, is one line."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import EXAMPLES, Registry, edit, run_deployer, start_registry

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry"), reason="docker-registry: make setup")
HELM = shutil.which("helm") or "helm"


def helm(*args: str | Path) -> str:
    done = subprocess.run([HELM, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)
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
