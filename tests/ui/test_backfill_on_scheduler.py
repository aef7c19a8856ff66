"""``airflow backfill create`` on a real scheduler (issue 10.8b): re-driving a window books exactly the orders
received in it, and re-driving it again books and claims nothing.

The real F1 DAG (``AssetOrTimeSchedule`` of its inbox asset or a 5-minute ``CronTriggerTimetable`` whose runs
cover the 5 minutes before their tick) on a scheduler, triggerer, dag-processor and API server
(``order_flow_stack`` in conftest.py: no cron-made runs, so only the backfill books). Postings are stored in
the ledger with receipt times in two windows, 10 minutes and 5 minutes long; the backfill covers the first.

Slow (a whole Airflow starts, then two backfills of two runs each): marked ``slow``.
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
from tests.ui.conftest import ORDER_FLOW, ledger_snapshot

pytestmark = pytest.mark.slow

TICK = timedelta(minutes=5)


def _store_received_at(ledger, monkeypatch, posting: dict, at: datetime) -> None:
    """Store ``posting`` as the inbox would have at ``at`` (the package's clock moved there, then back)."""
    monkeypatch.setenv("OMNI_ERP_CLOCK_OFFSET_S", str((at - datetime.now(UTC)).total_seconds()))
    store(ledger, posting)
    monkeypatch.delenv("OMNI_ERP_CLOCK_OFFSET_S")


def _backfill(stack, start: datetime, end: datetime, *extra: str) -> None:
    """``airflow backfill create`` over the ticks in [start, end], retried while the previous backfill is
    still being closed by the scheduler (only one active backfill per DAG)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            stack.airflow("backfill", "create", "--dag-id", ORDER_FLOW, "--from-date", start.isoformat(),
                          "--to-date", end.isoformat(), *extra)
            return
        except StackError as exc:
            if "Another backfill is running" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


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

    # --from-date / --to-date select the ticks; each run covers the 5 minutes before its tick.
    _backfill(stack, start + TICK, window_end)
    runs = stack.wait_for_runs(ORDER_FLOW, count=2, run_type="backfill", timeout_s=600)

    assert [r["state"] for r in runs] == ["success", "success"], [stack.task_states(ORDER_FLOW, r["run_id"]) for r in runs]
    booked = Counter(o["orderCode"] for o in erp.state()["sales_orders"]) - booked_before
    assert booked == Counter(inside)  # each order of the window once, none of the next window
    states = {p["order_code"]: p["state"] for p in ledger.postings()}
    assert {code: states[code] for code in inside} == dict.fromkeys(inside, DONE)
    assert {code: states[code] for code in outside} == dict.fromkeys(outside, PENDING)  # not claimed either
    runs.sort(key=lambda r: r["run_id"])  # backfill__<logical date = start of the run's interval>
    assert [_claim_summary(stack, r["run_id"])["claimed"] for r in runs] == [3, 2]
    for run, (begin, end) in zip(runs, [(start, start + TICK), (start + TICK, window_end)], strict=True):
        log = stack.task_log(ORDER_FLOW, run["run_id"], "claim_postings")
        assert f"Scope of this run: only work received from {begin.isoformat()} to before {end.isoformat()}" in log, log

    # The same window again, completed runs included: they run again (cleared, a second try), book and claim nothing.
    before = ledger_snapshot(ledger)
    erp_before = erp.state()
    _backfill(stack, start + TICK, window_end, "--reprocess-behavior", "completed")
    again = stack.wait_for_runs(ORDER_FLOW, count=2, run_type="backfill", timeout_s=600)

    again.sort(key=lambda r: r["run_id"])
    assert [r["run_id"] for r in again] == [r["run_id"] for r in runs]
    assert [r["state"] for r in again] == ["success", "success"]
    assert stack.query("SELECT count(*) FROM backfill WHERE dag_id = :d", {"d": ORDER_FLOW}) == [2]
    assert [_claim_summary(stack, r["run_id"])["claimed"] for r in again] == [0, 0]
    assert all("Scope of this run: only work received from" in stack.task_log(ORDER_FLOW, r["run_id"], "claim_postings", try_number=2)
               for r in again)
    assert erp.state()["sales_orders"] == erp_before["sales_orders"]
    assert erp.state()["request_counts"] == erp_before["request_counts"]  # not one ERP call
    assert ledger_snapshot(ledger) == before
