"""The kube adapter's asyncio client (deployer/kube/client.py) against small apiservers of the test's own: TLS with
a CA and a client certificate (made with openssl), exec credential plugins, kubeconfig merging as kubectl does
it, Status errors, and watch streams (long lines, ERROR events). The sandbox suites use it for everything else.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from deployer.errors import DeployError
from deployer.kube.client import DEPLOYMENTS, SECRETS, ApiError, connect, load_credentials
from deployer.kube.cluster import Kube


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate for `alice`, all signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    for name, subject, extension in (
        ("server", "/CN=apiserver", "subjectAltName=IP:127.0.0.1"),
        ("client", "/CN=alice/O=devs", "extendedKeyUsage=clientAuth"),
    ):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject, cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


Handler = Callable[[web.Request], Any]


@asynccontextmanager
async def apiserver(routes: dict[str, Handler], *, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def kubeconfig(path: Path, server: str, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": server, **(cluster or {})}}],
                "users": [{"name": "test", "user": user}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "apps"}}],
            }
        )
    )
    return path


def secret(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "apps"}}


def test_tls_with_the_kubeconfigs_ca_and_client_certificate(pki: Path, tmp_path: Path) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    tls.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    tls.verify_mode = ssl.CERT_REQUIRED  # kube-apiserver's --client-ca-file

    async def read(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in (peer or {}).get("subject", ()))
        return web.json_response({**secret(request.match_info["name"]), "data": {"user": subject.get("commonName")}})

    def data(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    async def scenario() -> list[Any]:
        async with apiserver({"/api/v1/namespaces/apps/secrets/{name}": read}, tls=tls) as url:
            inline = kubeconfig(
                tmp_path / "inline",
                url,
                {"client-certificate-data": data("client.crt"), "client-key-data": data("client.key")},
                {"certificate-authority-data": data("ca.crt")},
            )
            (tmp_path / "files").mkdir()
            for name in ("ca.crt", "client.crt", "client.key"):
                (tmp_path / "files" / name).write_bytes((pki / name).read_bytes())
            relative = kubeconfig(  # paths relative to the kubeconfig's own directory, as kubectl reads them
                tmp_path / "files" / "config",
                url,
                {"client-certificate": "client.crt", "client-key": "client.key"},
                {"certificate-authority": "ca.crt"},
            )
            untrusted = kubeconfig(tmp_path / "untrusted", url, {"token": "t"})
            found = []
            for path in (inline, relative):
                async with connect(path) as api:
                    found.append((await api.read(SECRETS, "apps", "s1"))["data"]["user"])
            async with connect(untrusted) as api:
                with pytest.raises(DeployError) as refused:
                    await api.read(SECRETS, "apps", "s1")
            found.append(str(refused.value))
            return found

    inline_user, relative_user, refusal = asyncio.run(scenario())
    assert (inline_user, relative_user) == ("alice", "alice")
    assert refusal.startswith("cluster: TLS to https://127.0.0.1:") and "certificate verify failed" in refusal, refusal


def test_an_exec_plugin_runs_once_until_its_token_expires(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, os, sys\n"
        f"open({str(runs)!r}, 'a').write(os.environ['KUBERNETES_EXEC_INFO'] + '\\n')\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',\n"
        "  'status': {'token': 'from-' + sys.argv[1], 'expirationTimestamp': '2999-01-01T00:00:00Z'}}))\n"
    )
    seen: list[str] = []

    async def read(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response(secret(request.match_info["name"]))

    async def scenario() -> None:
        async with apiserver({"/api/v1/namespaces/apps/secrets/{name}": read}) as url:
            exec_user = {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": sys.executable,
                    "args": [str(plugin), "plugin"],
                    "interactiveMode": "Never",
                }
            }
            async with connect(kubeconfig(tmp_path / "config", url, exec_user)) as api:
                for name in ("a", "b", "c"):
                    await api.read(SECRETS, "apps", name)

    asyncio.run(scenario())
    assert seen == ["Bearer from-plugin"] * 3
    (info,) = runs.read_text().splitlines()
    assert json.loads(info) == {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "spec": {"interactive": False},
    }


def test_kubeconfig_files_merge_as_kubectl_merges_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = kubeconfig(tmp_path / "first", "http://127.0.0.1:1", {"token": "first"})
    second = yaml.safe_load(kubeconfig(tmp_path / "second", "http://127.0.0.1:2", {"token": "second"}).read_text())
    second["current-context"] = "other"
    second["contexts"].append({"name": "other", "context": {"cluster": "test", "user": "test"}})
    (tmp_path / "second").write_text(yaml.safe_dump(second))
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'missing'}:{tmp_path / 'second'}")
    merged = load_credentials()
    # the first file's current-context, cluster and user win; a context only the second has is still found
    assert (merged.server, merged.token, merged.namespace) == ("http://127.0.0.1:1", "first", "apps")
    other = load_credentials(context="other")
    assert (other.server, other.token, other.namespace) == ("http://127.0.0.1:1", "first", "default")


@pytest.mark.parametrize(
    ("user", "context", "message"),
    [
        ({"auth-provider": {"name": "oidc"}}, None, "uses an auth-provider plugin, which kubectl removed in 1.26"),
        ({"token": "t"}, "nowhere", "cannot load the cluster configuration: no context 'nowhere'"),
    ],
)
def test_kubeconfigs_that_cannot_work_get_one_line(
    tmp_path: Path, user: dict[str, Any], context: str | None, message: str
) -> None:
    path = kubeconfig(tmp_path / "config", "https://127.0.0.1:1", user)
    with pytest.raises(DeployError) as info:
        load_credentials(path, context)
    assert message in str(info.value) and str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_status_errors_and_watch_streams(tmp_path: Path) -> None:
    big = {"metadata": {"name": "web", "resourceVersion": "7"}, "spec": {"replicas": 1}, "blob": "x" * 200_000}

    async def missing(request: web.Request) -> web.Response:
        status = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
                  "message": 'deployments.apps "web" not found'}  # fmt: skip
        return web.json_response(status, status=404)

    async def watch(request: web.Request) -> web.StreamResponse:
        assert request.query["watch"] == "1" and request.query["resourceVersion"] == "5"
        answer = web.StreamResponse()
        await answer.prepare(request)
        for line in (
            {"type": "MODIFIED", "object": big},
            {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}},
        ):
            await answer.write(json.dumps(line).encode() + b"\n")
        return answer

    async def scenario() -> tuple[Any, ...]:
        async with (
            apiserver(
                {
                    "/apis/apps/v1/namespaces/apps/deployments/{name}": missing,
                    "/apis/apps/v1/namespaces/apps/deployments": watch,
                }
            ) as url,
            connect(kubeconfig(tmp_path / "config", url, {"token": "t"})) as api,
        ):
            with pytest.raises(ApiError) as not_found:
                await api.read(DEPLOYMENTS, "apps", "web")
            events = []
            with pytest.raises(ApiError) as expired:
                async for kind, obj in api.watch(DEPLOYMENTS, "apps", version="5", seconds=5):
                    events.append((kind, len(obj["blob"])))
            return not_found.value, expired.value, events

    not_found, expired, events = asyncio.run(scenario())
    assert (not_found.status, not_found.message) == (404, 'deployments.apps "web" not found')
    assert events == [("MODIFIED", 200_000)]  # a line far longer than a stream reader's default limit
    assert (expired.status, expired.message) == (410, "too old")


def test_kube_get_is_none_for_a_missing_object_and_a_refusal_names_the_object(tmp_path: Path) -> None:
    async def discovery(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [{"name": "configmaps", "kind": "ConfigMap", "namespaced": True}],
            }
        )

    async def configmap(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response({"kind": "Status", "code": 404, "message": "not found"}, status=404)
        assert request.headers["Content-Type"] == "application/apply-patch+yaml"
        assert request.query["fieldManager"] == "deployer" and request.query["force"] == "true"
        return web.json_response({"kind": "Status", "code": 422, "message": 'ConfigMap "c" is invalid'}, status=422)

    async def scenario() -> tuple[Any, str]:
        routes = {"/api/v1": discovery, "/api/v1/namespaces/apps/configmaps/{name}": configmap}
        async with apiserver(routes) as url, connect(kubeconfig(tmp_path / "config", url, {"token": "t"})) as api:
            kube = Kube(api)
            absent = await kube.get("v1", "ConfigMap", namespace="apps", name="c")
            with pytest.raises(DeployError) as refused:
                objects = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]
                await kube.apply(objects, namespace="apps")
            return absent, str(refused.value)

    absent, refused = asyncio.run(scenario())
    assert absent is None
    assert refused == 'apps: ConfigMap/c: the cluster refused it: ConfigMap "c" is invalid'


def test_a_kind_the_cluster_did_not_serve_is_looked_up_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CRD installed after the server started (Istio's, a chart's) is found by the same connection."""
    served: list[dict[str, Any]] = []
    asked: list[str] = []

    async def group(request: web.Request) -> web.Response:
        asked.append(request.path)
        if not served:
            return web.json_response({"kind": "Status", "code": 404, "message": "not found"}, status=404)
        return web.json_response({"kind": "APIResourceList", "groupVersion": "example.com/v1", "resources": served})

    async def scenario() -> list[bool]:
        async with (
            apiserver({"/apis/example.com/v1": group}) as url,
            connect(kubeconfig(tmp_path / "config", url, {"token": "t"})) as api,
        ):
            found = [await api.resource("example.com/v1", "Widget") is not None]
            found.append(await api.resource("example.com/v1", "Widget") is not None)  # within the pause: cached
            monkeypatch.setattr("deployer.kube.client.DISCOVERY_MISS", 0.0)
            served.append({"name": "widgets", "kind": "Widget", "namespaced": True})
            found.append(await api.resource("example.com/v1", "Widget") is not None)
            found.append(await api.resource("example.com/v1", "Widget") is not None)  # a hit is not asked again
            return found

    assert asyncio.run(scenario()) == [False, False, True, True]
    assert len(asked) == 2
