"""The kaniko builder's pure parts: the build Job (kaniko's own flags only, no privileges it does not need), the
one-time build contexts the deployer serves, and server.yaml's `builder: {kind: kaniko}`."""

from __future__ import annotations

import asyncio
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from test_server_config import SERVER

from deployer.build import BuildRequest
from deployer.build.kaniko import CAPABILITIES, OUTSIDE_DOCKERFILE, BuildContexts, KanikoSettings, kaniko_job
from deployer.config.server import parse_server_config
from deployer.errors import DeployError

FLAGS = {
    line.strip()
    for line in (Path(__file__).with_name("kaniko_flags.txt")).read_text().splitlines()
    if line.startswith("--")
}
SHA = "0123456789abcdef0123456789abcdef01234567"


def request(context: Path, dockerfile: Path | None = None) -> BuildRequest:
    return BuildRequest(
        context=context,
        dockerfile=dockerfile or context / "Dockerfile",
        image=f"registry.example.com/hello:{SHA}",
        args={"GIT_COMMIT": SHA},
        secret_args={"TOKEN": "s3cr3t"},
        insecure=True,
    )


def test_every_argument_of_the_build_job_is_a_flag_kaniko_defines(tmp_path: Path) -> None:
    settings = KanikoSettings(namespace="builds", cache_repository="registry.example.com/cache", context_ca="ca")
    job = kaniko_job(request(tmp_path), context_uri="https://deployer/build-context/t.tar.gz", settings=settings)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--cache-repo=registry.example.com/cache" in args
    for arg in args:
        assert arg.split("=", 1)[0] in FLAGS, f"{arg}: not a flag of kaniko's executor v1.24.0"
    assert "--snapshot-mode=redo" in args  # one of full, redo, time (cmd/executor/cmd/root.go)


def test_the_build_job_has_no_token_no_privilege_and_limits(tmp_path: Path) -> None:
    settings = KanikoSettings(
        namespace="builds",
        registry_secret="regcred",
        context_ca="deployer-ca",
        limits={"cpu": "2", "memory": "2048Mi"},
        timeout=600,
        ttl=120,
    )
    job = kaniko_job(request(tmp_path), context_uri="https://d/x.tar.gz", settings=settings)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert (spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"], spec["backoffLimit"]) == (600, 120, 0)
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) == set(CAPABILITIES)
    assert not {"SYS_ADMIN", "NET_ADMIN", "NET_RAW", "SYS_CHROOT", "MKNOD"} & set(CAPABILITIES)
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "2048Mi"},
    }
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["registry-auth"]["mountPath"] == "/kaniko/.docker"
    assert mounts["context-ca"] == {
        "name": "context-ca",
        "mountPath": "/kaniko/ssl/certs/deployer-context-ca.crt",  # beside kaniko's own roots, not over them
        "subPath": "ca.crt",
        "readOnly": True,
    }
    labels = spec["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "build"  # what the chart's NetworkPolicy selects


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()}  # type: ignore[union-attr]


def test_a_context_is_served_once_to_its_own_token_and_nothing_else(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for tree, text in ((first, "one"), (second, "two")):
        (tree / "www").mkdir(parents=True)
        (tree / "www" / "index.html").write_text(text)
        (tree / "Dockerfile").write_text("FROM scratch\n")
    contexts = BuildContexts(tmp_path / "served", base_url="https://deployer.example.com/")

    async def publish() -> tuple[tuple[str, str, str], tuple[str, str, str]]:
        return await contexts.publish(request(first), what="a"), await contexts.publish(request(second), what="b")

    (token_a, url_a, dockerfile_a), (token_b, _, _) = asyncio.run(publish())
    assert url_a == f"https://deployer.example.com/build-context/{token_a}.tar.gz" and dockerfile_a == "Dockerfile"
    assert token_a not in str(list((tmp_path / "served").iterdir())), "no token names a file"
    found = contexts.take(token_b)
    assert found is not None
    assert _members(found[0].read_bytes())["www/index.html"] == b"two", "a token gives its own commit's tree"
    assert contexts.take(token_b) is None, "once"
    assert contexts.take("x" * 43) is None and contexts.take("") is None
    found = contexts.take(token_a)
    assert found is not None and _members(found[0].read_bytes())["www/index.html"] == b"one"
    contexts.drop(token_a)
    assert not found[0].exists(), "dropped when the build ends"


def test_a_context_expires_and_packs_the_same_bytes_for_the_same_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "app").mkdir(parents=True)
    (tree / "app" / "run.sh").write_text("echo hi\n")
    outside = tmp_path / "docker" / "Dockerfile"
    outside.parent.mkdir()
    outside.write_text("FROM scratch\nCOPY app /app\n")
    expired = BuildContexts(tmp_path / "x", base_url="https://d", lifetime=0)
    token, _, dockerfile = asyncio.run(expired.publish(request(tree, outside), what="a"))
    assert dockerfile == OUTSIDE_DOCKERFILE
    assert expired.take(token) is None, "past its lifetime"
    contexts = BuildContexts(tmp_path / "y", base_url="https://d")
    digests = []
    for _ in range(2):
        token, _, _ = asyncio.run(contexts.publish(request(tree, outside), what="a"))
        found = contexts.take(token)
        assert found is not None
        data = found[0].read_bytes()
        digests.append(hashlib.sha256(data).hexdigest())
        members = _members(data)
        assert members[OUTSIDE_DOCKERFILE] == outside.read_bytes()
        assert members["app/run.sh"] == b"echo hi\n"
    assert digests[0] == digests[1]


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        ("{kind: kaniko, contextUrl: 'https://d'}", "builder.namespace is needed with kind: kaniko"),
        ("{kind: kaniko, namespace: builds}", "builder.contextUrl is needed with kind: kaniko"),
        ("{kind: kaniko, namespace: builds, contextUrl: 'http://d:8080'}", "builder.contextUrl: String should match"),
        ("{kind: buildah, namespace: builds}", "builder.namespace is for kind: kaniko (this builder is 'buildah')"),
        ("{kind: buildah, contextUrl: 'https://d'}", "builder.contextUrl is for kind: kaniko"),
        (
            "{kind: kaniko, namespace: builds, contextUrl: 'https://d', cluster: east}",
            "builder.cluster: no cluster 'east' in 'clusters' (it has: none)",
        ),
    ],
)
def test_server_yaml_kaniko_builder_is_checked(builder: str, message: str) -> None:
    with pytest.raises(DeployError) as caught:
        parse_server_config(SERVER + f"builder: {builder}\n", source="server.yaml")
    assert message in str(caught.value), str(caught.value)


def test_server_yaml_kaniko_builder_is_accepted() -> None:
    text = SERVER + (
        "builder: {kind: kaniko, namespace: builds, contextUrl: 'https://deployer.example.com', maxConcurrent: 8,\n"
        "  cache: {repository: registry.example.com:5000/cache}, resources: {limits: {memory: 4Gi}}}\n"
    )
    config = parse_server_config(text, source="server.yaml")
    assert config.builder.max_concurrent == 8 and config.builder.cache is not None


def test_any_replica_sharing_the_data_directory_serves_a_context_once(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "Dockerfile").write_text("FROM scratch\n")
    shared = tmp_path / "data" / "build-contexts"
    first = BuildContexts(shared, base_url="https://deployer")
    second = BuildContexts(shared, base_url="https://deployer")  # another replica, the same volume
    token, _, _ = asyncio.run(first.publish(request(tree), what="hello@abc"))
    second.clear_directory()  # a replica starting: others' live contexts stay
    second.clear()  # a replica stopping: only its own go
    found = second.take(token)
    assert found is not None and found[1] == "hello@abc", "the replica a Job's request reaches serves it"
    assert first.take(token) is None and second.take(token) is None, "once, whichever replica is asked"
    for made_up in ("../../server.yaml", "a/b", "x" * 43):
        assert second.take(made_up) is None
    first.drop(token)
    assert list(shared.iterdir()) == []
    expired = BuildContexts(shared, base_url="https://deployer", lifetime=0)
    asyncio.run(expired.publish(request(tree), what="old"))
    first.clear_directory()
    assert list(shared.iterdir()) == [], "a context past its lifetime is removed at start"
