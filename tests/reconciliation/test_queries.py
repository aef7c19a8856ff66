"""The reconciliation's ledger reads and the sla_breach verbs, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from omni_erp.ledger import Ledger
from omni_erp.ledger.queries import ReconciliationQueries
from omni_erp.states import (
    CANCEL_CREDIT_NOTE,
    DOC_CREDIT_NOTE,
    ORDER_BOOKED,
    ORDER_CANCELLED,
    ORDER_INVOICED,
    RETURN_BOOKED,
    RETURN_CUSTOMER,
)

AT = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def _order(ledger: Ledger, code: str, state: str, **values) -> None:
    ledger.register_order(order_code=code, po_number="PO1", state=state, create_message_id=None, lines=[],
                          total_amount=Decimal("1.00"), erp_request=None)
    if values:
        ledger.update_order(code, **values)


def test_a_breach_is_recorded_once_cleared_when_it_stops_and_reopened_when_it_comes_back(ledger_url):
    queries = ReconciliationQueries(Ledger(ledger_url))

    with queries.ledger.transaction():
        queries.record_sla_alert("dead_lettered", {"dead_letter:1": ("FN1", "x"), "dead_letter:2": (None, "y")}, at=AT)
    assert queries.open_sla_breaches() == {"dead_lettered": {"dead_letter:1", "dead_letter:2"}}

    assert queries.clear_sla_breaches("dead_lettered", {"dead_letter:1"}, at=AT + timedelta(hours=1)) == 1
    assert queries.open_sla_breaches() == {"dead_lettered": {"dead_letter:2"}}

    queries.record_sla_alert("dead_lettered", {"dead_letter:1": ("FN1", "again")}, at=AT + timedelta(hours=2))
    rows = {r["subject"]: r for r in queries.sla_breaches()}
    assert len(rows) == 2  # the same subject is one row, reopened
    assert rows["dead_letter:1"]["cleared_at"] is None and rows["dead_letter:1"]["detail"] == "again"
    assert rows["dead_letter:1"]["alerted_at"] == AT + timedelta(hours=2)


def test_documents_not_at_the_irp_and_cancellations_waiting_are_found(ledger_url):
    ledger = Ledger(ledger_url)
    queries = ReconciliationQueries(ledger)
    _order(ledger, "FN1", ORDER_BOOKED)                                   # no e-invoice yet
    _order(ledger, "FN2", ORDER_INVOICED, invoiced_at=AT)                 # e-invoiced; its cancellation waits
    _order(ledger, "FN3", ORDER_CANCELLED, cancel_route=CANCEL_CREDIT_NOTE, closed_at=AT)  # credit note not seen
    _order(ledger, "FN4", ORDER_CANCELLED, cancel_route=CANCEL_CREDIT_NOTE, closed_at=AT)  # credit note seen
    ledger.record_document(doc_type=DOC_CREDIT_NOTE, doc_number="CN4", order_code="FN4", related_code="INV4", seq=1,
                           payload={}, state="kept_in_erp")
    ledger.register_return_order(return_order_code="R5", order_code="FN2", kind=RETURN_CUSTOMER, state=RETURN_BOOKED,
                                 lines=[], erp_request=None)
    ledger.register_return_order(return_order_code="R6", order_code="FN2", kind=RETURN_CUSTOMER, state=RETURN_BOOKED,
                                 lines=[], erp_request=None)
    ledger.update_return_order("R6", credit_note_number="CN6")
    ledger.record_posting(message_id="9", event_type="OUTWARD_ORDER_CANCEL", business_key="FN2", order_code="FN2",
                          payload={"messageId": 9})

    expected = {("invoice", "FN1"), ("credit_note", "R5"), ("credit_note", "FN3")}
    assert {(d["kind"], d["key"]) for d in queries.unregistered_documents()} == expected
    [cancellation] = queries.pending_cancellations()
    assert (cancellation["order_code"], cancellation["order_state"], cancellation["invoiced_at"]) == ("FN2", ORDER_INVOICED, AT)
    awaiting = {o["order_code"]: o for o in queries.orders_awaiting_upload()}
    assert set(awaiting) == {"FN1", "FN2"} and awaiting["FN1"]["invoice_state"] is None
    assert queries.orders_with_erp_order() == 0
    assert queries.counts_by("ajio_order", "state") == {(ORDER_BOOKED,): 1, (ORDER_INVOICED,): 1, (ORDER_CANCELLED,): 2}
