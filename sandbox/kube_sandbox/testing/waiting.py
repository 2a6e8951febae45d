"""Polling helper for asserting on state that controllers reach asynchronously."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], *, timeout: float = 10.0, what: str = "condition") -> T:
    """Call `check` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def raw(
    api: Any,
    method: str,
    path: str,
    *,
    body: Any = None,
    content_type: str = "application/json",
    query: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """A request as sent, without the typed client's own checks: (status, headers, decoded body)."""
    status, headers, data = raw_bytes(api, method, path, body=body, content_type=content_type, query=query)
    return status, headers, json.loads(data) if data else None


def raw_bytes(
    api: Any,
    method: str,
    path: str,
    *,
    body: Any = None,
    content_type: str = "application/json",
    query: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """As raw(), the body as the bytes the server wrote."""
    method_, url, headers, payload, _ = api.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()),
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method_, url, header_params=headers, body=payload)
    response.read()
    return response.status, dict(response.getheaders()), response.data or b""


def unless_missing(call: Callable[[], T]) -> T | None:
    """`call()`, or None if the API answers 404 (the object or resource is not there yet)."""
    try:
        return call()
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
