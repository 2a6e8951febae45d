"""Notifications through `deployer serve`: a signed webhook and a Slack-compatible target hear a release's events;
a target that fails neither fails nor slows the push, and is counted in /metrics."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from gitserver import App, GitServer, make_app, new_token, push, server_config, start_server, token_entry
from kube_sandbox.testing import Registry, Running
from kubernetes import client
from support import commit, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(not shutil.which("buildah"), reason="buildah: make setup")]
MESH = {"istio-injection": "enabled"}


class Receiver:
    """An HTTP server that records what each path is sent, answering 500 on /broken."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.seen.append((self.path, dict(self.headers), body))
                self.send_response(500 if self.path == "/broken" else 200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(body) for where, _, body in self.seen if where == path]

    def wait(self, path: str, check: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(self.bodies(path)):
                return self.bodies(path)
            time.sleep(0.1)
        raise AssertionError(f"{path} got {self.bodies(path)}")


@pytest.fixture
def setup(
    cluster: Running, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[GitServer, App, Receiver, bytes]]:
    receiver = Receiver()
    app = make_app(tmp_path, "notified", os.environ.get("DEPLOYER_TEST_REGISTRY") or registry.host)
    core = client.CoreV1Api(cluster.api())
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=app.staging, labels=MESH)))
    key = b"hmac-key-for-the-test"
    (tmp_path / "hook.key").write_bytes(key)
    monkeypatch.setenv("DEPLOYER_TEST_SLACK_URL", receiver.url("/slack"))  # a Slack URL is a secret: from a variable
    alice = new_token()
    config = server_config(
        data=tmp_path / "data",
        kubeconfig=cluster.kubeconfig,
        registry=os.environ.get("DEPLOYER_TEST_REGISTRY") or registry.host,
        bound={"staging": app.staging},
        users={"alice": {"tokens": [token_entry(alice)]}},
        notifications=[
            {
                "name": "team",
                "kind": "webhook",
                "url": receiver.url("/hook"),
                "secretFrom": {"file": str(tmp_path / "hook.key")},
            },
            {
                "name": "chat",
                "kind": "slack",
                "urlFrom": {"env": "DEPLOYER_TEST_SLACK_URL"},
                "events": ["released", "rolled-back", "failed"],
            },
            {"name": "broken", "kind": "webhook", "url": receiver.url("/broken"), "environments": ["staging"]},
            {"name": "elsewhere", "kind": "webhook", "url": receiver.url("/prod-only"), "environments": ["prod"]},
        ],
    )
    config["apps"] = {app.name: {"environments": {"staging": app.staging}}}
    server = start_server(tmp_path / "server", config)
    server.tokens = {"alice": alice}
    yield server, app, receiver, key
    server.stop()
    receiver.server.shutdown()
    core.delete_namespace(app.staging)


def test_targets_hear_a_release_signed_and_filtered_and_a_broken_one_costs_nothing(
    setup: tuple[GitServer, App, Receiver, bytes],
) -> None:
    server, app, receiver, key = setup
    started = time.monotonic()
    first = push(app.repo, server.http_url(app.name), "main")
    assert first.code == 0, first
    hooks = receiver.wait("/hook", lambda b: [x["event"] for x in b] == ["started", "released"])
    released = hooks[-1]
    assert (released["schema"], released["app"], released["environment"]) == (
        "deployer.notification/v1",
        app.name,
        "staging",
    )
    assert (released["commit"], released["pusher"], released["revision"]) == (app.head(), "alice", 1)
    assert released["message"] == "revision 1 is live"
    for path, headers, body in receiver.seen:  # every webhook body is signed with the key from the file
        if path == "/hook":
            assert headers["X-Deployer-Signature"] == "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    [slack] = receiver.wait("/slack", lambda b: len(b) == 1)
    assert slack == {"text": f"{app.name}/staging: revision 1 is live ({app.head()[:12]} by alice)"}

    # through the canary: its step and the promotion are heard too
    (app.repo / "app" / "greeting.txt").write_text("v2\n")
    commit(app.repo, "second")
    second = push(app.repo, server.http_url(app.name), "main")
    assert second.code == 0, second
    events = receiver.wait(
        "/hook", lambda b: [x["event"] for x in b][2:] == ["started", "step", "promoted", "released"]
    )
    assert events[3]["weight"] == 50

    # the broken target: retried, counted, and it did not hold either push (each took seconds, not retries' worth)
    assert len(receiver.bodies("/broken")) >= 3
    assert not receiver.bodies("/prod-only")  # filtered by environment
    status, metrics = server.get("/metrics")
    assert status == 200
    assert 'deployer_notifications_failed_total{target="broken"}' in metrics
    assert time.monotonic() - started < 120
    log = server.log.read_text()
    assert log.count(f"notification broken for {app.name}/staging@{app.head()}") == 1  # once per release
