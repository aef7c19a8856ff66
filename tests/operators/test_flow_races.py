"""Races between flows: a cancellation arriving while F1 books, or while F2 is about to upload the invoice."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from airflow.sdk.exceptions import AirflowFailException

from omni_erp.ledger import Ledger
from omni_erp.operators.cancellation import ErpOrderCancelOperator
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.invoice_upload import OmniInvoiceUploadOperator
from omni_erp.operators.order_posting import ErpSalesOrderCreateOperator, ErpSalesOrderMapOperator
from omni_erp.sandbox.lifecycle import cancel_posting
from omni_erp.states import (
    CANCEL_NOT_BOOKED,
    CANCEL_SALES_ORDER,
    DOC_INVOICE,
    DOC_SKIPPED,
    DONE,
    ORDER_BOOKED,
    ORDER_CANCELLED,
    PENDING,
)
from tests.flows import CANCEL, CREATE, book, create_posting, record_invoices, sales_order_of, store


@pytest.fixture()
def ledger(ledger_path) -> Ledger:
    return Ledger.sqlite(ledger_path)


def test_order_cancelled_while_its_booking_is_in_flight_is_handed_back_to_f3(erp, ledger):
    create = create_posting(1, "FN0000000001")
    batch = book(ledger, create, create=False)  # mapped, not booked yet
    erp.configure(latency_ms=2500, invoice_hold=["FN0000000001"])
    result: dict = {}
    booking = threading.Thread(
        target=lambda: result.update(ErpSalesOrderCreateOperator(task_id="b", batch_id=batch).execute(context={}))
    )
    booking.start()
    time.sleep(0.5)  # the ERP is booking; meanwhile F3 handles the cancellation (nothing booked as far as it knows)
    store(ledger, cancel_posting(create, 2))
    OmniInboxClaimOperator(task_id="c", batch_id="f3/run-1", event_types=[CANCEL]).execute(context={})
    erp.configure(latency_ms=0)
    assert ErpOrderCancelOperator(task_id="x", batch_id="f3/run-1").execute(context={}) == {
        "batch_id": "f3/run-1", CANCEL_NOT_BOOKED: 1
    }
    booking.join(timeout=30)
    assert result == {"batch_id": batch, "booked_while_cancelled": 1}
    [cancel] = [p for p in ledger.postings(CANCEL)]
    assert cancel["state"] == PENDING and "booked in the ERP" in cancel["last_error"]

    # The next F3 run cancels what the ERP now holds.
    OmniInboxClaimOperator(task_id="c", batch_id="f3/run-2", event_types=[CANCEL]).execute(context={})
    assert ErpOrderCancelOperator(task_id="x", batch_id="f3/run-2").execute(context={}) == {
        "batch_id": "f3/run-2", CANCEL_SALES_ORDER: 1
    }
    assert sales_order_of(erp, "FN0000000001")["status"] == "CANCELLED"
    order = ledger.get_order("FN0000000001")
    assert (order["state"], order["cancel_route"]) == (ORDER_CANCELLED, CANCEL_SALES_ORDER)


def test_invoice_of_an_order_with_a_cancellation_waiting_is_not_uploaded(erp, omni, ledger):
    book(ledger, create_posting(1, "FN0000000001"))
    record_invoices(1)
    store(ledger, cancel_posting(create_posting(1, "FN0000000001"), 2))  # F3 has not run yet
    summary = OmniInvoiceUploadOperator(task_id="u", batch_id="f2/run").execute(context={})
    assert summary == {"batch_id": "f2/run", DOC_SKIPPED: 1}
    [invoice] = ledger.documents(DOC_INVOICE)
    assert invoice["state"] == DOC_SKIPPED and "cancellation waiting" in invoice["reason"]
    assert omni.state()["invoices"] == []


def test_two_tries_working_one_batch_book_each_order_once_and_call_it_booked(erp, ledger, caplog):
    """Issue 7.2: a task retried while its first try is still alive. Both book the same orders with the same
    keys; the one whose compare-and-set loses reads the order again and finds it booked - not cancelled."""
    codes = [f"FN000000000{n}" for n in range(1, 6)]
    batch = book(ledger, *[create_posting(n, code) for n, code in enumerate(codes, start=1)], create=False)
    erp.configure(latency_ms=300)  # both tries are in the ERP at the same time for every order
    start = threading.Barrier(2)
    summaries: list[dict] = []

    def one_try() -> None:
        start.wait()
        summaries.append(ErpSalesOrderCreateOperator(task_id="b", batch_id=batch).execute(context={}))

    tries = [threading.Thread(target=one_try) for _ in range(2)]
    for t in tries:
        t.start()
    for t in tries:
        t.join(timeout=60)

    outcomes = Counter()
    for summary in summaries:
        outcomes.update({k: v for k, v in summary.items() if k != "batch_id"})
    assert len(summaries) == 2 and set(outcomes) <= {"booked", "already_booked"} and sum(outcomes.values()) == 10
    state = erp.state()
    assert sorted(o["orderCode"] for o in state["sales_orders"]) == codes  # each booked once
    assert state["duplicates"]["sales_order"] >= 1  # the race did happen: both tries called the ERP for one order
    for code in codes:
        order = ledger.get_order(code)
        assert (order["state"], order["cancel_route"]) == (ORDER_BOOKED, None)
        assert order["erp_sales_order_id"] == sales_order_of(erp, code)["salesOrderId"]
    assert {(p["state"], p["outcome"]) for p in ledger.postings()} == {(DONE, "booked")}
    assert "cancelled while being booked" not in caplog.text


def test_a_slow_first_try_cannot_undo_what_a_later_run_recorded(erp, ledger, monkeypatch):
    """Run 1's call hangs past its lease; run 2 reclaims the posting and books it; run 1 then times out and
    wants to give the posting back. It no longer holds it, so nothing it records applies."""
    store(ledger, create_posting(1, "FN0000000001"))
    OmniInboxClaimOperator(task_id="c", batch_id="run-1", event_types=[CREATE], lease_minutes=0).execute(context={})
    ErpSalesOrderMapOperator(task_id="m", batch_id="run-1", lease_minutes=0).execute(context={})  # renews with run 1's lease
    monkeypatch.setenv("OMNI_ERP_HTTP_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("OMNI_ERP_HTTP_READ_TIMEOUT_S", "1.5")
    erp.configure(stall_next=1, stall_endpoint="POST /api/v1/sales-orders", stall_s=4)  # booked, answer held back
    first_try: dict = {}

    def slow_first_try() -> None:
        try:
            ErpSalesOrderCreateOperator(task_id="b", batch_id="run-1", lease_minutes=0).execute(context={})
        except AirflowFailException as exc:
            first_try["failed"] = str(exc)

    slow = threading.Thread(target=slow_first_try)
    slow.start()
    deadline = time.monotonic() + 5
    while not erp._call("GET", "faults")["stalled"]:
        assert time.monotonic() < deadline, "run 1's booking never reached the ERP"
        time.sleep(0.02)
    OmniInboxClaimOperator(task_id="c", batch_id="run-2", event_types=[CREATE]).execute(context={})
    second = ErpSalesOrderCreateOperator(task_id="b", batch_id="run-2").execute(context={})
    slow.join(timeout=30)

    assert second == {"batch_id": "run-2", "already_booked": 1}  # the ERP replayed run 1's booking
    assert "1 item(s) deferred" in first_try["failed"]  # run 1 timed out and tried to give the posting back
    [posting] = ledger.postings()
    assert (posting["state"], posting["outcome"], posting["batch_id"]) == (DONE, "booked", "run-2")
    assert (posting["attempts"], posting["last_error"]) == (0, None)
    assert len(erp.state()["sales_orders"]) == 1
