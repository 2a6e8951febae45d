"""Read-only, path-checked access to a pushed app repository.

Everything deploy.yaml names comes from a push, so every path must stay inside the repo: no absolute
paths, no `..`, no symlink that leads out. This is the only place that turns such a path into a file.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from deployer.errors import DeployError

MAX_FILE_BYTES = 4 * 1024 * 1024


def check_relative(path: str, *, where: str) -> PurePosixPath:
    """Syntactic check: a relative, forward-slash path without `..`; raises DeployError naming `where`."""
    if not path or "\x00" in path:
        raise DeployError(f"path {path!r} is empty or invalid", where=where)
    if path.startswith("/") or PurePosixPath(path).is_absolute() or (len(path) > 1 and path[1] == ":"):
        raise DeployError(f"path {path!r} is absolute; expected a path relative to the repo", where=where)
    if "\\" in path:
        raise DeployError(f"path {path!r} contains a backslash; use '/'", where=where)
    pure = PurePosixPath(path)
    if ".." in pure.parts:
        raise DeployError(f"path {path!r} leaves the repo ('..' is not allowed)", where=where)
    return pure


class RepoFiles:
    """One app repository on disk (a checkout or an exported commit)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def __repr__(self) -> str:
        return f"RepoFiles({str(self.root)!r})"

    def resolve(self, path: str, *, where: str) -> Path:
        """The real path of `path` (existing or not), refused unless it stays inside the repo."""
        pure = check_relative(path, where=where)
        real = Path(os.path.realpath(self.root.joinpath(*pure.parts)))
        if real != self.root and not real.is_relative_to(self.root):
            raise DeployError(f"path {path!r} resolves outside the repo through a symlink", where=where)
        return real

    def file(self, path: str, *, where: str, what: str = "file") -> Path:
        """An existing regular file inside the repo."""
        real = self.resolve(path, where=where)
        if not real.is_file():
            state = "is not a file" if real.exists() else "does not exist"
            raise DeployError(f"{what} {path!r} {state} in the repo", where=where)
        return real

    def directory(self, path: str, *, where: str, what: str = "directory", check_tree: bool = True) -> Path:
        """An existing directory inside the repo; with `check_tree`, none of its symlinks may lead out."""
        real = self.resolve(path, where=where)
        if not real.is_dir():
            state = "is not a directory" if real.exists() else "does not exist"
            raise DeployError(f"{what} {path!r} {state} in the repo", where=where)
        if check_tree:
            self._check_tree(real, where=where)
        return real

    def read_text(self, path: str, *, where: str, what: str = "file") -> str:
        """The UTF-8 text of a file inside the repo."""
        real = self.file(path, where=where, what=what)
        if real.stat().st_size > MAX_FILE_BYTES:
            raise DeployError(f"{what} {path!r} is larger than {MAX_FILE_BYTES} bytes", where=where)
        try:
            return real.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DeployError(
                f"{what} {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})", where=path
            ) from None

    def relative(self, real: Path) -> str:
        """`real` as a repo-relative posix path, for messages."""
        return real.relative_to(self.root).as_posix() if real.is_relative_to(self.root) else str(real)

    def _check_tree(self, top: Path, *, where: str) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [*dirnames, *filenames]:
                entry = Path(dirpath, name)
                if entry.is_symlink():
                    target = Path(os.path.realpath(entry))
                    if not target.is_relative_to(self.root):
                        raise DeployError(
                            f"{self.relative(entry)!r} is a symlink that leads outside the repo", where=where
                        )
