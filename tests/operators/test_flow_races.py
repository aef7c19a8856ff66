"""Races between flows: a cancellation arriving while F1 books, or while F2 is about to upload the invoice."""

from __future__ import annotations

import threading
import time

import pytest

from omni_erp.ledger import Ledger
from omni_erp.operators.cancellation import ErpOrderCancelOperator
from omni_erp.operators.erp import ErpSalesOrderCreateOperator
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.operators.omni import OmniInvoiceUploadOperator
from omni_erp.sandbox.lifecycle import cancel_posting
from omni_erp.states import CANCEL_NOT_BOOKED, CANCEL_SALES_ORDER, DOC_INVOICE, DOC_SKIPPED, ORDER_CANCELLED, PENDING
from tests.flows import CANCEL, book, create_posting, record_invoices, sales_order_of, store


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
