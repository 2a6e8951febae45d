"""The build source: exactly the tree of the pushed commit (`git archive`), never a working copy."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path

from deployer.errors import DeployError

ZERO = "0" * 40
GitEnv = Mapping[str, str]


async def _run(repo: Path, args: tuple[str, ...], env: GitEnv | None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "git",
        "-C",
        str(repo),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env} if env else None,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out, err


async def git(repo: Path, *args: str, env: GitEnv | None = None) -> bytes:
    """Run git in `repo`; `env` adds variables (a pre-receive hook's quarantine: GIT_OBJECT_DIRECTORY...)."""
    code, out, err = await _run(repo, args, env)
    if code != 0:
        raise DeployError(f"git {args[0]} failed: {' '.join(err.decode(errors='replace').split())}", where=str(repo))
    return out


async def resolve_commit(repo: Path, ref: str, *, env: GitEnv | None = None) -> str:
    """The full SHA of `ref` in `repo` (a work tree or a bare repository)."""
    try:
        return (await git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", env=env)).decode().strip()
    except DeployError:
        raise DeployError(f"no commit {ref!r} in the repository", where=str(repo)) from None


async def read_at(repo: Path, commit: str, path: str, *, env: GitEnv | None = None) -> str | None:
    """The text of `path` at `commit`, or None if the commit has no such file."""
    code, out, _ = await _run(repo, ("cat-file", "blob", f"{commit}:{path}"), env)
    return out.decode(errors="replace") if code == 0 else None


async def ref_value(repo: Path, ref: str) -> str:
    """The commit `ref` points at, or ZERO if there is no such ref."""
    try:
        return await resolve_commit(repo, ref)
    except DeployError:
        return ZERO


async def is_ancestor(repo: Path, older: str, newer: str, *, env: GitEnv | None = None) -> bool:
    """`older` is in the history of `newer`."""
    code, _, _ = await _run(repo, ("merge-base", "--is-ancestor", older, newer), env)
    return code == 0


async def export_commit(repo: Path, commit: str, dest: Path, *, env: GitEnv | None = None) -> Path:
    """Write the tree of `commit` into `dest` (files, symlinks and modes as committed) and return `dest`;
    a symlink leading outside the tree is refused, naming its path."""
    archive = await git(repo, "archive", "--format=tar", commit, env=env)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        # Checked by hand on every Python: the "tar" filter keeps modes but also keeps symlinks that point outside
        # the destination (only the "data" filter refuses those, and it changes modes); Debian bookworm's 3.11.2
        # has no filters at all.
        members = [_inside(member, dest) for member in tar.getmembers()]
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(dest, members=members, filter="tar")
        else:
            tar.extractall(dest, members=members)  # noqa: S202 - every member checked above
    return dest


def _inside(member: tarfile.TarInfo, dest: Path) -> tarfile.TarInfo:
    """`member` if it and any link it makes stay inside `dest` (what the "tar" extraction filter checks)."""
    root = dest.resolve()
    target = (root / member.name).resolve()
    link = (target.parent / member.linkname).resolve() if member.issym() else (root / member.linkname).resolve()
    if member.name.startswith("/") or not target.is_relative_to(root) or member.isdev():
        raise DeployError(f"{member.name!r} would be written outside the build tree", where="git archive")
    if (member.issym() or member.islnk()) and not link.is_relative_to(root):
        raise DeployError(
            f"{member.name!r} is a link to {member.linkname!r}, outside the repository: refused "
            "(the build would read whatever it names on the build machine)",
            where=member.name,
        )
    return member


def tree_size(path: Path) -> int:
    """Bytes in the regular files below `path` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            entry = Path(root, name)
            if not entry.is_symlink():
                total += entry.stat().st_size
    return total
