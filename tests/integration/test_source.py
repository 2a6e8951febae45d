"""The build source keeps the committed tree inside itself: absolute paths, `..` and links out of the tree are
refused on every Python (tarfile's "tar" filter keeps links out; Debian bookworm's 3.11.2 has no filters)."""

from __future__ import annotations

import asyncio
import subprocess
import tarfile
from pathlib import Path

import pytest

from deployer.build.source import _inside, export_commit
from deployer.errors import DeployError


def member(name: str, *, symlink_to: str | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    if symlink_to is not None:
        info.type, info.linkname = tarfile.SYMTYPE, symlink_to
    return info


def test_members_inside_the_tree_pass(tmp_path: Path) -> None:
    for item in (member("app/www/index.html"), member("app/current", symlink_to="www/index.html")):
        assert _inside(item, tmp_path) is item


@pytest.mark.parametrize("item", [member("/etc/passwd"), member("../outside")], ids=["absolute", "dot-dot"])
def test_members_leaving_the_tree_are_refused(tmp_path: Path, item: tarfile.TarInfo) -> None:
    with pytest.raises(DeployError, match="would be written outside the build tree"):
        _inside(item, tmp_path)


def test_a_symlink_out_of_the_repository_is_refused_naming_its_path(tmp_path: Path) -> None:
    """On every Python: tarfile's "tar" filter would keep it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    (repo / "Dockerfile").write_text("FROM scratch\nCOPY leak /leak\n")
    (repo / "leak").symlink_to("../../../../etc/shadow")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "leak"], check=True)
    with pytest.raises(DeployError) as caught:
        asyncio.run(export_commit(repo, "HEAD", tmp_path / "out"))
    assert str(caught.value) == (
        "leak: 'leak' is a link to '../../../../etc/shadow', outside the repository: refused "
        "(the build would read whatever it names on the build machine)"
    )
    assert not (tmp_path / "out" / "leak").exists()
