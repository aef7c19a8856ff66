"""The adaptive limiter (AIMD window shared by a task's threads), and thread-local hook sessions."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.hooks.base import AdaptiveLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _limiter(limit: int = 32, probe: float = 2.0, every: int = 1) -> tuple[AdaptiveLimiter, Clock]:
    clock = Clock()
    return AdaptiveLimiter(limit, probe_every=every, probe_interval_s=probe, clock=clock), clock


def test_a_429_halves_the_window_once_per_round_and_learns_the_cap():
    limiter, _ = _limiter(32)
    tickets = [limiter.acquire() for _ in range(32)]  # a burst of 32 meets a cap of 16
    for ticket in tickets[16:]:
        limiter.release(ticket, throttled=True)
    assert limiter.window == 16  # halved once, not sixteen times
    assert limiter.ceiling == 16  # refused with 17 in flight: the cap is at most 16
    assert limiter.throttled == 16


def test_a_window_never_stays_above_a_cap_learned_from_an_earlier_round():
    limiter, _ = _limiter(16)
    tickets = [limiter.acquire() for _ in range(16)]  # a burst of 16 meets a cap of 4
    limiter.release(tickets[11], throttled=True)  # the first refusal read had 12 in flight: window 8, ceiling 11
    assert (limiter.window, limiter.ceiling) == (8, 11)
    limiter.release(tickets[4], throttled=True)  # same round, sent with 5 in flight: the cap is at most 4
    assert (limiter.window, limiter.ceiling) == (4, 4)
    for ticket in tickets[:4]:
        limiter.release(ticket)
    assert limiter.window == 4  # successes do not grow it past the cap it learned


def test_recovery_after_a_probe_is_quick_and_probing_waits_its_interval():
    limiter, clock = _limiter(32, probe=2.0)
    held = [limiter.acquire() for _ in range(17)]
    limiter.release(held.pop(), throttled=True)  # the 17th was refused: window 16, ceiling 16
    for ticket in held:
        limiter.release(ticket)
    assert (limiter.window, limiter.ceiling) == (16, 16)
    # A probe above the ceiling only after the interval.
    clock.now = 1.0
    limiter.release(limiter.acquire())
    assert limiter.window == 16
    clock.now = 2.5
    limiter.release(limiter.acquire())
    assert (limiter.window, limiter.ceiling) == (17, 17)
    # The probe is refused: halve, and grow back by one per success to the level that worked.
    probe = [limiter.acquire() for _ in range(17)]
    limiter.release(probe.pop(), throttled=True, retry_after=1.0)
    assert (limiter.window, limiter.ceiling) == (8, 16)
    for ticket in probe:
        limiter.release(ticket)
    for _ in range(8):
        limiter.release(limiter.acquire())
    assert limiter.window == 16  # back at the cap within a round trip, despite Retry-After
    clock.now = 3.0
    limiter.release(limiter.acquire())
    assert limiter.window == 16  # Retry-After (until 3.5) holds probing
    clock.now = 5.0
    limiter.release(limiter.acquire())
    assert limiter.window == 17


def test_the_window_never_exceeds_the_limit_and_blocks_when_full():
    limiter, clock = _limiter(3, probe=0.0)
    tickets = [limiter.acquire() for _ in range(3)]
    acquired = threading.Event()

    def fourth() -> None:
        limiter.release(limiter.acquire())
        acquired.set()

    thread = threading.Thread(target=fourth)
    thread.start()
    assert not acquired.wait(0.1)  # a fourth request waits for a free slot
    limiter.release(tickets.pop())
    assert acquired.wait(5)
    thread.join(5)
    for ticket in tickets:
        limiter.release(ticket)
    for _ in range(20):
        clock.now += 1
        limiter.release(limiter.acquire())
    assert limiter.window == 3


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 64),
    events=st.lists(st.tuples(st.booleans(), st.floats(0, 5), st.integers(1, 64)), max_size=200),
)
def test_window_and_ceiling_stay_within_bounds(limit, events):
    limiter, clock = _limiter(limit, probe=1.0)
    for throttled, advance, in_flight in events:
        clock.now += advance
        tickets = [limiter.acquire() for _ in range(min(in_flight, limiter.window))]
        for n, ticket in enumerate(tickets):
            limiter.release(ticket, throttled=throttled and n == len(tickets) - 1, retry_after=advance)
        assert 1 <= limiter.window <= limit
        assert 1 <= limiter.ceiling <= limit


def test_probing_waits_for_enough_successes_at_the_ceiling():
    limiter, clock = _limiter(32, probe=0.0, every=20)
    held = [limiter.acquire() for _ in range(17)]
    limiter.release(held.pop(), throttled=True)
    for ticket in held:  # 16 successes at the ceiling
        limiter.release(ticket)
    assert (limiter.window, limiter.ceiling) == (16, 16)
    for n in range(3):
        clock.now += 10
        limiter.release(limiter.acquire())
        assert limiter.window == 16, n  # time alone does not probe
    limiter.release(limiter.acquire())
    assert limiter.window == 17  # the twentieth success at the ceiling does


@pytest.mark.parametrize("limit", [0, -1], ids=["zero", "negative"])
def test_a_limit_below_one_is_refused(limit):
    with pytest.raises(ValueError, match="at least 1"):
        AdaptiveLimiter(limit)


def test_each_thread_gets_its_own_session_with_its_own_connection_pool(erp):
    from omni_erp.hooks.erp import ErpHook

    hook = ErpHook()
    sessions: dict[str, object] = {}

    def grab(name: str) -> None:
        hook.einvoices_since(0, limit=1)  # a real call through this thread's session
        sessions[name] = hook.session

    threads = [threading.Thread(target=grab, args=(f"t{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    grab("main")
    assert len({id(s) for s in sessions.values()}) == 4
    adapters = {id(s.get_adapter(erp.url)) for s in sessions.values()}
    assert len(adapters) == 4  # no pool shared between threads (one shared pool would drop connections)
    assert all(s.auth is not None for s in sessions.values())  # each configured from the connection
