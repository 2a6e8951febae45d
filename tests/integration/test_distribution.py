"""What the deployer ships: its wheel (what `make image` installs) carries neither kube-sandbox nor the docker SDK."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from support import ROOT


def test_the_wheel_has_no_sandbox_and_no_docker_sdk(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("deployer-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = Parser().parsestr(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    packages = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert packages == {"deployer"}
    assert "deployer/cli/__init__.py" in names
    requires = [
        r.split(";")[0].split(">")[0].split("<")[0].split("=")[0].strip() for r in metadata.get_all("Requires-Dist")
    ]
    runtime = [r for r, line in zip(requires, metadata.get_all("Requires-Dist"), strict=True) if "extra ==" not in line]
    assert "pyhelm3" in runtime  # the parse is right
    assert "docker" not in runtime and "kube-sandbox" not in runtime
