"""F4 operator on a real ledger and the ERP sandbox: reconciliation, return orders, shipment dedupe, idempotency."""

from __future__ import annotations

import copy
import json
import time
from decimal import Decimal

import pytest
from airflow.sdk.exceptions import AirflowFailException

from omni_erp.ledger import Ledger
from omni_erp.operators.completion import ErpOrderCompleteOperator, reconcile
from omni_erp.operators.documents import ErpCreditNoteFetchOperator
from omni_erp.operators.inbox import OmniInboxClaimOperator
from omni_erp.sandbox.lifecycle import cancel_posting, complete_posting
from omni_erp.states import (
    DEAD,
    DOC_CREDIT_NOTE,
    DOC_KEPT_IN_ERP,
    DONE,
    ORDER_COMPLETED,
    ORDER_COMPLETED_WITH_RETURN,
    ORDER_INVOICED,
    PENDING,
    RETURN_BOOKED,
    RETURN_PARTIAL_CANCEL,
    RETURN_REJECTED,
)
from tests.flows import book, create_posting, record_invoices, store

COMPLETE = "OUTWARD_ORDER_COMPLETE"
BATCH = "omni_order_completion/manual__test"
SKU_A, SKU_B = "460491724004", "460491724011"  # x2 at 1120.00 and x1 at 3299.00 in the CREATE fixture
CODE = "FN0000000001"
RETURN_CALL = "POST /api/v1/return-orders"


@pytest.fixture()
def ledger(ledger_path) -> Ledger:
    return Ledger.sqlite(ledger_path)


@pytest.fixture()
def create(erp, ledger) -> dict:
    """Order CODE booked by F1 and its e-invoice recorded by F2."""
    posting = create_posting(1, CODE)
    book(ledger, posting)
    record_invoices(1)
    assert ledger.get_order(CODE)["state"] == ORDER_INVOICED
    return posting


def _complete(ledger: Ledger, *postings: dict, batch: str = BATCH) -> dict:
    store(ledger, *postings)
    OmniInboxClaimOperator(task_id="c", batch_id=batch, event_types=[COMPLETE]).execute(context={})
    return ErpOrderCompleteOperator(task_id="t", batch_id=batch).execute(context={})


def _return_posts(erp) -> int:
    return erp.state()["request_counts"].get(RETURN_CALL, 0)


def test_reconcile_compares_units_per_sku():
    table = reconcile(
        [(SKU_A, 2), (SKU_B, 1)],
        [(SKU_A, 1), (SKU_A, 1), ("999", 1)],
        [(SKU_B, 1)],
    )
    assert table.to_dict("index") == {
        SKU_A: {"invoiced": 2, "shipped": 2, "returned_before": 0, "difference": 0},
        SKU_B: {"invoiced": 1, "shipped": 0, "returned_before": 1, "difference": 0},
        "999": {"invoiced": 0, "shipped": 1, "returned_before": 0, "difference": -1},
    }


def test_shipped_equal_to_invoiced_closes_the_order_without_an_erp_call(erp, ledger, create):
    summary = _complete(ledger, complete_posting(create, 2, split_shipments=True))
    assert summary == {"batch_id": BATCH, "completed": 1, "new_shipments": 2}
    order = ledger.get_order(CODE)
    assert order["state"] == ORDER_COMPLETED and order["closed_at"] is not None
    assert [s["shipment_code"] for s in ledger.order_shipments(CODE)] == [f"SHP-{CODE}-1", f"SHP-{CODE}-2"]
    assert _return_posts(erp) == 0 and ledger.return_orders(order_code=CODE) == []


def test_units_cancelled_after_invoicing_go_on_one_return_order_at_the_invoice_prices(erp, ledger, create, capfd):
    invoice_number = ledger.get_order(CODE)["erp_invoice_number"]
    capfd.readouterr()
    summary = _complete(ledger, complete_posting(create, 2, cancelled_after_invoice={SKU_A: 1}))
    assert summary == {"batch_id": BATCH, "return_order_created": 1, "new_shipments": 1}
    logged = capfd.readouterr().out
    assert "invoiced  shipped  returned_before  difference" in logged  # the per-SKU table of a non-plain match

    [ret] = erp.state()["return_orders"]
    assert ret["returnOrderCode"] == f"PC-{CODE}-1"
    [line] = ret["request"].pop("lines")
    assert ret["request"] == {
        "returnOrderCode": f"PC-{CODE}-1", "orderCode": CODE, "invoiceNumber": invoice_number, "reason": RETURN_PARTIAL_CANCEL,
    }
    assert (line["lineCode"], line["sku"], line["quantity"], Decimal(line["unitPrice"])) == (f"{CODE}-1", SKU_A, 1, Decimal("1120"))
    [stored] = ledger.return_orders(order_code=CODE)
    assert (stored["kind"], stored["state"], stored["erp_return_order_id"]) == (RETURN_PARTIAL_CANCEL, RETURN_BOOKED, ret["returnOrderId"])
    assert [c["idempotency_key"] for c in ledger.calls() if c["operation"] == "create_return_order"] == [f"return:PC-{CODE}-1"]
    order = ledger.get_order(CODE)
    assert order["state"] == ORDER_COMPLETED_WITH_RETURN and order["closed_at"] is not None

    # The ERP raises the credit note; F6 keeps it in the ERP (domain.md decision 6).
    deadline = time.monotonic() + 5
    while not erp.state()["credit_notes"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ErpCreditNoteFetchOperator(task_id="f6", batch_id="setup/f6").execute(context={})
    [note] = ledger.documents(DOC_CREDIT_NOTE, order_code=CODE)
    assert note["state"] == DOC_KEPT_IN_ERP and note["related_code"] == f"PC-{CODE}-1"

    # A retried task and a re-delivered posting (same shipment) change nothing.
    assert ErpOrderCompleteOperator(task_id="t", batch_id=BATCH).execute(context={}) == {"batch_id": BATCH}
    again = _complete(ledger, complete_posting(create, 3, cancelled_after_invoice={SKU_A: 1}), batch="f4/again")
    assert again == {"batch_id": "f4/again", "already_completed": 1, "duplicate_shipments": 1}
    assert _return_posts(erp) == 1 and len(ledger.return_orders(order_code=CODE)) == 1


def test_crash_after_the_erp_booked_the_return_order_replays_the_same_code(erp, ledger, create, monkeypatch):
    monkeypatch.setenv("OMNI_ERP_HTTP_READ_TIMEOUT_S", "0.3")
    erp.configure(fail_next=["timeout"] * 4, timeout_s=0.6)  # booked in the ERP, the answer never arrives
    with pytest.raises(AirflowFailException, match="1 item\\(s\\) deferred"):
        _complete(ledger, complete_posting(create, 2, cancelled_after_invoice={SKU_B: 1}))
    [stored] = ledger.return_orders(order_code=CODE)
    assert stored["return_order_code"] == f"PC-{CODE}-1" and stored["erp_return_order_id"] is None
    assert ledger.get_order(CODE)["state"] == ORDER_INVOICED
    assert ledger.postings(COMPLETE)[0]["state"] == PENDING

    later = "f4/replay"
    OmniInboxClaimOperator(task_id="c", batch_id=later, event_types=[COMPLETE]).execute(context={})
    summary = ErpOrderCompleteOperator(task_id="t", batch_id=later).execute(context={})
    assert summary == {"batch_id": later, "return_order_created": 1}  # its shipment was recorded by the first attempt
    [ret] = erp.state()["return_orders"]  # still one return order in the ERP
    assert ret["returnOrderCode"] == f"PC-{CODE}-1"
    assert erp.state()["duplicates"]["return_order"] >= 1
    [stored] = ledger.return_orders(order_code=CODE)
    assert stored["state"] == RETURN_BOOKED and stored["erp_return_order_id"] == ret["returnOrderId"]
    assert ledger.get_order(CODE)["state"] == ORDER_COMPLETED_WITH_RETURN


def test_repeated_shipments_count_once_and_an_extra_one_is_dead_lettered_with_the_figures(erp, ledger, create):
    first = complete_posting(create, 2, split_shipments=True)
    assert _complete(ledger, first)["completed"] == 1

    resent = copy.deepcopy(first)
    resent["messageId"] = 3
    extra = copy.deepcopy(resent["shipments"][0])
    extra["shipmentCode"] = f"SHP-{CODE}-3"
    extra["shipmentItems"] = [dict(extra["shipmentItems"][0], quantity=1)]  # one more unit of SKU A
    resent["shipments"].append(extra)
    summary = _complete(ledger, resent, batch="f4/resent")
    assert summary == {"batch_id": "f4/resent", "dead_letter": 1, "duplicate_shipments": 2, "new_shipments": 1}

    [dead] = ledger.dead_letters("order_completion")
    # Counted once per shipment: 2 + 1 units of A, not 2 + 2 + 1.
    assert f"{SKU_A}: invoiced 2, shipped 3, returned before 0" in dead["reason"]
    assert SKU_B not in dead["reason"]
    figures = {row["sku"]: row for row in json.loads(dead["payload"])}
    assert figures[SKU_A]["difference"] == -1 and figures[SKU_B]["difference"] == 0
    assert ledger.postings(COMPLETE)[1]["state"] == DEAD
    assert ledger.get_order(CODE)["state"] == ORDER_COMPLETED
    assert _return_posts(erp) == 0


def test_more_shipped_than_invoiced_is_never_guessed(erp, ledger, create):
    posting = complete_posting(create, 2)
    posting["shipments"][0]["shipmentItems"][1]["quantity"] = 2  # SKU B: 1 invoiced, 2 shipped
    assert _complete(ledger, posting) == {"batch_id": BATCH, "dead_letter": 1, "new_shipments": 1}
    [dead] = ledger.dead_letters("order_completion")
    assert f"{SKU_B}: invoiced 1, shipped 2" in dead["reason"]
    assert ledger.get_order(CODE)["state"] == ORDER_INVOICED
    assert _return_posts(erp) == 0


def test_unknown_and_cancelled_orders_are_dead_lettered(erp, ledger):
    unknown = create_posting(1, "FN0000000009")
    cancelled = create_posting(2, "FN0000000002")
    store(ledger, cancel_posting(cancelled, 3))
    OmniInboxClaimOperator(task_id="c", batch_id="f3", event_types=["OUTWARD_ORDER_CANCEL"]).execute(context={})
    from omni_erp.operators.cancellation import ErpOrderCancelOperator

    ErpOrderCancelOperator(task_id="f3", batch_id="f3").execute(context={})

    summary = _complete(ledger, complete_posting(unknown, 4), complete_posting(cancelled, 5))
    assert summary == {"batch_id": BATCH, "dead_letter": 2}
    reasons = {d["business_key"]: d["reason"] for d in ledger.dead_letters("order_completion")}
    assert "unknown" in reasons["FN0000000009"] and "cancelled" in reasons["FN0000000002"]
    assert ledger.order_shipments("FN0000000009") == []
    assert erp.state()["request_counts"] == {}


def test_completion_waits_for_the_e_invoice_to_be_recorded(erp, ledger):
    erp.configure(invoice_hold=[CODE])
    posting = create_posting(1, CODE)
    book(ledger, posting)
    assert _complete(ledger, complete_posting(posting, 2)) == {"batch_id": BATCH, "waiting_for_einvoice": 1, "new_shipments": 1}
    [row] = ledger.postings(COMPLETE)
    assert row["state"] == PENDING and row["last_error"] == "no e-invoice recorded yet"

    erp.configure(invoice_hold=[])
    record_invoices(1)
    later = "f4/later"
    OmniInboxClaimOperator(task_id="c", batch_id=later, event_types=[COMPLETE]).execute(context={})
    assert ErpOrderCompleteOperator(task_id="t", batch_id=later).execute(context={}) == {"batch_id": later, "completed": 1}
    assert ledger.postings(COMPLETE)[0]["state"] == DONE


def test_erp_rejecting_the_return_order_is_dead_lettered(erp, ledger, create):
    erp.configure(fail_next=[400])
    summary = _complete(ledger, complete_posting(create, 2, cancelled_after_invoice={SKU_A: 2}))
    assert summary == {"batch_id": BATCH, "rejected_by_erp": 1, "new_shipments": 1}
    [stored] = ledger.return_orders(order_code=CODE)
    assert stored["state"] == RETURN_REJECTED
    [dead] = ledger.dead_letters("order_completion")
    assert dead["reason"].startswith("ERP rejected the return order:")
    assert ledger.get_order(CODE)["state"] == ORDER_INVOICED
