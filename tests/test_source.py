"""The build source on Pythons without tarfile's extraction filters (Debian bookworm's 3.11.2, the image's):
the same refusals, by hand."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from deployer.build.source import _inside
from deployer.errors import DeployError


def member(name: str, *, symlink_to: str | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    if symlink_to is not None:
        info.type, info.linkname = tarfile.SYMTYPE, symlink_to
    return info


def test_members_inside_the_tree_pass(tmp_path: Path) -> None:
    for item in (member("app/www/index.html"), member("app/current", symlink_to="www/index.html")):
        assert _inside(item, tmp_path) is item


@pytest.mark.parametrize(
    "item",
    [member("/etc/passwd"), member("../outside"), member("app/leak", symlink_to="../../etc/shadow")],
    ids=["absolute", "dot-dot", "symlink out"],
)
def test_members_leaving_the_tree_are_refused(tmp_path: Path, item: tarfile.TarInfo) -> None:
    with pytest.raises(DeployError, match="would be written outside the build tree"):
        _inside(item, tmp_path)
