"""The per-environment lock: a coordination.k8s.io Lease with a holder and an expiry (docs/architecture.md §5).

A dead holder's lease expires and is taken over; a live holder's lease is waited for (or refused at once).
Takeover uses the Lease's resourceVersion, so two deployers racing for it cannot both win.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from deployer.errors import DeployError, TransientError
from deployer.events import Event, EventSink
from deployer.kube.client import LEASES, ApiError, KubeClient

log = logging.getLogger(__name__)

_serial = itertools.count(1)
_held: set[str] = set()  # the identities this process holds now (a Lock between its enter and its exit)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def holder_identity() -> str:
    """`host-pid#n`: unique per lock taken (a server runs many releases in one process), and lets a process on
    the same host see that a holder has died."""
    return f"{socket.gethostname()}-{os.getpid()}#{next(_serial)}"


def _dead_here(holder: str) -> bool:
    """A holder on this host whose process is gone (it was killed) holds nothing any more; nor does one of this
    very process whose Lock has exited (it could not delete the lease: its cluster did not answer then)."""
    host, _, pid = holder.partition("#")[0].rpartition("-")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return holder not in _held
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class LockLost(DeployError):
    """The lease may be someone else's now: whoever holds it recovers what this holder left (still pending)."""


class Lock:
    """`async with Lock(...)`: hold `name` in `namespace` for the block, renewing it in the background."""

    def __init__(
        self,
        api: KubeClient,
        *,
        namespace: str,
        name: str,
        holder: str,
        duration: int = 30,
        wait: bool = True,
        timeout: float = 600.0,
        sink: EventSink | None = None,
        explain: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self.api = api
        self.namespace, self.name, self.holder = namespace, name, holder
        self.duration, self.wait, self.timeout = duration, wait, timeout
        self.sink = sink or (lambda event: None)
        self._renewer: asyncio.Task[None] | None = None
        self.explain = explain  # says what the holder is doing, in the pusher's words
        self._renewed = 0.0  # monotonic time of the last renewal the cluster accepted
        self._lost: str | None = None  # why the lease is no longer ours
        self._version: str | None = None  # the resourceVersion of our last write of the lease

    def _body(self, resource_version: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "labels": {"app.kubernetes.io/managed-by": "deployer"}}
        if resource_version:
            meta["resourceVersion"] = resource_version
        now = _stamp(_now())
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.holder,
                "leaseDurationSeconds": self.duration,
                "acquireTime": now,
                "renewTime": now,
            },
        }

    async def _try(self) -> str | None:
        """Take the lease if free or expired; otherwise return its live holder."""
        try:
            created = await self.api.create(LEASES, self.namespace, self._body())
            self._version = created["metadata"]["resourceVersion"]
            return None
        except ApiError as exc:
            if exc.status != 409:
                raise DeployError(f"cannot create Lease {self.name}: {exc.message}", where=self.namespace) from None
        lease = await self.api.read(LEASES, self.namespace, self.name)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = spec.get("renewTime") or spec.get("acquireTime")
        expired = (
            renewed is None
            or (
                datetime.datetime.fromisoformat(renewed.replace("Z", "+00:00"))
                + datetime.timedelta(seconds=spec.get("leaseDurationSeconds") or 0)
            )
            < _now()
        )
        gone = holder is not None and not expired and _dead_here(str(holder))
        expired = expired or gone
        if holder not in (None, "", self.holder) and not expired:
            return str(holder)
        try:
            taken = await self.api.replace(
                LEASES, self.namespace, self.name, self._body(lease["metadata"]["resourceVersion"])
            )
            self._version = taken["metadata"]["resourceVersion"]
        except ApiError as exc:
            if exc.status == 409:  # someone wrote it between our read and our write: name them if we can
                with contextlib.suppress(ApiError, TransientError):
                    now = await self.api.read(LEASES, self.namespace, self.name)
                    taker = (now.get("spec") or {}).get("holderIdentity")
                    if taker not in (None, "", self.holder):
                        return str(taker)
                return "another deployer (it took the lease first)"
            raise DeployError(f"cannot take Lease {self.name}: {exc.message}", where=self.namespace) from None
        if expired and holder not in (None, "", self.holder):
            how = "the lease of" if gone else "the expired lease of"
            self.sink(Event("lock", f"took over {how} {holder}{', which holds nothing any more' if gone else ''}"))
        return None

    async def __aenter__(self) -> Lock:
        _held.add(self.holder)  # before the lease can bear it: no one here may take it for a dead holder's
        try:
            return await self._acquire()
        except BaseException:
            _held.discard(self.holder)
            raise

    async def _acquire(self) -> Lock:
        deadline = asyncio.get_running_loop().time() + self.timeout
        told, what = False, None
        while (holder := await self._try()) is not None:
            if not self.wait:
                raise DeployError(
                    f"another release holds the lock: {holder}", where=f"Lease {self.namespace}/{self.name}"
                )
            if not told:
                what = await self.explain() if self.explain else None
                self.sink(
                    Event(
                        "lock",
                        (f"{what}; " if what else "")
                        + f"waiting for the release held by {holder} to finish (up to {self.timeout:g}s)",
                        data={"holder": holder, "busy": what},
                    )
                )
                told = True
            if asyncio.get_running_loop().time() > deadline:
                raise DeployError(
                    (f"{what}; " if what else "")
                    + f"gave up waiting for the lock held by {holder} after {self.timeout:g}s",
                    where=f"Lease {self.namespace}/{self.name}",
                )
            await asyncio.sleep(min(1.0, self.duration / 3))
        self._renewed = time.monotonic()
        self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return self

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.duration / 3)
            try:
                holder = await self._try()
            except Exception as exc:  # a missed renewal is retried; ensure_held() judges how long the silence lasts
                log.warning("renewing Lease %s/%s failed: %s", self.namespace, self.name, exc)
                continue
            if holder is not None:
                self._lost = f"{holder} holds it now"
                return
            self._renewed = time.monotonic()

    def ensure_held(self) -> None:
        """Raise DeployError unless the lease is surely still ours: renewed within its duration, not taken.
        A holder that cannot tell must act as if it lost it (client-go's leader election does the same)."""
        silent = time.monotonic() - self._renewed
        if self._lost is None and silent > self.duration:
            self._lost = f"not renewed for {silent:.0f}s (the lease lasts {self.duration}s)"
        if self._lost is not None:
            raise LockLost(
                f"lost the environment's lock: {self._lost}; stopped without changing traffic "
                "(the next holder recovers this release)",
                where=f"Lease {self.namespace}/{self.name}",
            )

    async def __aexit__(self, *exc: object) -> None:
        _held.discard(self.holder)  # from now on, a lease left with this identity is a dead holder's
        if self._renewer:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        with contextlib.suppress(ApiError, TransientError):  # 409: it is someone else's now; theirs to release
            await self.api.delete(LEASES, self.namespace, self.name, version=self._version)
