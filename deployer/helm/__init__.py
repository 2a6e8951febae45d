"""Adapter for the pinned helm binary, through pyhelm3. The only code that runs helm.

Rendering goes through `pyhelm3.Client.template_resources`; the raw output is kept too, because its
`# Source:` comments tell which template each object came from, which error messages need.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pydantic
import pyhelm3
import pyhelm3.errors
import semver
import yaml

from deployer.errors import DeployError

PINNED_HELM_VERSION = "4.1.4"
# pyhelm3 logs every failed command as a warning; this adapter turns failures into one DeployError instead.
logging.getLogger("pyhelm3").setLevel(logging.ERROR)
_captured: contextvars.ContextVar[list[bytes] | None] = contextvars.ContextVar("helm_output", default=None)


KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when a render is stopped


class _CapturingCommand(pyhelm3.Command):  # type: ignore[misc]
    """pyhelm3's Command, run without a shell in its own process group, handing the raw stdout to whoever is
    listening in this task. pyhelm3's own stops helm with SIGTERM and then waits without bound, and helm 4 may
    keep rendering: a timeout never ended. Here a stopped render's group gets SIGKILL after KILL_GRACE."""

    async def run(self, command: list[str], input: bytes | None = None) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            self._executable,
            *(str(part) for part in command),
            stdin=asyncio.subprocess.PIPE if input is not None else None,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = await proc.communicate(input)
        except asyncio.CancelledError:
            await _stop(proc)
            raise
        if proc.returncode != 0:
            raise pyhelm3.errors.Error(proc.returncode, stdout, stderr)
        sink = _captured.get()
        if sink is not None:
            sink.append(stdout)
        return bytes(stdout)

    def client_version(self) -> Any:
        """What pyhelm3's Client asks in its constructor, synchronously (`helm version`, ~35 ms; blocking the event
        loop in the server). pyhelm3 reads it only to choose flags of install, upgrade and list, which this adapter
        never runs; the binary's own version is `Helm.version`, asked when someone wants it."""
        return semver.VersionInfo.parse(PINNED_HELM_VERSION)

    def binary_version(self) -> str:
        return str(super().client_version())


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the process group, SIGKILL after KILL_GRACE; returns once it has exited."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), timeout=KILL_GRACE)
            return
        except TimeoutError:
            continue


def find_helm() -> str:
    """The helm to run: $DEPLOYER_HELM, else the one setup put beside this Python, else helm on PATH."""
    candidates = [
        os.environ.get("DEPLOYER_HELM"),
        str(Path(sys.executable).parent / "helm"),
        shutil.which("helm"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise DeployError("helm not found: run `make setup`, or set DEPLOYER_HELM to a helm v4 binary", where="helm")


class Helm:
    """One helm binary, checked once, rendering charts as `helm template` does."""

    def __init__(self, executable: str | None = None, *, timeout: float = 120.0) -> None:
        self.executable = executable or find_helm()
        self.timeout = timeout
        self._command = _CapturingCommand(executable=self.executable)
        self._client = pyhelm3.Client(command=self._command, executable=self.executable)

    @functools.cached_property
    def version(self) -> str:
        """The helm binary's version, e.g. 4.1.4 (runs `helm version` once)."""
        return self._command.binary_version()

    async def template(
        self, *, chart_dir: Path, chart_label: str, release: str, namespace: str, values: dict[str, Any]
    ) -> str:
        """The rendered manifests of `chart_dir` as helm prints them; errors name the chart file and line.

        `chart_label` is the chart's path as the user knows it (e.g. charts/hello), used in messages.
        """
        chart, metadata = self._chart(chart_dir, chart_label)
        sink: list[bytes] = []
        token = _captured.set(sink)
        try:
            # CRDs in the chart's crds/ are rendered too: what the release applies is what render shows.
            render = self._client.template_resources(chart, release, values, namespace=namespace, include_crds=True)
            await asyncio.wait_for(render, timeout=self.timeout)
        except TimeoutError:
            raise DeployError(f"helm template took longer than {self.timeout:g}s", where=chart_label) from None
        except pyhelm3.errors.Error as exc:
            raise _helm_error(
                exc.stderr.decode(errors="replace"),
                chart_name=str(metadata.get("name", "")),
                chart_label=chart_label,
            ) from None
        finally:
            _captured.reset(token)
        return b"".join(sink).decode()

    async def pull(
        self, ref: str, version: str, *, into: Path, plain_http: bool = False, registry_config: Path | None = None
    ) -> tuple[Path, str]:
        """`helm pull REF --version VERSION --untar` into `into`: the chart's directory and the manifest digest
        helm reports (`Digest: sha256:...`)."""
        command = ["pull", ref, "--version", version, "--untar", "--untardir", str(into)]
        if plain_http:
            command.append("--plain-http")
        if registry_config is not None:
            command += ["--registry-config", str(registry_config)]
        said = await self._run_plain(command, where=ref)
        found = re.search(r"Digest: (sha256:[0-9a-f]{64})", said)
        charts = [path for path in into.iterdir() if (path / "Chart.yaml").is_file()]
        if found is None or len(charts) != 1:
            raise DeployError("helm pull did not leave one chart and its digest", where=ref)
        return charts[0], found.group(1)

    async def dependency_build(
        self,
        chart_dir: Path,
        *,
        chart_label: str,
        plain_http: bool = False,
        registry_config: Path | None = None,
        cache: Path | None = None,
        repositories: dict[str, str] | None = None,
        credentials: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        """`helm dependency build` in `chart_dir`: its charts/ from Chart.lock (helm checks the lock's digest
        against Chart.yaml), pulled into helm's content cache under `cache` (by digest) when one is given. Chart
        repositories (URL -> name) are added to a repository config of this build's own, never the user's, with
        their (user, password) from `credentials` (URL -> pair) where given: the password on helm's stdin."""
        own = chart_dir.parent / ".helm"
        common = ["--repository-config", str(own / "repositories.yaml"), "--repository-cache", str(own / "cache")]
        env = {**os.environ}
        if cache is not None:
            env["HELM_CACHE_HOME"] = str(cache)
        for url, name in (repositories or {}).items():
            login = (credentials or {}).get(url)
            auth = ["--username", login[0], "--password-stdin"] if login else []
            await self._run_plain(
                ["repo", "add", name, url, *common, *auth],
                env=env,
                where=f"{chart_label}/Chart.yaml",
                stdin=login[1].encode() if login else None,
            )
        command = ["dependency", "build", str(chart_dir), "--skip-refresh", *common]
        if plain_http:
            command.append("--plain-http")
        if registry_config is not None:
            command += ["--registry-config", str(registry_config)]
        await self._run_plain(command, env=env, where=f"{chart_label.rstrip('/')}/Chart.yaml")

    async def _run_plain(
        self, command: list[str], *, env: dict[str, str] | None = None, where: str, stdin: bytes | None = None
    ) -> str:
        """helm COMMAND with a timeout, its stdout and stderr together (helm 4 reports some results on stderr); a
        failure is one DeployError with helm's own words."""
        proc = await asyncio.create_subprocess_exec(
            self.executable,
            *command,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            env=env,
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(stdin), timeout=self.timeout)
        except TimeoutError:
            await _stop(proc)
            raise DeployError(f"helm {' '.join(command[:2])} took longer than {self.timeout:g}s", where=where) from None
        except asyncio.CancelledError:
            await _stop(proc)
            raise
        said = (stdout + stderr).decode(errors="replace")
        if proc.returncode != 0:
            lines = [line for line in said.splitlines() if line.strip() and not line.startswith("level=")]
            raise DeployError(
                f"helm {' '.join(command[:2])}: {' '.join(lines).removeprefix('Error: ')[:300]}", where=where
            )
        return said

    def _chart(self, chart_dir: Path, chart_label: str) -> tuple[Any, dict[str, Any]]:
        """pyhelm3's Chart for a local directory, read from Chart.yaml without running `helm show`."""
        where = f"{chart_label.rstrip('/')}/Chart.yaml"
        try:
            raw = yaml.safe_load((chart_dir / "Chart.yaml").read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise DeployError(f"not a valid Chart.yaml: {' '.join(str(exc).split())}", where=where) from None
        if not isinstance(raw, dict):
            raise DeployError("Chart.yaml must be a mapping", where=where)
        # Only what pyhelm3's model needs; helm itself checks the rest of Chart.yaml.
        metadata = {
            "apiVersion": raw.get("apiVersion", "v2"),
            "name": str(raw.get("name", "")),
            "version": str(raw.get("version", "")),
        }
        try:
            chart = pyhelm3.Chart(self._client._command, ref=chart_dir, metadata=metadata)
        except pydantic.ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"][1:]) or "metadata"
            raise DeployError(f"{field}: {first['msg']} (got {first.get('input')!r})", where=where) from None
        return chart, raw


def _helm_error(stderr: str, *, chart_name: str, chart_label: str) -> DeployError:
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and not line.startswith("level=") and "Use --debug flag" not in line
    ]
    text = " ".join(lines).removeprefix("Error: ")
    text = text.replace("error converting YAML to JSON: ", "")
    if chart_name:
        text = re.sub(rf"(?<![\w/.-]){re.escape(chart_name)}/", f"{chart_label.rstrip('/')}/", text)
    where = None
    match = re.search(rf"({re.escape(chart_label.rstrip('/'))}/[^\s:()\"]+)(?::(\d+))?(?::(\d+))?", text)
    if match:
        where = ":".join(part for part in match.groups() if part)
        text = text.replace(match.group(0), "", 1)
        text = re.sub(r"^execution error at \(\):\s*", "", text)
        text = re.sub(r"^parse error at \(\):\s*", "template parse error: ", text)
        text = re.sub(r"^YAML parse error on\s*:\s*", "invalid YAML: ", text)
        text = text.strip(" :")
    return DeployError(f"helm template failed: {text}", where=where or chart_label)


def values_json(values: dict[str, Any]) -> str:
    """Values as helm receives them on stdin (for benchmarks and the bare-helm comparison)."""
    return json.dumps(values)
