"""Notification targets: server.yaml's rules, secrets read at start in one line, signatures and Slack's text."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from pydantic import ValidationError

from deployer.config.server import Notification, ServerConfig
from deployer.errors import DeployError
from deployer.server.notify import signature, slack_text, targets


def config_with(*notifications: dict[str, object]) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "dataDir": "/tmp/d",
            "cluster": {"inCluster": True},
            "registry": {"host": "registry.example.com"},
            "apps": {"hello": {"environments": {"staging": "hello-staging"}}},
            "notifications": list(notifications),
        }
    )


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ({"name": "a", "kind": "webhook"}, "give exactly one of url or urlFrom"),
        (
            {"name": "a", "kind": "webhook", "url": "http://x/", "urlFrom": {"env": "U"}},
            "exactly one of url or urlFrom",
        ),
        ({"name": "a", "kind": "slack", "url": "http://x/", "secretFrom": {"env": "K"}}, "a slack target has none"),
        ({"name": "a", "kind": "webhook", "urlFrom": {}}, "give exactly one of file or env"),
        ({"name": "a", "kind": "webhook", "url": "ftp://x/"}, "String should match pattern"),
        ({"name": "a", "kind": "email", "url": "http://x/"}, "Input should be 'webhook' or 'slack'"),
        ({"name": "a", "kind": "webhook", "url": "http://x/", "events": ["deployed"]}, "Input should be 'started'"),
    ],
)
def test_a_target_is_checked(target: dict[str, object], why: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Notification.model_validate(target)
    assert why in str(refused.value)


def test_filters_by_app_environment_and_event() -> None:
    target = Notification.model_validate(
        {"name": "a", "kind": "webhook", "url": "http://x/", "apps": ["hello"], "events": ["released"]}
    )
    assert target.wants("hello", "prod", "released")
    assert not target.wants("shop", "prod", "released")
    assert not target.wants("hello", "prod", "step")
    everywhere = Notification.model_validate({"name": "b", "kind": "slack", "url": "http://x/"})
    assert everywhere.wants("shop", "staging", "step")


def test_secrets_are_read_at_start_from_files_and_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "key").write_text("k3y\n")
    monkeypatch.setenv("SLACK_URL", "https://hooks.example.com/T/B/X")
    found = targets(
        config_with(
            {"name": "a", "kind": "webhook", "url": "http://x/", "secretFrom": {"file": str(tmp_path / "key")}},
            {"name": "b", "kind": "slack", "urlFrom": {"env": "SLACK_URL"}},
        )
    )
    assert [(t.url, t.key) for t in found] == [("http://x/", b"k3y"), ("https://hooks.example.com/T/B/X", None)]
    monkeypatch.delenv("SLACK_URL")
    with pytest.raises(DeployError) as missing:
        targets(config_with({"name": "b", "kind": "slack", "urlFrom": {"env": "SLACK_URL"}}))
    assert str(missing.value) == "server.yaml: notifications[0].urlFrom: environment variable SLACK_URL is not set"
    with pytest.raises(DeployError) as unreadable:
        targets(
            config_with(
                {"name": "a", "kind": "webhook", "url": "http://x/", "secretFrom": {"file": str(tmp_path / "none")}}
            )
        )
    assert str(unreadable.value).startswith("server.yaml: notifications[0].secretFrom: cannot read ")


def test_signature_and_slack_text() -> None:
    body = b'{"event":"released"}'
    assert signature(b"k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    text = slack_text(
        {"app": "hello", "environment": "prod", "message": "revision 3 is live", "commit": "a" * 40, "pusher": "bob"}
    )
    assert text == f"hello/prod: revision 3 is live ({'a' * 12} by bob)"
