"""Helpers for tests: run `deployer` as a user does, and edit files in copied example repos."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kube_sandbox.testing.registry import Registry, free_port, start_registry

from deployer.cli import main

__all__ = ["Registry", "free_port", "start_registry"]  # the registry helpers are kube-sandbox's; tests import them here

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
STATE = Path(os.environ.get("DEPLOYER_STATE_DIR", ROOT / ".state"))
# buildah on the project's own storage, where `make setup` put the examples' base image
BUILDAH = [
    "buildah",
    "--root",
    str(STATE / "containers" / "storage"),
    "--runroot",
    str(STATE / "containers" / "run"),
    "--storage-driver",
    "overlay",
]


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The single line a user reads on failure (asserting there is exactly one)."""
        lines = [line for line in self.err.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one error line, got: {self.err!r}"
        assert "Traceback" not in self.err
        return lines[0]


def run_deployer(*args: str | Path) -> Result:
    """`deployer ARGS` in-process: exit code, stdout and stderr as the user would see them."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return Result(code, out.getvalue(), err.getvalue())


def run_deployer_process(*args: str | Path, cwd: Path | None = None) -> Result:
    """`deployer ARGS` as a separate process through the installed console script."""
    exe = shutil.which("deployer", path=str(Path(sys.executable).parent)) or "deployer"
    proc = subprocess.run(
        [exe, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        env={**os.environ, "DEPLOYER_DEBUG": ""},
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def edit(path: Path, old: str, new: str) -> None:
    """Replace `old` (which must occur) with `new` in a file."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def push_base_image(registry: Registry, name: str = "busybox:1.35") -> str:
    """The examples' local base image, pushed into `registry`; its reference there."""
    target = f"{registry.host}/{name}"
    subprocess.run(
        [*BUILDAH, "push", "--quiet", "--tls-verify=false", "localhost/deployer/busybox:1.35", f"docker://{target}"],
        check=True,
        capture_output=True,
    )
    return target


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=dev@example.com", "-c", "user.name=dev", "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")
