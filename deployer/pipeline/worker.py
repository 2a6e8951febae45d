"""Rendering pushed templates off the server's event loop, in worker processes with limits.

Jinja templates are pushed content: a loop of loops renders for ever and the sandbox cannot stop it, and
rendering in the server's own process would stall every push, hook and /healthz meanwhile. So the server renders
them in a small pool of worker processes (spawned: a fresh interpreter, never a fork of the threaded server),
each under an address-space limit, with a wall-clock limit per render: past it, the pool's processes are killed
(SIGKILL) and a new pool starts with the next render. Helm renders in its own process already (deployer/helm).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from deployer.config.repo import RepoFiles
from deployer.errors import DeployError


def _limit(memory_bytes: int) -> None:
    """In each worker, before any render: its address space is capped (a template that builds a huge value
    fails with MemoryError, which is reported, instead of swapping the server's machine)."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def render_templates(root: str, templates_dir: str, context: dict[str, Any]) -> list[tuple[str, str]] | DeployError:
    """(template name, rendered text) of every template; a DeployError is returned, not raised, so that it
    crosses the process boundary as the value it is."""
    from deployer.render import jinja  # noqa: PLC0415 - Jinja loads only where templates render

    try:
        repo = RepoFiles(Path(root))
        env = jinja.make_environment(repo, templates_dir)
        return [(name, jinja.render_template(env, name, context)) for name in jinja.template_names(repo, templates_dir)]
    except DeployError as exc:
        return exc
    except MemoryError:
        return DeployError(
            "rendering used more memory than the server allows (limits.renderMemoryMb)", where=templates_dir
        )


class RenderPool:
    """Worker processes for Jinja renders; `render` is awaited on the event loop and never blocks it."""

    def __init__(self, *, timeout: float = 30.0, memory_mb: int = 1024, workers: int = 2) -> None:
        self.timeout, self.memory_mb, self.workers = timeout, memory_mb, workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_limit,
                initargs=(self.memory_mb * 2**20,),
            )
        return self._pool

    async def render(self, repo: RepoFiles, templates_dir: str, context: dict[str, Any]) -> list[tuple[str, str]]:
        loop = asyncio.get_running_loop()
        pool = self._executor()
        future = loop.run_in_executor(pool, render_templates, str(repo.root), templates_dir, context)
        try:
            result = await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            self.kill()
            raise DeployError(
                f"rendering took longer than {self.timeout:g}s (the server's limits.renderTimeout) and was stopped: "
                "a template loops, or does far too much",
                where=templates_dir,
            ) from None
        except BrokenProcessPool:
            self.kill()
            raise DeployError("the render worker died (out of memory?)", where=templates_dir) from None
        if isinstance(result, DeployError):
            raise result
        return result

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and diagnostics)."""
        processes = getattr(self._pool, "_processes", None) or {}
        return [p.pid for p in processes.values() if p.pid is not None]

    def kill(self) -> None:
        """Stop every worker at once (a render past its limit is not waited for); the next render starts anew."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for process in (getattr(pool, "_processes", None) or {}).values():
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
