"""Notifications: what server.yaml's `notifications` targets hear about releases.

A generic webhook gets a JSON body (schema `deployer.notification/v1`, below) signed with HMAC-SHA256 when the
target has a key (`X-Deployer-Signature: sha256=<hex of the body>`, as GitHub signs its webhooks); a Slack-compatible
incoming webhook (Slack, Mattermost, Rocket.Chat, ...) gets `{"text": ...}`. Each send runs in the background with a
timeout, retried with backoff (tenacity) on connection errors, timeouts, 429 and 5xx: a target that fails never
fails or slows a release. Failures are counted in /metrics (`deployer_notifications_failed_total{target}`) and
logged once per release and target.

The body, for every event:
    {"schema": "deployer.notification/v1", "event": "started|step|promoted|released|rolled-back|failed|recovered",
     "app": ..., "environment": ..., "namespace": ..., "commit": ..., "pusher": ..., "time": RFC 3339,
     "message": one line, and where they apply "weight" (step), "revision", "reason" (rolled-back, failed)}
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from deployer.config.server import Notification, SecretSource, ServerConfig
from deployer.errors import DeployError
from deployer.server.metrics import Metrics

log = logging.getLogger("deployer.server.notify")
SCHEMA = "deployer.notification/v1"
ATTEMPTS = 3


class _Retry(Exception):
    """A failure worth another attempt: no answer, a timeout, 429 or 5xx."""


@dataclass(frozen=True)
class Target:
    config: Notification
    url: str
    key: bytes | None


def _read(source: SecretSource, where: str) -> str:
    if source.env is not None:
        value = os.environ.get(source.env, "").strip()
        if not value:
            raise DeployError(f"environment variable {source.env} is not set", where=where)
        return value
    try:
        return Path(source.file or "").read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise DeployError(f"cannot read {source.file}: {exc.strerror or exc}", where=where) from None


def targets(config: ServerConfig) -> list[Target]:
    """The targets with their secrets read (at start: a missing file or variable is one line, and no start)."""
    found = []
    for index, target in enumerate(config.notifications):
        where = f"server.yaml: notifications[{index}]"
        if target.url is not None:
            url = target.url
        else:
            assert target.url_from is not None  # the model allows exactly one of url and urlFrom
            url = _read(target.url_from, f"{where}.urlFrom")
        if not url.startswith(("http://", "https://")):
            raise DeployError("the URL read is not an http(s) URL", where=f"{where}.urlFrom")
        key = _read(target.secret_from, f"{where}.secretFrom").encode() if target.secret_from else None
        found.append(Target(target, url, key))
    return found


def signature(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def slack_text(body: dict[str, Any]) -> str:
    commit = str(body.get("commit") or "")[:12]
    who = f" by {body['pusher']}" if body.get("pusher") else ""
    return f"{body['app']}/{body['environment']}: {body['message']} ({commit}{who})"


class Notifier:
    def __init__(self, found: list[Target], metrics: Metrics) -> None:
        self.targets = found
        self.metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._logged: set[tuple[str, str]] = set()  # (release, target): a failure is logged once per release

    def notify(self, event: str, **fields: Any) -> None:
        """Send `event` to every target that wants it, in the background; returns at once."""
        body = {
            "schema": SCHEMA,
            "event": event,
            **{k: v for k, v in fields.items() if v is not None},
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        for target in self.targets:
            if target.config.wants(str(body.get("app")), str(body.get("environment")), event):
                task = asyncio.get_running_loop().create_task(self._send(target, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, target: Target, body: dict[str, Any]) -> None:
        if target.config.kind == "slack":
            data = json.dumps({"text": slack_text(body)}).encode()
            headers = {"Content-Type": "application/json"}
        else:
            data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
            headers = {"Content-Type": "application/json", "X-Deployer-Event": str(body["event"])}
            if target.key is not None:
                headers["X-Deployer-Signature"] = signature(target.key, data)
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_Retry),
                stop=stop_after_attempt(ATTEMPTS),
                wait=wait_exponential(multiplier=0.5, max=4),
                reraise=True,
            ):
                with attempt:
                    await self._post(target, data, headers)
        except (_Retry, ValueError, aiohttp.ClientError) as exc:
            self.metrics.notifications_failed.labels(target.config.name).inc()
            release = f"{body.get('app')}/{body.get('environment')}@{body.get('commit')}"
            if (release, target.config.name) not in self._logged:
                self._logged.add((release, target.config.name))
                log.warning("notification %s for %s failed: %s", target.config.name, release, exc)

    async def _post(self, target: Target, data: bytes, headers: dict[str, str]) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=target.config.timeout)
        try:
            async with self._session.post(target.url, data=data, headers=headers, timeout=timeout) as answer:
                if answer.status == 429 or answer.status >= 500:  # retried, as the API client retries
                    raise _Retry(f"HTTP {answer.status}")
                if answer.status >= 400:  # the target refuses it: no retry
                    raise ValueError(f"HTTP {answer.status}")
        except (TimeoutError, aiohttp.ClientConnectionError) as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
