"""examples/hello through build and the canary, on real containers: the HTTP check reaches the canary through the
API server's pod proxy, a good change is promoted and a change that answers 500 is rolled back."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from kube_sandbox.testing import Running
from kubernetes import client
from routes import vs_split
from support import EXAMPLES, Registry, commit, edit, git, run_deployer

pytestmark = [
    pytest.mark.sandbox_only,  # the images live in a registry on the test machine's loopback
    pytest.mark.skipif(not shutil.which("buildah"), reason="buildah is installed by `make setup`"),
]


@pytest.fixture(scope="module")
def cluster(containers_cluster: Running) -> Running:
    return containers_cluster


@pytest.fixture
def namespace(mesh_namespace: str) -> str:
    """The app's namespace is in the mesh: its pods get sidecars."""
    return mesh_namespace


@pytest.fixture
def app(tmp_path: Path, registry: Registry, namespace: str) -> Path:
    """examples/hello as its own repository: staging in the test namespace, a 1s canary of one step."""
    repo = tmp_path / "hello"
    shutil.copytree(EXAMPLES / "hello", repo)
    edit(repo / "deploy.yaml", "repository: 127.0.0.1:5000/hello", f"repository: {registry.host}/hello")
    edit(repo / "deploy.yaml", "namespace: hello-staging", f"namespace: {namespace}")
    edit(
        repo / "deploy.yaml",
        "steps: [20, 50]\n      interval: 10s\n      threshold: 2",
        "steps: [50]\n      interval: 1s\n      threshold: 1\n      grace: 1500ms",
    )
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "hello")
    return repo


def build_and_deploy(app: Path, cluster: Running) -> tuple[int, str, str]:
    built = run_deployer("build", "--repo", app)
    assert built.code == 0, built.err
    image = built.out.strip().splitlines()[-1].removeprefix("image: ")
    result = run_deployer(
        "deploy",
        "--env",
        "staging",
        "--repo",
        app,
        "--kubeconfig",
        cluster.kubeconfig,
        "--image",
        image,
        "--rollout-timeout",
        "60",
    )
    return result.code, result.out, result.err


def through_mesh(cluster: Running, namespace: str, count: int = 20) -> set[tuple[int, str]]:
    """What a pod of the app's namespace gets from `hello`, once the last route change has propagated."""
    cluster.propagated()
    return set(cluster.send("hello", count, source=namespace))


def weights(api: client.ApiClient, namespace: str) -> list[int]:
    vs = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "networking.istio.io", "v1", namespace, "virtualservices", "hello"
    )
    return vs_split(vs)


def test_a_good_change_is_promoted_and_one_answering_500_is_rolled_back(
    cluster: Running, api: client.ApiClient, namespace: str, app: Path
) -> None:
    first = git(app, "rev-parse", "HEAD")
    code, out, err = build_and_deploy(app, cluster)
    assert code == 0, err
    assert through_mesh(cluster, namespace) == {(200, f"hello from {first}")}

    edit(app / "deploy.yaml", "GREETING: hello", "GREETING: howdy")
    second = commit(app, "howdy")
    code, out, err = build_and_deploy(app, cluster)
    assert code == 0, err
    assert "check homepage: ok HTTP 200" in out, out
    assert through_mesh(cluster, namespace) == {(200, f"howdy from {second}")}

    (app / "app" / "status").write_text("500\n")
    commit(app, "broken")
    code, out, err = build_and_deploy(app, cluster)
    assert code == 1
    assert "check homepage: FAILED HTTP 500" in out, out
    assert weights(api, namespace) == [100, 0]
    names = [d.metadata.name for d in client.AppsV1Api(api).list_namespaced_deployment(namespace).items]
    assert names == ["hello-primary"]
    assert through_mesh(cluster, namespace) == {(200, f"howdy from {second}")}
