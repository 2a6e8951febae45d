"""Adapters for the canary's checks: Prometheus instant queries, and HTTP through the mesh's ingress gateway (as
users' requests arrive; it speaks mTLS to the sidecars, so it works under STRICT) or from inside the mesh. The
third way, the API server's pod proxy (plaintext from outside the mesh: a STRICT sidecar resets it,
istio/istio#27169), is the kube client's `proxy`."""

from __future__ import annotations

import math

import aiohttp


async def query_prometheus(url: str, expression: str, *, timeout: float = 10.0) -> float | None:
    """The first sample of an instant query; None when the result is empty or NaN (0/0: no traffic)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(f"{url.rstrip('/')}/api/v1/query", params={"query": expression}) as response,
    ):
        body = await response.json(content_type=None)
    if response.status != 200 or body.get("status") != "success":
        raise ValueError(f"Prometheus answered HTTP {response.status}: {body.get('error', '')}")
    result = body["data"]["result"]
    if body["data"]["resultType"] == "scalar":
        result = [{"value": result}]
    for sample in result:
        value = float(sample["value"][1])
        if not math.isnan(value):
            return value
    return None


async def http_through_mesh(url: str, *, headers: dict[str, str], proxy: str | None, timeout: float) -> tuple[int, str]:
    """GET `url` as a client in the mesh: straight (this process's sidecar takes it) or through `proxy`, an HTTP
    proxy whose clients the mesh treats as its pods (the proxy URL's user names the namespace to the sandbox)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url, headers=headers, proxy=proxy, allow_redirects=False) as answer,
    ):
        text = (await answer.read()).decode(errors="replace").strip().splitlines()
    return answer.status, text[0] if text else ""


async def http_through_gateway(
    url: str, *, host: str, path: str, headers: dict[str, str], timeout: float
) -> tuple[int, str]:
    """GET `path` for `host` from the ingress gateway at `url`: (HTTP status, first line of the body)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(f"{url.rstrip('/')}{path}", headers={"Host": host, **headers}, allow_redirects=False) as answer,
    ):
        text = (await answer.read()).decode(errors="replace").strip().splitlines()
    return answer.status, text[0] if text else ""
