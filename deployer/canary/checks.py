"""The checks' pure parts: PromQL from templates, and judging a value against a check's bounds."""

from __future__ import annotations

from deployer.config.model import HttpCheck, PrometheusCheck
from deployer.events import CheckResult

_SELECT = 'reporter="destination",destination_workload_namespace="{namespace}",destination_workload=~"{workload}"'
TEMPLATES = {
    # Istio's standard metrics, as Flagger's built-in checks query them
    # "or on() vector(0)": a canary answering nothing but 5xx has no non-5xx series at all, and must score 0, not
    # "no data" (with no requests at all, the denominator is empty and the result is still no data)
    "request-success-rate": (
        f'(sum(rate(istio_requests_total{{{_SELECT},response_code!~"5.*"}}[{{window}}])) or on() vector(0)) / '
        f"sum(rate(istio_requests_total{{{_SELECT}}}[{{window}}]))"
    ),
    "request-duration": (
        "histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket"
        f"{{{_SELECT}}}[{{window}}])) by (le))"
    ),
}


# Whether the canary had any request in the window: `noData: skip` is honoured only then.
TRAFFIC = f"sum(increase(istio_requests_total{{{_SELECT}}}[{{window}}]))"


def promql(check: PrometheusCheck, *, namespace: str, workload: str, template: str | None = None) -> str:
    """The check's query (or `template`) with {namespace}, {workload} and {window} (or {interval}) filled in."""
    text = template or (TEMPLATES[check.template] if check.template else (check.query or ""))
    window = f"{max(int(check.window), 1)}s"
    for key, value in (("namespace", namespace), ("workload", workload), ("window", window), ("interval", window)):
        text = text.replace("{" + key + "}", value)
    return text


def _bounds(check: PrometheusCheck) -> str:
    if check.min is not None and check.max is not None:
        return f"{check.min:g} to {check.max:g}"
    if check.min is not None:
        return f">= {check.min:g}"
    return f"<= {check.max:g}" if check.max is not None else ""


def judge(name: str, check: PrometheusCheck, value: float | None, *, requests: float | None = None) -> CheckResult:
    """A query result against the check's bounds and its no-data policy (`requests`: the canary's requests in
    the window, asked only when there is no data)."""
    limit = _bounds(check)
    if value is None:
        if check.no_data == "skip" and requests:
            return CheckResult(name, True, f"no data (skipped: the canary had {requests:g} requests)", limit=limit)
        if check.no_data == "skip":
            why = "no data, and the canary had no requests in the window: nothing to judge"
            return CheckResult(name, False, why, limit=limit)
        return CheckResult(name, False, "no data", limit=limit)
    if check.min is not None and value < check.min:
        return CheckResult(name, False, f"{value:g} is below the minimum {check.min:g}", value, limit)
    if check.max is not None and value > check.max:
        return CheckResult(name, False, f"{value:g} is above the maximum {check.max:g}", value, limit)
    return CheckResult(name, True, f"{value:g}", value, limit)


def judge_http(name: str, check: HttpCheck, status: int, first_line: str) -> CheckResult:
    """An HTTP answer against the expected status."""
    ok = status == check.status
    detail = f"HTTP {status}" + (f" ({first_line[:80]})" if first_line and not ok else "")
    message = detail if ok else f"{detail}, expected {check.status}"
    return CheckResult(name, ok, message, float(status), f"HTTP {check.status}")
