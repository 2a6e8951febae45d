"""Token guessing is slowed per client address (deployer/server/throttle.py), on a clock the test moves."""

from __future__ import annotations

from deployer.server.throttle import Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_failures_are_free_then_each_doubles_the_wait_up_to_the_ceiling() -> None:
    clock = Clock()
    throttle = Throttle(free=3, base=1.0, ceiling=8.0, clock=clock)
    penalties = []
    for _ in range(8):
        assert throttle.wait("10.0.0.1") == 0  # the client waited out each penalty before trying again
        penalties.append(throttle.failed("10.0.0.1"))
        clock.now += penalties[-1]
    assert penalties == [0, 0, 0, 1, 2, 4, 8, 8]


def test_a_penalised_address_waits_and_other_addresses_do_not() -> None:
    clock = Clock()
    throttle = Throttle(free=1, base=2.0, clock=clock)
    throttle.failed("10.0.0.1")
    assert throttle.failed("10.0.0.1") == 2.0
    assert throttle.wait("10.0.0.1") == 2
    assert throttle.wait("10.0.0.2") == 0
    clock.now += 1.5
    assert throttle.wait("10.0.0.1") == 1  # rounded up: Retry-After is whole seconds
    clock.now += 0.5
    assert throttle.wait("10.0.0.1") == 0


def test_success_and_a_quiet_period_forget_the_failures() -> None:
    clock = Clock()
    throttle = Throttle(free=1, base=1.0, forget=60.0, clock=clock)
    for _ in range(3):
        throttle.failed("a")
        throttle.failed("b")
    throttle.succeeded("a")
    assert throttle.wait("a") == 0 and throttle.failed("a") == 0  # free again
    clock.now += 61
    assert throttle.wait("b") == 0 and throttle.failed("b") == 0


def test_the_table_is_bounded_oldest_first() -> None:
    throttle = Throttle(free=1, size=100, clock=Clock())
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert throttle.wait("10.0.3.231") > 0  # the last one is remembered
    assert throttle.wait("10.0.0.0") == 0  # the first was dropped
    assert len(throttle._sources) == 100
