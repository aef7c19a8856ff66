"""Debounce: a burst wakes a flow once, nothing fires again without new work, a partly taken backlog fires once more."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_erp.triggers import Backlog, Debounce

QUIET, MAX_WAIT, POLL = 1.0, 5.0, 0.25


def idle(debounce: Debounce, start: float, backlog: Backlog, seconds: float) -> list:
    """Observe an unchanged backlog every POLL seconds for ``seconds``; the firings it causes."""
    firings, at = [], start
    while at < start + seconds:
        at += POLL
        firing = debounce.observe(at, backlog)
        if firing:
            firings.append(firing)
    return firings


# A burst: items arriving with gaps shorter than the quiet window, observed at every poll.
bursts = st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=15)


@settings(max_examples=60, deadline=None)
@given(arrivals=bursts, gap_polls=st.integers(min_value=1, max_value=3))
def test_a_burst_fires_once_then_nothing_without_new_work(arrivals, gap_polls):
    debounce = Debounce(quiet_s=QUIET, max_wait_s=60)  # max_wait out of reach: only the quiet window can fire
    at, newest, firings = 0.0, 0, []
    for count in arrivals:
        newest += count
        for _ in range(gap_polls):  # gap_polls * POLL < QUIET: still one burst
            at += POLL
            firing = debounce.observe(at, Backlog(newest, 1))
            firings += [firing] if firing else []

    firings += idle(debounce, at, Backlog(newest, 1), seconds=30)

    assert len(firings) == 1
    assert firings[0].reason == "new" and firings[0].newest == newest


@settings(max_examples=30, deadline=None)
@given(rate=st.integers(min_value=1, max_value=50), seconds=st.integers(min_value=6, max_value=40))
def test_a_steady_stream_fires_at_most_once_per_max_wait_and_never_starves(rate, seconds):
    debounce = Debounce(quiet_s=QUIET, max_wait_s=MAX_WAIT)
    fired_at, newest, at = [], 0, 0.0
    while at < seconds:
        at += POLL
        newest += rate  # something new at every poll: never quiet
        if debounce.observe(at, Backlog(newest, 1)):
            fired_at.append(at)

    assert fired_at, "work that keeps arriving must still wake the flow"
    assert fired_at[0] <= MAX_WAIT + POLL
    assert all(b - a >= MAX_WAIT for a, b in zip(fired_at, fired_at[1:], strict=False))


def test_nothing_outstanding_never_fires():
    assert idle(Debounce(quiet_s=QUIET, max_wait_s=MAX_WAIT), 0, Backlog(None, None), seconds=60) == []


def test_new_work_after_the_announced_burst_fires_again():
    debounce = Debounce(quiet_s=QUIET, max_wait_s=MAX_WAIT)
    assert len(idle(debounce, 0, Backlog(10, 1), seconds=5)) == 1

    [again] = idle(debounce, 5, Backlog(12, 1), seconds=5)

    assert (again.reason, again.newest) == ("new", 12)


def test_the_rest_of_a_backlog_fires_once_when_a_run_took_a_batch_and_stopped():
    debounce = Debounce(quiet_s=QUIET, max_wait_s=MAX_WAIT)
    [first] = idle(debounce, 0, Backlog(2000, 1), seconds=5)  # 2000 pending: the run will claim 500

    [rest] = idle(debounce, 5, Backlog(2000, 501), seconds=10)  # it took 1..500; the oldest pending is now 501

    assert (first.reason, rest.reason, rest.oldest) == ("new", "rest", 501)
    assert idle(debounce, 15, Backlog(2000, 501), seconds=30) == []  # no further progress: nothing more


def test_work_given_back_by_a_failed_run_does_not_fire():
    debounce = Debounce(quiet_s=QUIET, max_wait_s=MAX_WAIT)
    assert len(idle(debounce, 0, Backlog(100, 1), seconds=5)) == 1
    # The run claimed everything (nothing pending), then the ERP was down and it released it all.
    assert idle(debounce, 5, Backlog(None, None), seconds=5) == []
    assert idle(debounce, 10, Backlog(100, 1), seconds=30) == []  # the cron takes these, not a flood of runs


@pytest.mark.parametrize(("quiet_s", "max_wait_s"), [(-1, 5), (3, 2)])
def test_impossible_timings_are_refused(quiet_s, max_wait_s):
    with pytest.raises(ValueError, match="quiet_s"):
        Debounce(quiet_s=quiet_s, max_wait_s=max_wait_s)
