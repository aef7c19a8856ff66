"""omni_order_posting end to end with dag.test(): pusher -> inbox -> ledger -> DAG -> ERP sandbox."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest

from omni_erp.ledger import Ledger
from omni_erp.sandbox.pusher import PostingPusher, generate_orders
from omni_erp.states import DEAD, DONE, ORDER_READY, PENDING
from tests.conftest import INBOX_KEY
from tests.flows import create_posting, store

pytestmark = pytest.mark.integration

DAG_ID = "omni_order_posting"


def _push(inbox_url: str, postings: list[dict], redeliver_rate: float = 0.0):
    report = PostingPusher(inbox_url, INBOX_KEY, backoff_s=0.01, redeliver_rate=redeliver_rate, seed=3).push(postings)
    assert report.accepted == len(postings), report.rejected
    return report


def _sales_order_posts(erp) -> int:
    counts = erp.state()["request_counts"]
    return sum(n for endpoint, n in counts.items() if "sales-orders" in endpoint and "POST" in endpoint)


def _bookable(postings: list[dict]) -> set[str]:
    return {
        p["orderCode"]
        for p in postings
        if p.get("orderCustomAttributes", {}).get("attribute1")
        and any(i["orderedQuantity"] > i["cancelledQuantity"] for i in p["orderItems"])
    }


def test_every_pushed_order_is_booked_exactly_once_and_a_rerun_books_nothing(erp, inbox, ledger_path, run_dag):
    postings = generate_orders(16, seed=11, missing_po_rate=0.15, fully_cancelled_rate=0.1, partially_cancelled_rate=0.3)
    bookable = _bookable(postings)
    missing_po = {p["orderCode"] for p in postings if not p.get("orderCustomAttributes", {}).get("attribute1")}
    assert bookable and missing_po, "the seed must produce both kinds of order"
    push = _push(inbox, postings, redeliver_rate=0.3)
    assert push.redelivered > 0
    # A flaky ERP: two 5xx and one answer that arrives after the client gave up (but the order was booked).
    erp.configure(fail_next=[503, "timeout", 500], timeout_s=2.5)

    dag = run_dag(DAG_ID)
    first = dag()
    # Red: the postings without a PO were dead-lettered (mapping failed); the others were still booked.
    assert first.state == "failed"
    assert first.get_task_instance("map_sales_orders").state == "failed"
    assert first.get_task_instance("create_sales_orders", map_index=0).state == "success"

    booked = erp.state()["sales_orders"]
    assert Counter(o["orderCode"] for o in booked) == Counter(bookable)  # each bookable order exactly once
    ledger = Ledger.sqlite(ledger_path)
    dead = {d["business_key"]: d["reason"] for d in ledger.dead_letters("order_posting")}
    assert set(dead) == missing_po
    assert all("Ajio PO number missing" in reason for reason in dead.values())
    orders = {code: ledger.get_order(code) for code in bookable}
    assert all(o["state"] == "booked" and o["erp_sales_order_id"] for o in orders.values())
    assert {r["state"] for r in ledger.postings()} <= {DONE, DEAD}
    booking = first.get_task_instance("create_sales_orders", map_index=0)
    summary = booking.xcom_pull(task_ids="create_sales_orders", map_indexes=0)
    assert summary["booked"] + summary.get("already_booked", 0) == len(bookable), summary
    assert first.get_task_instance("report_outcome").state == "failed"

    posts_before = _sales_order_posts(erp)
    second = dag()
    assert second.state == "success"
    assert dag.xcom(second, "claim_postings")["claimed"] == 0
    assert _sales_order_posts(erp) == posts_before  # no new ERP call at all
    assert len(erp.state()["sales_orders"]) == len(bookable)


def test_erp_outage_leaves_postings_pending_and_the_next_run_books_them(erp, inbox, ledger_path, run_dag):
    postings = generate_orders(5, seed=5)
    _push(inbox, postings)
    erp.configure(error_rate=1.0)

    dag = run_dag(DAG_ID)
    failed = dag()
    assert failed.state == "failed"
    assert failed.get_task_instance("create_sales_orders", map_index=0).state == "failed"
    # The outcome table is still logged; the report then fails the run because postings wait for the next one.
    assert failed.get_task_instance("report_outcome").state == "failed"
    ledger = Ledger.sqlite(ledger_path)
    rows = ledger.postings()
    assert {r["state"] for r in rows} == {PENDING}
    assert all(r["attempts"] == 1 and "503" in r["last_error"] for r in rows)
    assert erp.state()["sales_orders"] == []

    erp.configure(error_rate=0.0)
    recovered = dag()
    assert recovered.state == "success"
    assert sorted(o["orderCode"] for o in erp.state()["sales_orders"]) == sorted(p["orderCode"] for p in postings)
    assert {r["state"] for r in ledger.postings()} == {DONE}


def test_poison_postings_among_good_ones_leave_the_good_ones_booked_and_the_run_red(erp, ledger_path, run_dag):
    """Issue 6.1 end to end: nothing a single posting holds can stop the others or leave the run green."""
    ledger = Ledger.sqlite(ledger_path)
    good = [create_posting(n, f"FN000000000{n}") for n in range(1, 5)] + [create_posting(5, "FN-खरीद-🙂-005")]
    bidi = create_posting(6, "FN\u202e0000000006")  # stored before the inbox refused bidi overrides
    corrupt = create_posting(7, "FN0000000007")
    store(ledger, *good[:2], bidi, corrupt, *good[2:])
    # An unreadable ERP request under the poison's message id (as an older version could have left it).
    ledger.register_order(
        order_code="FN0000000007", po_number="4042600007", state=ORDER_READY, create_message_id="7",
        lines=[], total_amount=Decimal(0), erp_request={"orderCode": "FN0000000007"},
    )

    run = run_dag(DAG_ID)()

    assert run.state == "failed"
    assert {t: run.get_task_instance(t, map_index=0 if t == "create_sales_orders" else -1).state
            for t in ("claim_postings", "map_sales_orders", "create_sales_orders", "report_outcome")} == {
        "claim_postings": "success", "map_sales_orders": "failed", "create_sales_orders": "failed", "report_outcome": "failed"
    }
    assert sorted(o["orderCode"] for o in erp.state()["sales_orders"]) == sorted(p["orderCode"] for p in good)
    rows = {r["message_id"]: r for r in ledger.postings()}
    assert {m: rows[m]["state"] for m in ("1", "2", "3", "4", "5")} == dict.fromkeys(["1", "2", "3", "4", "5"], DONE)
    assert rows["6"]["state"] == DEAD and [d["message_id"] for d in ledger.dead_letters("order_posting")] == ["6"]
    assert (rows["7"]["state"], rows["7"]["attempts"]) == (PENDING, 1)
    assert "unexpected error: ValidationError" in rows["7"]["last_error"] and "(attempt 1 of 3)" in rows["7"]["last_error"]
