"""The web view's sessions (signed, expiring, ended by removing the token), CSRF tokens, where a sign-in may
send someone, and the JSON a live page gets (no manifests, no values)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from deployer.config.server import ServerConfig, token_digest
from deployer.events import CheckResult, Record, Round, Status
from deployer.server.web import Sessions, _local, session_key, state_of


def config(tokens: dict[str, list[str]], session: str = "12h") -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "dataDir": "/tmp/d",
            "cluster": {"inCluster": True},
            "registry": {"host": "registry.example.com"},
            "apps": {"hello": {"environments": {"staging": "hello-staging"}}},
            "users": {name: {"tokens": [token_digest(t) for t in ts]} for name, ts in tokens.items()},
            "web": {"session": session},
        }
    )


def test_a_session_names_its_user_until_tampered_expired_or_its_token_removed(tmp_path: Path) -> None:
    key = session_key(tmp_path)
    assert session_key(tmp_path) == key, "kept in dataDir: a restart keeps people signed in"
    assert (tmp_path / "web-session.key").stat().st_mode & 0o777 == 0o600
    sessions = Sessions(key, config({"alice": ["a1"], "bob": ["b1"]}))
    cookie = sessions.issue("alice")
    assert sessions.user(cookie) == "alice"
    signature = cookie.partition(".")[2]
    forged = json.dumps({"u": "bob", "e": int(time.time()) + 60, "n": "x"}).encode()
    assert sessions.user(base64.urlsafe_b64encode(forged).decode().rstrip("=") + "." + signature) is None
    assert sessions.user(cookie[:-2] + "AA") is None
    assert sessions.user("") is None and sessions.user("garbage") is None and sessions.user(None) is None
    assert Sessions(b"another key" * 3, sessions.config).user(cookie) is None
    # the token rotated: every session of that user ends; another user's go on
    rotated = Sessions(key, config({"alice": ["a2"], "bob": ["b1"]}))
    assert rotated.user(cookie) is None
    assert rotated.user(sessions.issue("bob")) == "bob"
    assert Sessions(key, config({"bob": ["b1"]})).user(cookie) is None, "a user removed from server.yaml"
    expired = Sessions(key, config({"alice": ["a1"]}, session="0s"))
    assert expired.user(expired.issue("alice")) is None


def test_csrf_tokens_belong_to_one_session(tmp_path: Path) -> None:
    sessions = Sessions(session_key(tmp_path), config({"alice": ["a1"]}))
    one, two = sessions.issue("alice"), sessions.issue("alice")
    assert sessions.csrf(one) == sessions.csrf(one) != sessions.csrf(two)


@pytest.mark.parametrize(
    ("target", "goes"),
    [
        ("/ui/hello/staging", "/ui/hello/staging"),
        ("/ui/hello/staging?said=x", "/ui/hello/staging?said=x"),
        ("https://evil.example/ui/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/metrics", "/ui/"),
        ("/ui/\\evil", "/ui/"),
        ("", "/ui/"),
    ],
)
def test_a_sign_in_sends_only_to_this_view(target: str, goes: str) -> None:
    assert _local(target) == goes


def test_a_live_page_gets_the_release_its_checks_and_history_but_no_manifests() -> None:
    rounds = (Round(20, (CheckResult("error-rate", False, "0.2 is above the maximum 0.01", 0.2, "<= 0.01"),)),)
    records = [
        Record(1, "a" * 40, "r/hello@sha256:1", status=Status.DEPLOYED, started=100.0, finished=130.0),
        Record(
            2,
            "b" * 40,
            "r/hello@sha256:2",
            weights=(80, 20),
            rounds=rounds,
            manifests=({"kind": "Secret", "stringData": {"password": "hunter2"}},),  # pragma: allowlist secret
        ),
    ]
    state = state_of(records)
    assert "hunter2" not in json.dumps(state)
    assert state["live"] == 1
    release = state["release"]
    assert (release["revision"], release["pending"], release["stable"], release["canary"]) == (2, True, 80, 20)
    assert release["rounds"][0]["checks"][0] == {
        "name": "error-rate",
        "value": "0.2",
        "limit": "<= 0.01",
        "ok": False,
        "message": "0.2 is above the maximum 0.01",
    }
    assert [(h["revision"], h["result"], h["rollback"], h["duration"]) for h in state["history"]] == [
        (2, "pending", False, ""),
        (1, "deployed", False, "30s"),
    ]
