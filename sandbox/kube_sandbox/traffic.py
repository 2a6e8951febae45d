"""`kube-sandbox traffic`: steady load through the ingress gateway, or from a pod in the mesh.

A client "in the mesh" sends to the sandbox's client port with `X-Sandbox-From: NAMESPACE[/k=v,...]`; the sandbox
routes it as that pod's sidecar would (or, with `X-Sandbox-Sidecar: false` or no injection, as kube-proxy would).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import yaml


def mesh_url(kubeconfig: Path, which: str = "gateway") -> str:
    """The ingress gateway (`gateway`) or the client port (`clients`) of the sandbox a kubeconfig points at."""
    try:
        config = yaml.safe_load(kubeconfig.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"not a kubeconfig: {exc}") from None
    contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
    clusters = {c["name"]: c["cluster"] for c in config.get("clusters") or []}
    context = contexts.get(config.get("current-context", "")) or {}
    server = (clusters.get(context.get("cluster", "")) or {}).get("server")
    if not server:
        raise ValueError("it names no current cluster")
    with urllib.request.urlopen(f"{server}/sandbox/info", timeout=5) as answer:  # noqa: S310 - the sandbox's URL
        return str(json.loads(answer.read())[which])


def client_headers(source: str | None, *, sidecar: bool = True) -> dict[str, str]:
    """Headers that make a request come from a pod of `source` (NAMESPACE[/LABELS]) on the client port."""
    if source is None:
        return {}
    return {"X-Sandbox-From": source, **({} if sidecar else {"X-Sandbox-Sidecar": "false"})}


async def send(
    mesh: str,
    host: str,
    *,
    rps: float,
    duration: float,
    path: str = "/",
    report: Callable[[str], None] | None = None,
    source: str | None = None,
    sidecar: bool = True,
) -> Counter[str]:
    """Send `rps` requests a second for `duration` seconds; the count of answers by status (or error)."""
    counts: Counter[str] = Counter()
    window: Counter[str] = Counter()
    total = max(1, round(rps * duration))
    started = time.monotonic()
    limit = asyncio.Semaphore(64)
    headers = {"Host": host, **client_headers(source, sidecar=sidecar)}

    async def one(session: aiohttp.ClientSession) -> None:
        async with limit:
            try:
                async with session.get(f"{mesh}{path}", headers=headers, allow_redirects=False) as answer:
                    await answer.read()
                    key = str(answer.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = type(exc).__name__
            counts[key] += 1
            window[key] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        tasks = []
        next_report = started + 1.0
        for i in range(total):
            due = started + i / rps
            now = time.monotonic()
            if report is not None and now >= next_report:
                report(_line(now - started, window))
                window.clear()
                next_report += 1.0
            if due > now:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.ensure_future(one(session)))
        await asyncio.gather(*tasks)
    if report is not None and window:
        report(_line(time.monotonic() - started, window))
    return counts


def _line(elapsed: float, counts: Counter[str]) -> str:
    answers = " ".join(f"{k}x{v}" for k, v in sorted(counts.items()))
    return f"{elapsed:5.1f}s  {sum(counts.values())} requests  {answers}"
