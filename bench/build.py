"""Build benchmarks, medians of several runs: a cold build, a cached rebuild (a new commit), a skipped re-push,
and plain `buildah bud` of the same context side by side. Needs `make setup` (buildah, docker-registry).

Usage: .venv/bin/python bench/build.py [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from deployer.build import BuildahBuilder, RegistryClient
from deployer.pipeline import BuildSettings, build_image

ROOT = Path(__file__).resolve().parent.parent


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=b@b", "-c", "user.name=bench", *args],
        check=True,
        capture_output=True,
    )


def registry(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp / "config.yml").write_text(
        json.dumps(
            {
                "version": 0.1,
                "http": {"addr": f"127.0.0.1:{port}"},
                "storage": {"filesystem": {"rootdirectory": str(tmp / "data")}},
            }
        )
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(tmp / "config.yml")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.5)
    return proc, f"127.0.0.1:{port}"


def one_run(tmp: Path) -> dict[str, float]:
    storage = tmp / "containers"  # fresh storage holding only the base image: the first build is cold
    subprocess.run(
        [str(ROOT / "scripts" / "base-image")],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "DEPLOYER_STATE_DIR": str(tmp)},
    )
    proc, host = registry(tmp)
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
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp)))
    print(f"image builds of examples/hello with buildah and a local docker-registry, median of {args.runs} runs")
    for key in runs[0]:
        print(f"  {key:40} {statistics.median(r[key] for r in runs):8.0f} ms")


if __name__ == "__main__":
    main()
