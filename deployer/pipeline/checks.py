"""The configured checks of one canary round: Prometheus queries and HTTP (through the mesh's ingress gateway,
pinned to the canary by a header, when the environment names a gateway and the server one to send to; else
from inside the mesh to the Service's host, pinned the same way, when the server is a mesh client; else
through the API server's pod proxy), each retried
with tenacity within the round; a check that cannot be made fails its round, it never crashes the release."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_exponential_jitter

from deployer.canary.checks import TRAFFIC, judge, judge_http, promql
from deployer.canary.istio import PIN_HEADER
from deployer.canary.objects import service_port
from deployer.config.model import CanaryPolicy, Check
from deployer.events import CheckResult
from deployer.pipeline.traffic import Run

STRICT_HINT = (
    "the API server's pod proxy speaks plaintext, which a sidecar under STRICT mTLS resets: give the server a "
    "way into the mesh (meshClient, or meshGateway with a gateway in canary.gateways), so checks go through it"
)


async def configured_checks(run: Run, policy: CanaryPolicy, canaries: list[dict[str, Any]]) -> tuple[CheckResult, ...]:
    """deploy.yaml's checks for every canary, each retried within the round."""
    results = []
    for canary in canaries:
        for check in policy.checks:
            results.append(await _retried(check, functools.partial(_one_check, run, policy, check, canary)))
    return tuple(results)


async def _retried(check: Check, attempt: Callable[[], Awaitable[CheckResult]]) -> CheckResult:
    """Up to `retries + 1` attempts with backoff; the last result stands."""
    result = CheckResult(check.name, False, "not run")
    async for trying in AsyncRetrying(
        retry=retry_if_result(lambda r: not r.ok),
        stop=stop_after_attempt(check.retries + 1),
        wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    ):
        with trying:
            result = await attempt()
        if trying.retry_state.outcome is None or not trying.retry_state.outcome.failed:
            trying.retry_state.set_result(result)
    return result


async def _one_check(run: Run, policy: CanaryPolicy, check: Check, canary: dict[str, Any]) -> CheckResult:
    try:
        if check.prometheus is not None:
            return await _prometheus(run, check, canary["metadata"]["name"])
        return await _http(run, check, canary)
    except Exception as exc:  # a check that cannot be made fails its round; it never crashes the release
        return CheckResult(check.name, False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")


async def _prometheus(run: Run, check: Check, workload: str) -> CheckResult:
    assert check.prometheus is not None
    if not run.options.prometheus_url:
        return CheckResult(check.name, False, "no Prometheus to ask (give the deployer --prometheus URL)")
    url, where = run.options.prometheus_url, {"namespace": run.namespace, "workload": workload}
    value = await run.probes.prometheus(url, promql(check.prometheus, **where))
    requests = None
    if value is None and check.prometheus.no_data == "skip":
        requests = await run.probes.prometheus(url, promql(check.prometheus, template=TRAFFIC, **where))
    return judge(check.name, check.prometheus, value, requests=requests)


async def _http(run: Run, check: Check, canary: dict[str, Any]) -> CheckResult:
    assert check.http is not None
    host = run.router.check_host(run.objects, run.targets) if run.router is not None else None
    if run.options.mesh_gateway and host:  # as users' requests arrive: through the mesh, mTLS to the sidecar
        status, line = await run.probes.http_gateway(
            run.options.mesh_gateway,
            host=host,
            path=check.http.path,
            headers={PIN_HEADER: "true"},
            timeout=check.http.timeout,
        )
        return judge_http(check.name, check.http, status, line)
    target = next((t for t in run.targets if t.canary == canary["metadata"]["name"]), None)
    if run.options.mesh_client and target is not None:  # a client in the mesh: the pinned route, mTLS
        port = service_port(run.objects, target, check.http.port)
        if port is None:
            return CheckResult(check.name, False, f"Service {target.service} has no port for {check.http.port}")
        status, line = await run.probes.http_mesh(
            f"http://{target.host}:{port}{check.http.path}",
            headers={PIN_HEADER: "true"},
            proxy=None if run.options.mesh_client == "direct" else run.options.mesh_client,
            timeout=check.http.timeout,
        )
        return judge_http(check.name, check.http, status, line)
    pods = await run.cluster.pods(namespace=run.namespace, selector=canary["spec"]["selector"]["matchLabels"])
    if not pods:
        return CheckResult(check.name, False, f"no ready pod of {canary['metadata']['name']} to ask")
    status, line = await run.probes.http_pod(
        namespace=run.namespace, pod=pods[0], port=check.http.port, path=check.http.path, timeout=check.http.timeout
    )
    result = judge_http(check.name, check.http, status, line)
    if status == 503 and "connection reset" in line:  # a sidecar under STRICT mTLS refuses plaintext
        return CheckResult(result.name, False, f"{result.message}; {STRICT_HINT}")
    return result
