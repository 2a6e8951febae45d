"""Render benchmarks: medians of several runs, side by side with what a user would run instead.

1. Helm mode: the deployer's render through pyhelm3 vs bare `helm template` on the same chart and values.
   Goal: overhead ratio <= 1.1.
2. Native mode: Jinja2 rendering of examples/hello-jinja. Goal: <= 20 ms.

Usage: .venv/bin/python bench/render.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deployer.config import RepoFiles, load_deploy_config
from deployer.helm import Helm
from deployer.pipeline import render_environment
from deployer.render import jinja
from deployer.render.manifests import parse_objects

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0" * 40


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up: imports, schema cache, page cache
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def helm_mode(runs: int) -> None:
    repo = RepoFiles(ROOT / "examples" / "hello")
    config = load_deploy_config(repo)
    helm = Helm()
    rendered = asyncio.run(render_environment(repo=repo, config=config, environment="prod", commit=COMMIT, helm=helm))
    chart = repo.root / "charts" / "hello"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump({k: v for k, v in rendered.values.items()}, handle)
        values_file = handle.name

    def bare() -> None:
        subprocess.run(
            [
                helm.executable,
                "template",
                "hello",
                str(chart),
                "--namespace",
                "hello-prod",
                "-f",
                values_file,
            ],
            check=True,
            capture_output=True,
        )

    def through_pyhelm3() -> None:
        asyncio.run(
            helm.template(
                chart_dir=chart,
                chart_label="charts/hello",
                release="hello",
                namespace="hello-prod",
                values=rendered.values,
            )
        )

    def full() -> None:
        asyncio.run(render_environment(repo=repo, config=config, environment="prod", commit=COMMIT, helm=helm))

    bare_ms = median_ms(bare, runs)
    ours_ms = median_ms(through_pyhelm3, runs)
    full_ms = median_ms(full, runs)
    print(f"helm mode, examples/hello prod, median of {runs} runs")
    print(f"  bare `helm template -f values.json`        {bare_ms:8.1f} ms")
    print(
        f"  deployer via pyhelm3 template_resources    {ours_ms:8.1f} ms   overhead ratio {ours_ms / bare_ms:.2f}"
        "  (goal <= 1.1)"
    )
    print(f"  deployer full render step (values, helm, parse, order, schema validation) {full_ms:8.1f} ms")


def jinja_mode(runs: int) -> None:
    repo = RepoFiles(ROOT / "examples" / "hello-jinja")
    config = load_deploy_config(repo)
    context = {
        "values": {
            "replicas": 3,
            "port": 8080,
            "env": {"A": "b"},
            "hosts": ["h.example.com"],
            "resources": {"limits": {"memory": "64Mi"}},
        },
        "deployer": {"commit": COMMIT, "image": {"ref": "r:t"}},
        "app": "hello-jinja",
        "environment": "prod",
        "namespace": "ns",
        "release": {"name": "hello-jinja", "namespace": "ns"},
    }

    def templates_only() -> None:
        env = jinja.make_environment(repo, "templates")
        for name in jinja.template_names(repo, "templates"):
            parse_objects(jinja.render_template(env, name, context), source=name)

    def full() -> None:
        asyncio.run(render_environment(repo=repo, config=config, environment="prod", commit=COMMIT))

    print(f"native mode, examples/hello-jinja prod, median of {runs} runs")
    print(f"  Jinja2 templates rendered and parsed       {median_ms(templates_only, runs):8.1f} ms   (goal <= 20 ms)")
    print(
        f"  deployer full render step (values, templates, parse, order, schema validation) "
        f"{median_ms(full, runs):8.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    helm_mode(args.runs)
    jinja_mode(args.runs)


if __name__ == "__main__":
    main()
