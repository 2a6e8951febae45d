"""Charts from registries: `render.helm.chart: oci://HOST/PATH/NAME` with an exact `version`, and the dependencies
of a chart in the repository (oci:// registries and https:// chart repositories).

The server pulls only from the registries server.yaml lists (`charts.registries`), with its credentials
(`charts.authFile`, a docker config.json: for oci:// registries and https:// chart repositories alike, by host),
never anything a push names beyond that. The version is resolved to its manifest digest
first (one HEAD); a chart already pulled at that digest is reused from the cache under the data directory
(`charts/sha256-<hex>`), otherwise helm pulls it and the digest helm reports must be the one resolved.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import yaml

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

    async def dependencies(self, helm: Helm, chart_dir: Path, *, chart_label: str, scratch: Path) -> Path:
        """A chart in the repository whose Chart.yaml has dependencies: a copy of it (the repository is never
        written) with charts/ built by helm from Chart.lock, each dependency from an allowed oci:// registry or
        https:// chart repository.
        A chart whose charts/ already holds its dependencies is used as it is."""
        where = f"{chart_label.rstrip('/')}/Chart.yaml"
        try:
            meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            return chart_dir  # helm template says what is wrong with it, with its line
        wanted = meta.get("dependencies") if isinstance(meta, dict) else None
        if not isinstance(wanted, list) or not wanted:
            return chart_dir
        vendored = (
            {path.name for path in (chart_dir / "charts").glob("*")} if (chart_dir / "charts").is_dir() else set()
        )
        hosts: set[str] = set()
        repositories: dict[str, str] = {}  # chart repository URL -> the name helm knows it by here
        for index, dependency in enumerate(wanted):
            if not isinstance(dependency, dict):
                raise DeployError(f"dependencies[{index}] is not a mapping", where=where)
            name, repository = str(dependency.get("name", "")), str(dependency.get("repository", ""))
            if any(entry == name or entry.startswith(f"{name}-") for entry in vendored) or repository.startswith(
                "file://"
            ):
                continue
            host = self._dependency_host(repository, index=index, name=name, where=where)
            if not repository.startswith("oci://"):
                repositories.setdefault(repository, f"dependency-{len(repositories)}")
            self._check_allowed(host, what=f"dependencies[{index}] ({name})", where=where)
            hosts.add(host)
        if not hosts:
            return chart_dir
        copy = Path(tempfile.mkdtemp(prefix="chart-", dir=scratch)) / chart_dir.name
        shutil.copytree(chart_dir, copy, symlinks=False)
        await helm.dependency_build(
            copy,
            chart_label=chart_label,
            plain_http=all(self.registry.scheme(host) == "http" for host in hosts),
            registry_config=self.auth_file,
            cache=self.cache / "helm" if self.cache is not None else None,
            repositories=repositories,
            credentials={
                url: login
                for url in repositories
                if (login := self.registry.credentials.get(urlsplit(url).netloc)) is not None
            },
        )
        return copy

    def _check_allowed(self, host: str, *, what: str, where: str) -> None:
        """One line unless server.yaml's charts.registries lists `host` (anything goes where no list is given)."""
        if self.allowed is not None and host not in self.allowed:
            listed = ", ".join(sorted(self.allowed)) or "none"
            raise DeployError(
                f"{what} may not come from {host}: server.yaml charts.registries allows {listed}", where=where
            )

    def _dependency_host(self, repository: str, *, index: int, name: str, where: str) -> str:
        """The host a dependency comes from: an oci:// registry, or an https:// chart repository (plain http only
        where the registry client speaks it: loopback or listed insecure)."""
        if repository.startswith("oci://"):
            found = OCI_CHART.match(repository.rstrip("/") + "/x")
            if found is not None:
                return found.group(1)
        elif repository.startswith(("https://", "http://")):
            parts = urlsplit(repository)
            plain_ok = parts.scheme == "https" or self.registry.scheme(parts.netloc) == "http"
            if parts.netloc and not parts.username and not parts.password and plain_ok:
                return parts.netloc
        raise DeployError(
            f"dependencies[{index}] ({name}): {repository!r} is not an oci:// registry or an https:// chart "
            "repository; vendor it in charts/ otherwise",
            where=where,
        )

    async def fetch(self, helm: Helm, ref: str, version: str, *, scratch: Path, sink: EventSink = discard) -> Path:
        """The chart's directory for `ref` at `version`: from the cache, or pulled by helm."""
        found = OCI_CHART.match(ref)
        if found is None:
            raise DeployError(f"{ref!r} is not an oci:// chart", where=f"{DEPLOY_FILE}: render.helm.chart")
        host, path = found.group(1), found.group(2)
        self._check_allowed(host, what="charts", where=f"{DEPLOY_FILE}: render.helm.chart")
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
        staging = Path(tempfile.mkdtemp(prefix=f"{cached.name}.", dir=cached.parent))  # one per push: two may pull it
        shutil.move(str(chart), staging / "chart")
        with contextlib.suppress(OSError):  # another push cached it meanwhile: theirs is the same digest
            (staging / "chart").rename(cached)
        shutil.rmtree(staging, ignore_errors=True)
        return cached
