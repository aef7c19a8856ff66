"""``airflow backfill create`` on a real scheduler (issue 10.8b), as the README's *Reprocessing, backfills and dry
runs* says to use it: a dry run of a window sends and records nothing and logs the bodies for exactly the orders
received in it; re-driving the window for real books exactly those orders; re-driving it again books and claims
nothing.

The real F1 DAG (``AssetOrTimeSchedule`` of its inbox asset or a 5-minute ``CronTriggerTimetable`` whose runs
cover the 5 minutes before their tick) on a scheduler, triggerer, dag-processor and API server
(``order_flow_stack`` in conftest.py: no cron-made runs, so only the backfill books). Postings are stored in
the ledger with receipt times in two windows, 10 minutes and 5 minutes long; the backfill covers the first.

Slow (a whole Airflow starts, then three backfills of the same two runs): marked ``slow``.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from omni_erp.devtools.airflow_stack import StackError
from omni_erp.sandbox.pusher import generate_orders
from omni_erp.states import DONE, PENDING
from tests.flows import store
from tests.ui.conftest import ORDER_FLOW, ledger_snapshot, would_post_bodies

pytestmark = pytest.mark.slow

TICK = timedelta(minutes=5)


def _store_received_at(ledger, monkeypatch, posting: dict, at: datetime) -> None:
    """Store ``posting`` as the inbox would have at ``at`` (the package's clock moved there, then back)."""
    monkeypatch.setenv("OMNI_ERP_CLOCK_OFFSET_S", str((at - datetime.now(UTC)).total_seconds()))
    store(ledger, posting)
    monkeypatch.delenv("OMNI_ERP_CLOCK_OFFSET_S")


def _backfill(stack, start: datetime, end: datetime, *extra: str) -> list[dict]:
    """``airflow backfill create`` over the ticks in [start, end] (retried while the scheduler is still closing
    the previous backfill: one active backfill per DAG), then wait for its runs; they are returned in order.

    The backfill's runs are all the DAG's backfill runs: each backfill of this test covers the same ticks.
    """
    deadline = time.monotonic() + 120
    while True:
        try:
            stack.airflow("backfill", "create", "--dag-id", ORDER_FLOW, "--from-date", start.isoformat(),
                          "--to-date", end.isoformat(), *extra)
            break
        except StackError as exc:
            if "Another backfill is running" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)
    runs = stack.wait_for_runs(ORDER_FLOW, count=2, run_type="backfill", timeout_s=600)
    return sorted(runs, key=lambda r: r["run_id"])  # backfill__<logical date = start of the run's interval>


def _claim_summary(stack, run_id: str) -> dict:
    response = stack.api("GET", f"/dags/{ORDER_FLOW}/dagRuns/{run_id}/taskInstances/claim_postings/xcomEntries/return_value",
                         params={"deserialize": "true"})
    response.raise_for_status()
    return response.json()["value"]


def test_a_backfill_books_the_orders_received_in_its_window_once(order_flow_stack, monkeypatch):
    stack, erp, ledger = order_flow_stack.stack, order_flow_stack.erp, order_flow_stack.ledger
    # Two 5-minute ticks an hour ago: the backfill re-drives [start, start + 10 min); the next 5 minutes stay out.
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    start -= timedelta(minutes=start.minute % 5)
    window_end = start + 2 * TICK
    postings = generate_orders(7, seed=1015, first_message_id=1015001, partially_cancelled_rate=0.3)
    # At the edges of each tick (start inclusive, end exclusive; the write lands a few ms after the time it is
    # given, so "just before" is 5 s before) and inside.
    received = {
        0: start, 1: start + timedelta(minutes=3), 2: start + TICK - timedelta(seconds=5), 3: start + TICK,
        4: window_end - timedelta(seconds=5),
        5: window_end, 6: window_end + timedelta(minutes=4),
    }
    for i, at in received.items():
        _store_received_at(ledger, monkeypatch, postings[i], at)
    inside = {postings[i]["orderCode"] for i, at in received.items() if at < window_end}
    outside = {p["orderCode"] for p in postings} - inside
    booked_before = Counter(o["orderCode"] for o in erp.state()["sales_orders"])
    intervals = [(start, start + TICK), (start + TICK, window_end)]

    def scope_logged(runs: list[dict], try_number: int, *, dry: bool = False) -> bool:
        """Each run's claim task logged its scope: its own interval (and the dry run first, for a dry run)."""
        mode = "dry run: nothing is sent or written; " if dry else ""
        return all(
            f"Scope of this run: {mode}only work received from {begin.isoformat()} to before {end.isoformat()}"
            in stack.task_log(ORDER_FLOW, run["run_id"], "claim_postings", try_number=try_number)
            for run, (begin, end) in zip(runs, intervals, strict=True)
        )

    # A dry run of the window first (--from-date / --to-date select the ticks; each run covers the 5 minutes
    # before its tick): green, nothing sent or recorded, the would-send lines for exactly the window's orders.
    ledger_before, erp_before = ledger_snapshot(ledger), erp.state()
    dry = _backfill(stack, start + TICK, window_end, "--dag-run-conf", '{"dry_run": true}')

    assert [r["state"] for r in dry] == ["success", "success"], [stack.task_states(ORDER_FLOW, r["run_id"]) for r in dry]
    assert {r["run_type"] for r in dry} == {"backfill"}
    assert scope_logged(dry, try_number=1, dry=True)
    assert [_claim_summary(stack, r["run_id"])["would_claim"] for r in dry] == [3, 2]
    would_post = [would_post_bodies(stack, r["run_id"]) for r in dry]
    assert Counter(code for bodies in would_post for code in bodies) == Counter(inside)
    assert ledger_snapshot(ledger) == ledger_before
    assert erp.state()["request_counts"] == erp_before["request_counts"]

    # For real: the same runs again (completed ones included, so the dry runs), this time not dry.
    runs = _backfill(stack, start + TICK, window_end, "--reprocess-behavior", "completed", "--dag-run-conf", '{"dry_run": false}')

    assert [r["run_id"] for r in runs] == [r["run_id"] for r in dry]
    assert [r["state"] for r in runs] == ["success", "success"], [stack.task_states(ORDER_FLOW, r["run_id"]) for r in runs]
    booked = Counter(o["orderCode"] for o in erp.state()["sales_orders"]) - booked_before
    assert booked == Counter(inside)  # each order of the window once, none of the next window
    states = {p["order_code"]: p["state"] for p in ledger.postings()}
    assert {code: states[code] for code in inside} == dict.fromkeys(inside, DONE)
    assert {code: states[code] for code in outside} == dict.fromkeys(outside, PENDING)  # not claimed either
    assert [_claim_summary(stack, r["run_id"])["claimed"] for r in runs] == [3, 2]
    assert scope_logged(runs, try_number=2)
    sent = {o["orderCode"]: o["request"] for o in erp.state()["sales_orders"] if o["orderCode"] in inside}
    assert {code: body for bodies in would_post for code, body in bodies.items()} == sent  # the dry run showed these

    # The same window again: the runs run a third time and book and claim nothing.
    ledger_before, erp_before = ledger_snapshot(ledger), erp.state()
    again = _backfill(stack, start + TICK, window_end, "--reprocess-behavior", "completed")

    assert [r["state"] for r in again] == ["success", "success"]
    assert stack.query("SELECT count(*) FROM backfill WHERE dag_id = :d", {"d": ORDER_FLOW}) == [3]
    assert [_claim_summary(stack, r["run_id"])["claimed"] for r in again] == [0, 0]
    assert scope_logged(again, try_number=3)
    assert erp.state()["sales_orders"] == erp_before["sales_orders"]
    assert erp.state()["request_counts"] == erp_before["request_counts"]  # not one ERP call
    assert ledger_snapshot(ledger) == ledger_before
