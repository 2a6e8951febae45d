"""Prometheus checks against a real Prometheus (Debian's), scraping an exporter of Istio's metrics the test controls."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from kube_sandbox.testing import Running
from support import edit, free_port
from test_release import TEMPLATES, deploy_yaml, image_of, secrets_status
from test_release import deploy as release_deploy

pytestmark = [pytest.mark.cluster, pytest.mark.skipif(not shutil.which("prometheus"), reason="prometheus: make setup")]


@dataclass
class Exporter:
    """Istio's istio_requests_total for `shop-canary`, growing at every scrape; `errors` is the 5xx share."""

    namespace: str = ""
    errors: float = 0.0
    silent: bool = False
    counts: dict[str, float] = field(default_factory=lambda: {"200": 0.0, "500": 0.0})

    async def metrics(self, request: web.Request) -> web.Response:
        lines = ["# TYPE istio_requests_total counter"]
        if not self.silent:
            self.counts["500"] += 10 * self.errors
            self.counts["200"] += 10 * (1 - self.errors)
            for code, value in self.counts.items():
                labels = (
                    f'reporter="destination",destination_workload="shop-canary",'
                    f'destination_workload_namespace="{self.namespace}",response_code="{code}"'
                )
                lines.append(f"istio_requests_total{{{labels}}} {value}")
        return web.Response(text="\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Exporter]]:
    yield from _prometheus(tmp_path_factory, scrape="500ms", warm="count_over_time(up[10s])", scrapes=3)


@pytest.fixture(scope="module")
def prometheus_15s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Exporter]]:
    """Scraping as production Prometheuses commonly do, every 15 s; ready once it scraped twice."""
    yield from _prometheus(tmp_path_factory, scrape="15s", warm="count_over_time(up[1m])", scrapes=2)


def _prometheus(
    tmp_path_factory: pytest.TempPathFactory, *, scrape: str, warm: str, scrapes: int
) -> Iterator[tuple[str, Exporter]]:
    exporter = Exporter()
    port, loop = free_port(), asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/metrics", exporter.metrics)
    runner = web.AppRunner(app)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yml").write_text(
        json.dumps(
            {
                "global": {"scrape_interval": scrape, "evaluation_interval": scrape},
                "scrape_configs": [{"job_name": "mesh", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
            }
        )
    )
    web_port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{web_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{web_port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # ready, and the exporter scraped a few times (the first scrape is late)
        try:
            with urllib.request.urlopen(f"{url}/api/v1/query?query={warm}", timeout=1) as answer:
                result = json.load(answer)["data"]["result"]
            if result and float(result[0]["value"][1]) >= scrapes:
                break
        except OSError:
            pass
        time.sleep(0.2)
    yield url, exporter
    proc.terminate()
    proc.wait(timeout=10)
    loop.call_soon_threadsafe(loop.stop)


def app_with(tmp_path: Path, namespace: str, checks: str) -> Path:
    repo = tmp_path / "shop"
    (repo / "templates").mkdir(parents=True)
    text = deploy_yaml(namespace).replace("threshold: 2,", f"threshold: 1, checks: [{checks}],")
    text = text.replace("interval: 300ms", "interval: 2s")
    (repo / "deploy.yaml").write_text(text)
    (repo / "Dockerfile").write_text("FROM scratch\n")
    for name, body in TEMPLATES.items():
        (repo / "templates" / name).write_text(body)
    return repo


def deploy(app: Path, cluster: Running, version: str, *, url: str) -> tuple[int, str, str]:
    # this Prometheus scrapes every 500ms, as the deployer is told: windows of 2s see four scrapes
    return release_deploy(app, cluster, version, "--prometheus", url, "--scrape-interval", "500ms")


SUCCESS_RATE = "{name: success-rate, retries: 0, prometheus: {template: request-success-rate, window: 2s, min: 0.9}}"


def test_a_success_rate_below_the_threshold_rolls_back(
    cluster: Running, namespace: str, tmp_path: Path, prometheus: tuple[str, Exporter]
) -> None:
    url, exporter = prometheus
    exporter.namespace, exporter.silent = namespace, False
    app = app_with(tmp_path, namespace, SUCCESS_RATE)
    assert deploy(app, cluster, "v1", url=url)[0] == 0
    exporter.errors = 0.0
    code, out, err = deploy(app, cluster, "v2", url=url)
    assert code == 0, err
    assert "check success-rate: ok 1" in out
    exporter.errors = 0.5
    code, out, err = deploy(app, cluster, "v3", url=url)
    assert code == 1
    assert "success-rate: 0.5 is below the minimum 0.9" in err
    assert image_of(cluster.api(), namespace, "shop-primary") == "127.0.0.1:5000/shop:v2"
    assert secrets_status(cluster.api(), namespace)["3"] == "rolled-back"


@pytest.mark.parametrize(
    ("check", "silent", "outcome", "seen"),
    [
        # no requests reached the canary: silence is nothing to judge, whatever noData says
        (
            SUCCESS_RATE.replace("min: 0.9}", "min: 0.9, noData: skip}"),
            True,
            1,
            "success-rate: no data, and the canary had no requests in the window: nothing to judge",
        ),
        # requests, but no latency histogram (e.g. a TCP port): skipped, as asked
        (
            "{name: latency, retries: 0, prometheus: {template: request-duration, window: 2s, max: 500, noData: skip}}",
            False,
            0,
            "check latency: ok no data (skipped: the canary had ",
        ),
        (SUCCESS_RATE, True, 1, "success-rate: no data"),
    ],
)
def test_no_data_fails_unless_skipped_and_skip_needs_requests(
    cluster: Running,
    namespace: str,
    tmp_path: Path,
    prometheus: tuple[str, Exporter],
    check: str,
    silent: bool,
    outcome: int,
    seen: str,
) -> None:
    url, exporter = prometheus
    exporter.namespace, exporter.silent, exporter.errors = namespace, silent, 0.0
    app = app_with(tmp_path, namespace, check)
    assert deploy(app, cluster, "v1", url=url)[0] == 0
    code, out, err = deploy(app, cluster, "v2", url=url)
    assert code == outcome, err
    assert seen in (out if outcome == 0 else err)


def test_a_window_shorter_than_two_scrapes_is_refused_before_anything(
    cluster: Running, namespace: str, tmp_path: Path, prometheus: tuple[str, Exporter]
) -> None:
    url, _ = prometheus
    app = app_with(tmp_path, namespace, SUCCESS_RATE.replace("window: 2s", "window: 20s"))
    code, _, err = release_deploy(app, cluster, "v1", "--prometheus", url, "--scrape-interval", "15s")
    assert code == 1
    assert err.strip() == (
        "error: deploy.yaml: environments.test.canary.checks[success-rate].prometheus.window: 20s is shorter "
        "than twice the scrape interval the server states (15s), so rate() would see nothing; use at least 30s"
    )
    assert secrets_status(cluster.api(), namespace) == {}


def test_a_one_minute_window_at_a_15s_scrape_promotes_a_good_canary_and_rolls_back_a_failing_one(
    cluster: Running, namespace: str, tmp_path: Path, prometheus_15s: tuple[str, Exporter]
) -> None:
    """The defaults a production Prometheus has: a 1m window over 15 s scrapes, and a canary interval of two
    scrapes, the least the deployer accepts (a new canary's series has its second sample a scrape later)."""
    url, exporter = prometheus_15s
    exporter.namespace, exporter.silent, exporter.errors = namespace, False, 0.0
    app = app_with(tmp_path, namespace, SUCCESS_RATE.replace("window: 2s", "window: 1m"))
    edit(app / "deploy.yaml", "steps: [20, 50], interval: 2s", "steps: [50], interval: 20s")
    scrape = ("--prometheus", url, "--scrape-interval", "15s")
    code, _, err = release_deploy(app, cluster, "v1", *scrape)
    assert code == 1
    assert "environments.test.canary.interval: 20s is shorter than twice the scrape interval" in err
    edit(app / "deploy.yaml", "interval: 20s", "interval: 30s")
    assert release_deploy(app, cluster, "v1", *scrape)[0] == 0
    code, out, err = release_deploy(app, cluster, "v2", *scrape)
    assert code == 0, err
    assert "check success-rate: ok 1" in out
    exporter.errors = 1.0  # every request of the canary fails from now on
    code, out, err = release_deploy(app, cluster, "v3", *scrape)
    assert code == 1
    assert "success-rate: " in err and "is below the minimum 0.9" in err
    assert image_of(cluster.api(), namespace, "shop-primary") == "127.0.0.1:5000/shop:v2"
