"""omni_order_cancellation end to end with dag.test(): CREATE and CANCEL postings through the inbox, F1 then F3."""

from __future__ import annotations

from datetime import timedelta

import pytest

from omni_erp.ledger import Ledger
from omni_erp.sandbox.lifecycle import cancel_posting
from omni_erp.sandbox.pusher import PostingPusher
from omni_erp.states import CANCEL_CREDIT_NOTE, CANCEL_IRN, CANCEL_NOT_BOOKED, CANCEL_SALES_ORDER, DOC_INVOICE, DOC_SKIPPED, DONE
from tests.conftest import INBOX_KEY
from tests.flows import DAY, create_posting, erp_writes, record_invoices, set_clocks

pytestmark = pytest.mark.integration

DAG_ID = "omni_order_cancellation"


def _push(inbox_url: str, *postings: dict) -> None:
    report = PostingPusher(inbox_url, INBOX_KEY, backoff_s=0.01).push(postings)
    assert report.accepted == len(postings), report.rejected


def _status(erp, kind: str) -> dict[str, str]:
    return {d["orderCode"]: d["status"] for d in erp.state()[kind]}


def test_each_route_end_to_end_and_a_redelivery_a_day_later_changes_nothing(erp, inbox, ledger_path, run_dag, monkeypatch):
    a, b, c, d = (create_posting(900001 + n, f"FN000000000{n + 1}") for n in range(4))
    erp.configure(invoice_hold=[c["orderCode"]])  # C is booked but its e-invoice does not come yet
    _push(inbox, a, b, c)  # D's CREATE has not arrived
    assert run_dag("omni_order_posting")().state == "success"
    record_invoices(2)  # F2 records the e-invoices of A and B
    ledger = Ledger.sqlite(ledger_path)

    dag = run_dag(DAG_ID)
    _push(inbox, cancel_posting(a, 910001), cancel_posting(c, 910003), cancel_posting(d, 910004))
    first = dag()
    assert first.state == "success"
    assert dag.xcom(first, "cancel_orders") == {
        "batch_id": f"{DAG_ID}/{first.run_id}", CANCEL_IRN: 1, CANCEL_SALES_ORDER: 1, CANCEL_NOT_BOOKED: 1,
    }
    assert {code: ledger.get_order(code)["cancel_route"] for code in (a["orderCode"], c["orderCode"], d["orderCode"])} == {
        a["orderCode"]: CANCEL_IRN, c["orderCode"]: CANCEL_SALES_ORDER, d["orderCode"]: CANCEL_NOT_BOOKED,
    }
    assert ledger.get_document(DOC_INVOICE, ledger.get_order(a["orderCode"])["erp_invoice_number"])["state"] == DOC_SKIPPED

    # A day later: B is cancelled (credit note), and Omni re-delivers A's cancellation under a new messageId.
    set_clocks(monkeypatch, erp, ledger.get_order(b["orderCode"])["invoiced_at"] + DAY + timedelta(hours=1))
    erp.configure(invoice_hold=[])
    _push(inbox, cancel_posting(b, 910002), cancel_posting(a, 910011))
    second = dag()
    assert second.state == "success"
    assert dag.xcom(second, "cancel_orders") == {
        "batch_id": f"{DAG_ID}/{second.run_id}", CANCEL_CREDIT_NOTE: 1, "already_cancelled": 1,
    }
    report = dag.xcom(second, "report_outcome")
    # The run report names the credit-note route, and B's invoice that will never be uploaded.
    assert report["by_outcome"] == {"done:already_cancelled": 1, "done:credit_note": 1, f"invoice:{DOC_SKIPPED}": 1}

    assert erp_writes(erp) == {
        "POST /api/v1/sales-orders/{salesOrderId}/cancel": 2,  # A (after its IRN) and C
        "POST /api/v1/e-invoices/cancel-irn": 1,
        "POST /api/v1/credit-notes": 1,
    }
    assert _status(erp, "invoices") == {a["orderCode"]: "CANCELLED", b["orderCode"]: "ACTIVE"}  # C never invoiced
    assert _status(erp, "sales_orders") == {a["orderCode"]: "CANCELLED", b["orderCode"]: "INVOICED", c["orderCode"]: "CANCELLED"}
    [request] = erp.state()["credit_note_requests"]
    assert request["invoiceNumber"] == ledger.get_order(b["orderCode"])["erp_invoice_number"]
    assert {p["state"] for p in ledger.postings("OUTWARD_ORDER_CANCEL")} == {DONE}
