"""The SSH remote (asyncssh): public-key authentication against server.yaml's users, and only
`git-receive-pack` / `git-upload-pack` on a repository path. No shell, no port forwarding, no agent.

The host key is created once under the data directory and kept, so clients' known_hosts stay valid across
restarts. The git process runs to its end even when the client disconnects: its output is drained, not lost
to a kill, so a release in flight ends consistently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
from pathlib import Path
from typing import Any

import asyncssh

from deployer.config.server import user_for_key
from deployer.errors import DeployError
from deployer.server.core import SERVICES, DeployServer

log = logging.getLogger("deployer.server.ssh")
_CHUNK = 64 * 1024


def host_key(path: Path) -> asyncssh.SSHKey:
    """The server's ed25519 host key, created (mode 0600) on first start and read ever after."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.export_private_key())
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key())
    return key


def parse_command(command: str | None) -> tuple[str, str]:
    """`git-receive-pack '/app.git'` (or `git receive-pack ...`) → (service, path); anything else is refused."""
    if not command:
        raise DeployError("this is the deployer's git remote; there is no shell. Push with git push", where="ssh")
    try:
        words = shlex.split(command)
    except ValueError:
        words = []
    if len(words) == 3 and words[0] == "git":
        words = [f"git-{words[1]}", words[2]]
    if len(words) != 2 or words[0] not in SERVICES:
        shown = command if len(command) <= 80 else command[:77] + "..."
        raise DeployError(f"only git-receive-pack and git-upload-pack are allowed, not {shown!r}", where="ssh")
    return words[0], words[1]


class _Connection(asyncssh.SSHServer):
    def __init__(self, server: DeployServer) -> None:
        self.server = server
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        line = key.export_public_key("openssh").decode().split()
        user = user_for_key(self.server.config, line[0], line[1])
        if user is not None and self.conn is not None:
            self.conn.set_extra_info(deployer_user=user)
        return user is not None


class GitSsh:
    def __init__(self, server: DeployServer) -> None:
        self.server = server

    async def listen(self, host: str, port: int) -> asyncssh.SSHAcceptor:
        configured = self.server.config.host_key
        key = (
            asyncssh.read_private_key(configured) if configured else host_key(self.server.data / "ssh_host_ed25519_key")
        )
        return await asyncssh.create_server(
            lambda: _Connection(self.server),
            host,
            port,
            server_host_keys=[key],
            process_factory=self.session,
            encoding=None,
            allow_pty=False,
            agent_forwarding=False,
            x11_forwarding=False,
            line_editor=False,
            keepalive_interval=30,
        )

    async def session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        user = str(process.get_extra_info("deployer_user"))
        try:
            service, path = parse_command(process.command)
            repo, env = await self.server.git_environment(service=service, path=path, user=user)
        except DeployError as exc:
            process.stderr.write(f"error: {exc}\n".encode())
            process.exit(1)
            return
        # shielded: a client that goes away must not cancel a push whose release is running
        code = await asyncio.shield(self._run(process, service, repo, env))
        with contextlib.suppress(Exception):
            process.exit(code)

    async def _run(
        self, process: asyncssh.SSHServerProcess[bytes], service: str, repo: Path, env: dict[str, str]
    ) -> int:
        proc = await asyncio.create_subprocess_exec(
            service,
            str(repo),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env},
        )
        assert proc.stdin and proc.stdout and proc.stderr
        gone = [False]
        feeder = asyncio.create_task(_feed(process, proc.stdin))
        pumps = [
            asyncio.create_task(_pump(proc.stdout, process.stdout, gone)),
            asyncio.create_task(_pump(proc.stderr, process.stderr, gone)),
        ]
        await asyncio.gather(*pumps)
        code = await proc.wait()
        feeder.cancel()
        self.server.forget(env)
        if gone[0]:
            log.info("client went away during %s %s; it ran to its end (exit %s)", service, repo.name, code)
        return code


async def _feed(process: asyncssh.SSHServerProcess[bytes], stdin: asyncio.StreamWriter) -> None:
    try:
        while chunk := await process.stdin.read(_CHUNK):
            stdin.write(chunk)
            await stdin.drain()
    except (asyncssh.Error, ConnectionError, BrokenPipeError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            stdin.close()


async def _pump(source: asyncio.StreamReader, channel: Any, gone: list[bool]) -> None:
    while chunk := await source.read(_CHUNK):
        if gone[0]:
            continue  # drain into nothing: the git process must not block on a full pipe
        try:
            channel.write(chunk)
            await channel.drain()
        except (asyncssh.Error, ConnectionError, BrokenPipeError, OSError):
            gone[0] = True
