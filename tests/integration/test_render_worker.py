"""Jinja renders of pushed templates in the server's worker processes (deployer/pipeline/worker.py): the same
objects as in-process, and a template that loops is stopped at the limit, its worker killed, while the event loop
(and so /healthz, other pushes, hooks) goes on answering."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from support import EXAMPLES

from deployer.config import RepoFiles, load_deploy_config
from deployer.errors import DeployError
from deployer.pipeline import render_environment
from deployer.pipeline.worker import RenderPool

LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n"


def app(tmp_path: Path, extra: str | None = None) -> RepoFiles:
    repo = tmp_path / "hello-jinja"
    shutil.copytree(EXAMPLES / "hello-jinja", repo)
    if extra is not None:
        (repo / "templates" / "loop.yaml.j2").write_text(extra)
    return RepoFiles(repo)


async def render(repo: RepoFiles, pool: RenderPool | None) -> list[dict[str, object]]:
    config = load_deploy_config(repo)
    rendered = await render_environment(repo=repo, config=config, environment="staging", commit="c0ffee", worker=pool)
    return rendered.manifests


def test_the_worker_renders_what_the_process_renders(tmp_path: Path) -> None:
    repo = app(tmp_path)
    pool = RenderPool(timeout=60)
    try:
        assert asyncio.run(render(repo, pool)) == asyncio.run(render(repo, None))
    finally:
        pool.close()


def test_a_looping_template_is_stopped_at_the_limit_and_the_loop_keeps_answering(tmp_path: Path) -> None:
    repo = app(tmp_path, LOOP)
    pool = RenderPool(timeout=3)

    async def race() -> tuple[float, float, list[int]]:
        lag, done = 0.0, asyncio.Event()

        async def ticker() -> None:  # what /healthz needs: the loop free to run a coroutine every few ms
            nonlocal lag
            while not done.is_set():
                before = time.monotonic()
                await asyncio.sleep(0.005)
                lag = max(lag, time.monotonic() - before - 0.005)

        tick = asyncio.create_task(ticker())
        started = time.monotonic()
        workers: list[int] = []
        try:
            with pytest.raises(DeployError) as stopped:
                render_task = asyncio.create_task(render(repo, pool))
                await asyncio.sleep(1.0)
                workers = pool.pids()
                await render_task
        finally:
            done.set()
            await tick
        assert str(stopped.value) == (
            "templates: rendering took longer than 3s (the server's limits.renderTimeout) and was stopped: "
            "a template loops, or does far too much"
        )
        return time.monotonic() - started, lag, workers

    try:
        elapsed, lag, workers = asyncio.run(race())
        assert elapsed < 10
        assert lag < 0.1, f"the event loop stalled for {lag * 1000:.0f} ms"
        assert workers, "the render ran in a worker process"
        time.sleep(0.5)
        for pid in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)  # killed, not left burning a core
        (Path(repo.root) / "templates" / "loop.yaml.j2").unlink()
        assert asyncio.run(render(repo, pool)), "the next render gets a fresh worker"
    finally:
        pool.close()
