"""Slowing down token guessing: per client address, failed authentications earn a growing penalty.

Like OpenSSH's PerSourcePenalties (sshd_config(5)), but for the tokens of smart HTTP: the first few failures cost
nothing (a mistyped token), then each one doubles a penalty, capped so that a real user behind the same address
waits at most `ceiling`. While an address is penalised its requests are answered 429 with Retry-After before any
token is compared, so guessing gets no answer at all, and parallel connections gain nothing. A success forgets the
address's failures; so does a quiet `forget` period. The table is bounded: the oldest entries go first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Source:
    failures: int = 0
    last: float = 0.0  # when the last failure was
    until: float = 0.0  # penalised until


class Throttle:
    def __init__(
        self,
        *,
        free: int = 5,
        base: float = 1.0,
        ceiling: float = 60.0,
        forget: float = 600.0,
        size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.base, self.ceiling, self.forget, self.size = free, base, ceiling, forget, size
        self.clock = clock
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def wait(self, address: str) -> int:
        """Seconds (rounded up) the address must wait before it may try again; 0 if it may now."""
        source = self._sources.get(address)
        if source is None:
            return 0
        now = self.clock()
        if now - source.last > self.forget:
            del self._sources[address]
            return 0
        return max(0, math.ceil(source.until - now))

    def failed(self, address: str) -> float:
        """Count a failed authentication; return the penalty it earned (0 while failures are free)."""
        now = self.clock()
        source = self._sources.pop(address, None) or _Source()
        if now - source.last > self.forget:
            source = _Source()
        source.failures += 1
        source.last = now
        over = source.failures - self.free
        penalty = 0.0 if over <= 0 else min(self.ceiling, self.base * 2 ** (over - 1))
        source.until = now + penalty
        self._sources[address] = source
        while len(self._sources) > self.size:
            self._sources.popitem(last=False)
        return penalty

    def succeeded(self, address: str) -> None:
        self._sources.pop(address, None)
