"""A small Docker Registry v2 client: does a tag exist, and what is its digest.

Sends both the OCI and the Docker manifest Accept headers (distribution answers 404 for an OCI manifest
otherwise), authenticates with basic or bearer tokens from a docker `config.json`, speaks plain http to
insecure registries, and retries transient failures with backoff.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from deployer.errors import DeployError, TransientError

if TYPE_CHECKING:
    import aiohttp  # imported where a request is made: `deployer render` and `--help` never load it

T = TypeVar("T")
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)
_HOST = re.compile(r"^(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")
_PATH = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Repository:
    """An image repository: the registry host and the path inside it."""

    registry: str
    path: str

    @classmethod
    def parse(cls, name: str) -> Repository:
        """`host[:port]/path`, or a Docker Hub name (`app`, `team/app`)."""
        first, _, rest = name.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, rest
        else:
            registry, path = "docker.io", name if "/" in name else f"library/{name}"
        if not _HOST.match(registry) or not _PATH.match(path):
            raise DeployError(
                f"{name!r} is not a valid image repository (expected e.g. registry.example.com/team/app, "
                "lowercase, without tag)",
                where="image.repository",
            )
        return cls(registry, path)

    def __str__(self) -> str:
        return f"{self.registry}/{self.path}"


def check_tag(tag: str, *, where: str = "image tag") -> str:
    if not _TAG.match(tag):
        raise DeployError(f"{tag!r} is not a valid image tag", where=where)
    return tag


def is_loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0].strip("[]") if registry.count(":") <= 1 or registry.startswith("[") else registry
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_credentials(auth_file: Path | None) -> dict[str, tuple[str, str]]:
    """(user, password) per registry host from a docker config.json's `auths`."""
    if auth_file is None or not auth_file.exists():
        return {}
    try:
        auths = json.loads(auth_file.read_text(encoding="utf-8")).get("auths", {})
    except (ValueError, OSError) as exc:
        raise DeployError(f"cannot read registry credentials: {exc}", where=str(auth_file)) from None
    out = {}
    for host, entry in auths.items():
        if entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            out[host.removeprefix("https://").removeprefix("http://").rstrip("/")] = (user, password)
    return out


class RegistryClient:
    """Asks a registry about manifests; one instance per build, sessions are short-lived."""

    def __init__(
        self,
        *,
        insecure: frozenset[str] = frozenset(),
        auth_file: Path | None = None,
        timeout: float = 10.0,
        attempts: int = 4,
    ) -> None:
        self.insecure = insecure
        self.credentials = load_credentials(auth_file)
        self.timeout = timeout
        self.attempts = attempts
        self._tokens: dict[str, str] = {}

    def scheme(self, registry: str) -> str:
        return "http" if registry in self.insecure or is_loopback(registry) else "https"

    def _url(self, repository: Repository, reference: str) -> str:
        return f"{self.scheme(repository.registry)}://{repository.registry}/v2/{repository.path}/manifests/{reference}"

    async def digest(self, repository: Repository, tag: str) -> str | None:
        """The manifest digest of `repository:tag`, or None when the registry does not have it (one HEAD)."""

        async def read(response: aiohttp.ClientResponse) -> str | None:
            return self._digest_of(repository, response)

        return await self._retrying(repository, "HEAD", self._url(repository, check_tag(tag)), read)

    async def manifest(self, repository: Repository, reference: str) -> dict[str, Any] | None:
        """The manifest (OCI or Docker) of a tag or digest, or None when the registry does not have it."""

        async def read(response: aiohttp.ClientResponse) -> dict[str, Any] | None:
            if self._digest_of(repository, response) is None:
                return None
            body: dict[str, Any] = await response.json(content_type=None)
            return body

        return await self._retrying(repository, "GET", self._url(repository, reference), read)

    async def _retrying(
        self, repository: Repository, method: str, url: str, read: Callable[[aiohttp.ClientResponse], Awaitable[T]]
    ) -> T:
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(TransientError),
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential_jitter(multiplier=0.2, max=2.0, jitter=0.2),
            ):
                with attempt:
                    return await self._request(repository, method, url, read)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise DeployError(
                f"registry {repository.registry} is unavailable after {self.attempts} attempts: {cause}",
                where="registry",
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _request(
        self, repository: Repository, method: str, url: str, read: Callable[[aiohttp.ClientResponse], Awaitable[T]]
    ) -> T:
        """One request, answering a 401 challenge once; connection trouble is a TransientError."""
        headers = {"Accept": MANIFEST_TYPES, **self._auth_header(repository.registry)}
        import aiohttp  # noqa: PLC0415

        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(method, url, headers=headers) as response,
            ):
                if response.status == 401 and await self._authenticate(session, repository, response):
                    headers.update(self._auth_header(repository.registry))
                    async with session.request(method, url, headers=headers) as retried:
                        return await read(retried)
                return await read(response)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc

    def _digest_of(self, repository: Repository, response: aiohttp.ClientResponse) -> str | None:
        if response.status == 404:
            return None
        if response.status in (401, 403):
            raise DeployError(
                f"registry {repository.registry} refused the credentials for {repository.path} "
                f"(HTTP {response.status}); check the docker config.json given to the deployer",
                where="registry",
            )
        if response.status >= 500 or response.status == 429:
            raise TransientError(f"HTTP {response.status}")
        if response.status != 200:
            raise DeployError(
                f"registry {repository.registry} answered HTTP {response.status} for {repository.path}",
                where="registry",
            )
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            raise DeployError(f"registry {repository.registry} sent no Docker-Content-Digest", where="registry")
        return digest

    def _auth_header(self, registry: str) -> dict[str, str]:
        if registry in self._tokens:
            return {"Authorization": self._tokens[registry]}
        return {}

    async def _authenticate(
        self, session: aiohttp.ClientSession, repository: Repository, response: aiohttp.ClientResponse
    ) -> bool:
        """Answer a 401 challenge: basic credentials, or a bearer token from the realm. False if no credentials."""
        creds = self.credentials.get(repository.registry)
        challenge = response.headers.get("WWW-Authenticate", "")
        if creds is None:
            return False
        basic = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        if challenge.lower().startswith("basic"):
            self._tokens[repository.registry] = basic
            return True
        params: dict[str, Any] = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if realm is None:
            return False
        params.setdefault("scope", f"repository:{repository.path}:pull")
        async with session.get(realm, params=params, headers={"Authorization": basic}) as token_response:
            if token_response.status != 200:
                raise DeployError(
                    f"registry {repository.registry} refused the credentials "
                    f"(token service answered HTTP {token_response.status})",
                    where="registry",
                )
            body = await token_response.json(content_type=None)
        self._tokens[repository.registry] = f"Bearer {body.get('token') or body.get('access_token')}"
        return True
