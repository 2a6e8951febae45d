"""The build source: exactly the tree of the pushed commit (`git archive`), never a working copy."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from pathlib import Path

from deployer.errors import DeployError


async def _git(repo: Path, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "git", "-C", str(repo), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DeployError(f"git {args[0]} failed: {' '.join(err.decode(errors='replace').split())}", where=str(repo))
    return out


async def resolve_commit(repo: Path, ref: str) -> str:
    """The full SHA of `ref` in `repo` (a work tree or a bare repository)."""
    try:
        return (await _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")).decode().strip()
    except DeployError:
        raise DeployError(f"no commit {ref!r} in the repository", where=str(repo)) from None


async def export_commit(repo: Path, commit: str, dest: Path) -> Path:
    """Write the tree of `commit` into `dest` (files, symlinks and modes as committed) and return `dest`."""
    archive = await _git(repo, "archive", "--format=tar", commit)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        tar.extractall(dest, filter="tar")  # "tar" keeps modes; it refuses absolute paths and links out of dest
    return dest


def tree_size(path: Path) -> int:
    """Bytes in the regular files below `path` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            entry = Path(root, name)
            if not entry.is_symlink():
                total += entry.stat().st_size
    return total
