"""Charts from OCI registries (`render.helm.chart: oci://HOST/PATH/NAME` with an exact `version`).

The server pulls only from the registries server.yaml lists (`charts.registries`), with its credentials
(`charts.authFile`), never anything a push names beyond that. The version is resolved to its manifest digest
first (one HEAD); a chart already pulled at that digest is reused from the cache under the data directory
(`charts/sha256-<hex>`), otherwise helm pulls it and the digest helm reports must be the one resolved.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deployer.build.registry import RegistryClient, Repository
from deployer.config.load import DEPLOY_FILE
from deployer.config.model import OCI_CHART
from deployer.errors import DeployError
from deployer.events import Event, EventSink, discard

if TYPE_CHECKING:
    from deployer.helm import Helm  # the caller's: pyhelm3 loads only where a chart is rendered


@dataclass(frozen=True)
class ChartRegistries:
    """Where oci:// charts may come from and how they are fetched."""

    registry: RegistryClient
    allowed: frozenset[str] | None = None  # registry hosts; None: any (the CLI's operator chooses)
    cache: Path | None = None  # None: pulled afresh each time, into the caller's directory
    auth_file: Path | None = None

    async def fetch(self, helm: Helm, ref: str, version: str, *, scratch: Path, sink: EventSink = discard) -> Path:
        """The chart's directory for `ref` at `version`: from the cache, or pulled by helm."""
        found = OCI_CHART.match(ref)
        if found is None:
            raise DeployError(f"{ref!r} is not an oci:// chart", where=f"{DEPLOY_FILE}: render.helm.chart")
        host, path = found.group(1), found.group(2)
        if self.allowed is not None and host not in self.allowed:
            listed = ", ".join(sorted(self.allowed)) or "none"
            raise DeployError(
                f"charts may not come from {host}: server.yaml charts.registries allows {listed}",
                where=f"{DEPLOY_FILE}: render.helm.chart",
            )
        repository = Repository(host, path)
        digest = await self.registry.digest(repository, version.replace("+", "_"))  # OCI tags have no '+'
        if digest is None:
            raise DeployError(f"{ref} has no version {version}", where=f"{DEPLOY_FILE}: render.helm.version")
        cached = self.cache / digest.replace(":", "-") if self.cache is not None else None
        if cached is not None and (cached / "Chart.yaml").is_file():
            sink(Event("render", f"chart {ref}:{version} ({digest[:19]}) from the cache"))
            return cached
        pulled_into = Path(tempfile.mkdtemp(prefix="chart-", dir=scratch))
        chart, pulled = await helm.pull(
            ref,
            version,
            into=pulled_into,
            plain_http=self.registry.scheme(host) == "http",
            registry_config=self.auth_file,
        )
        if pulled != digest:
            raise DeployError(
                f"{ref}:{version} changed while it was pulled ({digest} became {pulled}); push again",
                where=f"{DEPLOY_FILE}: render.helm.version",
            )
        sink(Event("render", f"chart {ref}:{version} pulled ({digest[:19]})"))
        if cached is None:
            return chart
        cached.parent.mkdir(parents=True, exist_ok=True)
        staging = cached.with_name(cached.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.move(str(chart), staging)
        try:
            staging.rename(cached)
        except OSError:  # another push cached it meanwhile: theirs is the same digest
            shutil.rmtree(staging, ignore_errors=True)
        return cached
