"""`deployer serve` with server.yaml `builder: {kind: kaniko}`: every push's build is a Job in the build namespace,
its context the pushed commit served once by the deployer over https, its log streamed to the pusher.

kaniko's executor cannot run here; the sandbox runs kaniko_standin.py for its image (kube-sandbox `processes`),
which takes kaniko's flags, fetches the context the way kaniko does and builds and pushes the image (buildah).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from gitserver import App, GitServer, make_app, new_token, push, server_config, start_server, token_entry
from kube_sandbox.testing import Registry, Running
from kube_sandbox.tls import make_authority
from kubernetes import client, watch
from support import STATE, commit, edit, free_port

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.sandbox_only,  # the executor's stand-in is a process the sandbox runs for the kaniko image
    pytest.mark.skipif(not shutil.which("buildah"), reason="buildah: make setup"),
]
EXECUTOR = "gcr.io/kaniko-project/executor:v1.24.0"
STANDIN = Path(__file__).with_name("kaniko_standin.py")
BUILDS = "builds"


@dataclass
class Kaniko:
    cluster: Running
    registry: str
    tmp: Path
    ca: Path
    tls: dict[str, str]
    started: list[GitServer]

    def server(self, apps: list[App], **builder: Any) -> GitServer:
        port = free_port()
        alice = new_token()
        config = server_config(
            data=self.tmp / f"data-{port}",
            kubeconfig=self.cluster.kubeconfig,
            registry=self.registry,
            bound={},
            users={"alice": {"tokens": [token_entry(alice)]}},
            limits={"rolloutTimeout": "30s"},
        )
        config["listen"] = {**config["listen"], "http": f"127.0.0.1:{port}", "tls": self.tls}
        config["builder"] = {
            "kind": "kaniko",
            "namespace": BUILDS,
            "image": EXECUTOR,
            "contextUrl": f"https://127.0.0.1:{port}",
            "ttl": "2s",
            **builder,
        }
        config["apps"] = {app.name: {"environments": {"staging": app.staging, "prod": app.prod}} for app in apps}
        server = start_server(self.tmp / f"server-{port}", config)
        server.tokens = {"alice": alice}
        self.started.append(server)
        return server

    def app(self, name: str) -> App:
        app = make_app(self.tmp, name, self.registry)
        core = client.CoreV1Api(self.cluster.api())
        labels = {"istio-injection": "enabled"}
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=app.staging, labels=labels)))
        return app

    def jobs(self) -> list[Any]:
        return list(client.BatchV1Api(self.cluster.api()).list_namespaced_job(BUILDS).items)


def url(server: GitServer, app: App) -> str:
    return f"https://alice:{server.tokens['alice']}@127.0.0.1:{server.http_port}/{app.name}.git"


@pytest.fixture
def kaniko(
    sandbox_factory: Callable[..., Running], registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Kaniko]:
    authority = make_authority()
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "tls.crt", tmp_path / "tls.key"
    ca.write_bytes(authority.ca_pem)
    cert.write_bytes(authority.cert_pem + authority.ca_pem)
    key.write_bytes(authority.key_pem)
    command = (sys.executable, str(STANDIN), "--storage", str(STATE / "containers"), "--ca-file", str(ca))
    command += ("--record", str(tmp_path / "fetched-contexts"))
    cluster = sandbox_factory(ready_delay=0.2, processes={EXECUTOR: command})
    client.CoreV1Api(cluster.api()).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=BUILDS)))
    monkeypatch.setenv("GIT_SSL_CAINFO", str(ca))  # git trusts the deployer's https listener
    registry_host = os.environ.get("DEPLOYER_TEST_REGISTRY") or registry.host
    found = Kaniko(cluster, registry_host, tmp_path, ca, {"certFile": str(cert), "keyFile": str(key)}, [])
    yield found
    for server in found.started:
        server.stop()


def test_a_push_builds_in_a_kaniko_job_streams_its_log_and_deploys(kaniko: Kaniko) -> None:
    app = kaniko.app("kanikohello")
    server = kaniko.server([app])
    first = push(app.repo, url(server, app), "main")
    assert first.code == 0, first
    lines = first.remote
    job = next(line for line in lines if "kaniko Job builds/build-" in line)
    assert f"--destination={kaniko.registry}/{app.name}:{app.head()}" in job
    assert re.search(r"--context=https://127\.0\.0\.1:\d+/build-context/\*\*\*\.tar\.gz", job), job
    # the executor's own log, line by line, as it ran: its steps and the stand-in's check of the context URL
    assert any(re.fullmatch(r"\s*build\s+RUN mkdir -p /www/healthz /www/version", line) for line in lines), lines
    assert not any('"level"' in line for line in lines), "kaniko's JSON log lines are shown as their messages"
    assert any("the same context again: HTTP 404; earlier builds' contexts: none" in line for line in lines), lines
    assert any(f"pushed {kaniko.registry}/{app.name}@sha256:" in line for line in lines), lines
    (deployment,) = client.AppsV1Api(kaniko.cluster.api()).list_namespaced_deployment(app.staging).items
    image = deployment.spec.template.spec.containers[0].image
    assert image.startswith(f"{kaniko.registry}/{app.name}@sha256:"), image
    assert server.ref("refs/heads/main", app.name) == app.head()
    assert _eventually(lambda: kaniko.jobs() == []), "a succeeded build's Job is deleted"

    # a second commit: its build fetches its own context (the greeting changed), never the first one's again
    edit(app.repo / "Dockerfile", "ARG GREETING=hello", "ARG GREETING=bonjour")
    commit(app.repo, "bonjour")
    second = push(app.repo, url(server, app), "main")
    assert second.code == 0, "\n".join(second.remote[-25:])
    assert any("earlier builds' contexts: 404" in line for line in second.remote), second.remote
    assert any('RUN echo "${GREETING} from ${GIT_COMMIT}"' in line for line in second.remote), second.remote
    assert server.ref("refs/heads/main", app.name) == app.head()
    log = server.log.read_text()
    assert "build context of" in log, log
    assert not re.search(r"/build-context/(?!\*\*\*\.tar\.gz)", log), "the server logs fetches, never the token"


def test_a_failing_step_is_named_with_its_last_lines_and_its_job_kept_until_its_ttl(kaniko: Kaniko) -> None:
    app = kaniko.app("kanikofail")
    server = kaniko.server([app])
    before = app.head()
    edit(app.repo / "Dockerfile", "USER 65534", "RUN echo about to fail && exit 3\nUSER 65534")
    commit(app.repo, "a step that fails")
    failed = push(app.repo, url(server, app), "main")
    assert failed.code == 1, failed
    errors = [line for line in failed.remote if line.startswith("error:")]
    assert len(errors) == 1, failed.remote
    assert re.search(
        r"Dockerfile: the kaniko build Job build-\w+-\w+-\w+ failed at step 'RUN echo about to fail && exit 3' "
        r"\(BackoffLimitExceeded\); last \d+ lines of its log below",
        errors[0],
    ), errors[0]
    assert any("about to fail" in line and "error" not in line for line in failed.remote), "the log's last lines"
    assert server.ref("refs/heads/main", app.name) != app.head()
    assert server.ref("refs/heads/main", app.name) in (None, before)
    assert client.AppsV1Api(kaniko.cluster.api()).list_namespaced_deployment(app.staging).items == []
    assert _eventually(lambda: kaniko.jobs() == [], seconds=20), "the failed Job is deleted after its TTL (2s)"


def test_a_build_past_its_time_limit_is_stopped_by_its_deadline(kaniko: Kaniko) -> None:
    app = kaniko.app("kanikoslow")
    server = kaniko.server([app], timeout="4s")
    edit(app.repo / "Dockerfile", "USER 65534", "RUN sleep 60\nUSER 65534")
    commit(app.repo, "a step that takes too long")
    started = time.monotonic()
    slow = push(app.repo, url(server, app), "main")
    assert slow.code == 1, slow
    assert time.monotonic() - started < 40
    error = next(line for line in slow.remote if line.startswith("error:"))
    assert "ran past its time limit (4s, server.yaml builder.timeout) at step 'RUN sleep 60'" in error, error
    assert server.ref("refs/heads/main", app.name) != app.head()


def test_builds_of_several_pushes_run_as_jobs_at_once_up_to_the_limit(kaniko: Kaniko) -> None:
    apps = [kaniko.app(f"kanikomany{i}") for i in range(3)]
    server = kaniko.server(apps, maxConcurrent=2)
    most: list[int] = [0]
    seen: set[str] = set()

    def count() -> None:  # the Jobs running at once, as a watch sees them
        running: set[str] = set()
        stream = watch.Watch()
        for event in stream.stream(
            client.BatchV1Api(kaniko.cluster.api()).list_namespaced_job, BUILDS, timeout_seconds=120
        ):
            job = event["object"]
            done = job.status.succeeded or job.status.failed or event["type"] == "DELETED"
            (running.discard if done else running.add)(job.metadata.name)
            seen.add(job.metadata.name)
            most[0] = max(most[0], len(running))

    watcher = threading.Thread(target=count, daemon=True)
    watcher.start()
    results: dict[str, Any] = {}
    pushers = [
        threading.Thread(target=lambda a=app: results.__setitem__(a.name, push(a.repo, url(server, a), "main")))
        for app in apps
    ]
    for pusher in pushers:
        pusher.start()
    for pusher in pushers:
        pusher.join(timeout=300)
    for app in apps:
        assert results[app.name].code == 0, results[app.name]
        assert server.ref("refs/heads/main", app.name) == app.head()
    waited = [name for name, done in results.items() if any("waiting for a build slot" in line for line in done.remote)]
    assert len(seen) == 3, seen
    assert most[0] == 2, f"at most 2 builds at once (maxConcurrent), and 2 did run at once: {most[0]}"
    assert len(waited) >= 1, "the third push waited for a slot and said so"


def test_the_context_endpoint_answers_nothing_to_an_unknown_token(kaniko: Kaniko) -> None:
    app = kaniko.app("kanikoctx")
    server = kaniko.server([app])
    base = f"https://127.0.0.1:{server.http_port}/build-context"
    for token in ("x" * 43, "..%2F..%2Fserver.yaml", "%00"):
        answer = requests.get(f"{base}/{token}.tar.gz", verify=str(kaniko.ca), timeout=10)
        assert answer.status_code == 404, (token, answer.status_code)
    assert requests.get(f"https://127.0.0.1:{server.http_port}/healthz", verify=str(kaniko.ca), timeout=10).ok


def _eventually(check: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()
