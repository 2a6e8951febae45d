"""Build benchmarks, medians of several runs: a cold build, a cached rebuild (a new commit), a skipped re-push,
and plain `buildah bud` of the same context side by side. Needs `make setup` (buildah, docker-registry).

Usage: .venv/bin/python bench/build.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from deployer.build import BuildahBuilder, RegistryClient
from deployer.pipeline import BuildSettings, build_image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from runs import repeat, report  # noqa: E402
from support import start_registry  # noqa: E402


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=b@b", "-c", "user.name=bench", *args],
        check=True,
        capture_output=True,
    )


def one_run(tmp: Path) -> dict[str, float]:
    storage = tmp / "containers"  # fresh storage holding only the base image: the first build is cold
    subprocess.run(
        [str(ROOT / "scripts" / "base-image")],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "DEPLOYER_STATE_DIR": str(tmp)},
    )
    registry = start_registry(tmp / "registry")
    host = registry.host
    try:
        repo = tmp / "app"
        shutil.copytree(ROOT / "examples" / "hello", repo)
        text = (repo / "deploy.yaml").read_text().replace("127.0.0.1:5000", host)
        (repo / "deploy.yaml").write_text(text)
        git(repo, "init", "-q")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "one")
        settings = BuildSettings(builder=BuildahBuilder(storage=storage), registry=RegistryClient())

        def timed() -> float:
            started = time.perf_counter()
            asyncio.run(build_image(repo=repo, ref="HEAD", settings=settings))
            return (time.perf_counter() - started) * 1000

        cold = timed()
        skipped = timed()
        (repo / "app" / "status").write_text("200\n\n")
        git(repo, "commit", "-qam", "two")
        cached = timed()
        base = [
            "buildah",
            "--root",
            str(storage / "storage"),
            "--runroot",
            str(storage / "run"),
            "--storage-driver",
            "overlay",
        ]
        started = time.perf_counter()
        subprocess.run(
            [*base, "bud", "--isolation", "chroot", "--layers", "-t", "bench:plain", str(repo)],
            check=True,
            capture_output=True,
        )
        plain = (time.perf_counter() - started) * 1000
        return {
            "cold build (build + push)": cold,
            "cached rebuild, new commit": cached,
            "skipped re-push": skipped,
            "plain `buildah bud --layers` (cached)": plain,
        }
    finally:
        registry.process.terminate()
        registry.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    report(
        f"image builds of examples/hello with buildah and a local docker-registry, median of {args.runs} runs",
        repeat(one_run, args.runs),
        width=40,
        spec="8.0f",
        unit=" ms",
    )


if __name__ == "__main__":
    main()
