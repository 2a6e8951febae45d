"""The checks' pure parts: PromQL from templates, and judging a value against a check's bounds."""

from __future__ import annotations

from deployer.canary.analysis import CheckResult
from deployer.config.model import HttpCheck, PrometheusCheck

_SELECT = 'reporter="destination",destination_workload_namespace="{namespace}",destination_workload=~"{workload}"'
TEMPLATES = {
    # Istio's standard metrics, as Flagger's built-in checks query them
    # "or on() vector(0)": a canary answering nothing but 5xx has no non-5xx series at all, and must score 0, not
    # "no data" (with no requests at all, the denominator is empty and the result is still no data)
    "request-success-rate": (
        f'(sum(rate(istio_requests_total{{{_SELECT},response_code!~"5.*"}}[{{interval}}])) or on() vector(0)) / '
        f"sum(rate(istio_requests_total{{{_SELECT}}}[{{interval}}]))"
    ),
    "request-duration": (
        "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket"
        f"{{{_SELECT}}}[{{interval}}])) by (le))"
    ),
}


def promql(check: PrometheusCheck, *, namespace: str, workload: str, interval: str) -> str:
    """The check's query with {namespace}, {workload} and {interval} filled in."""
    text = TEMPLATES[check.template] if check.template else (check.query or "")
    for key, value in (("namespace", namespace), ("workload", workload), ("interval", interval)):
        text = text.replace("{" + key + "}", value)
    return text


def judge(name: str, check: PrometheusCheck, value: float | None) -> CheckResult:
    """A query result against the check's bounds and its no-data policy."""
    if value is None:
        ok = check.no_data == "skip"
        return CheckResult(name, ok, "no data" + (" (skipped)" if ok else ""))
    if check.min is not None and value < check.min:
        return CheckResult(name, False, f"{value:g} is below the minimum {check.min:g}", value)
    if check.max is not None and value > check.max:
        return CheckResult(name, False, f"{value:g} is above the maximum {check.max:g}", value)
    return CheckResult(name, True, f"{value:g}", value)


def judge_http(name: str, check: HttpCheck, status: int, first_line: str) -> CheckResult:
    """An HTTP answer against the expected status."""
    ok = status == check.status
    detail = f"HTTP {status}" + (f" ({first_line[:80]})" if first_line and not ok else "")
    return CheckResult(name, ok, detail if ok else f"{detail}, expected {check.status}")
