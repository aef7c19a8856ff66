"""omni_order_completion end to end with dag.test(): CREATE and COMPLETE postings through the inbox, F1, F2's fetch, F4."""

from __future__ import annotations

import pytest

from omni_erp.ledger import Ledger
from omni_erp.sandbox.lifecycle import complete_posting
from omni_erp.sandbox.pusher import PostingPusher
from omni_erp.states import DEAD, DONE, ORDER_COMPLETED, ORDER_COMPLETED_WITH_RETURN, ORDER_PARTIALLY_SHIPPED, RETURN_BOOKED
from tests.conftest import INBOX_KEY
from tests.flows import create_posting, record_invoices

pytestmark = pytest.mark.integration

DAG_ID = "omni_order_completion"
SKU_A = "460491724004"


def _push(inbox_url: str, *postings: dict) -> None:
    report = PostingPusher(inbox_url, INBOX_KEY, backoff_s=0.01).push(postings)
    assert report.accepted == len(postings), report.rejected


def test_completions_end_to_end_split_shipments_and_redelivered_postings_book_nothing_twice(erp, inbox, ledger_path, run_dag):
    full, partial, unknown = (create_posting(900001 + n, f"FN000000000{n + 1}") for n in range(3))
    _push(inbox, full, partial)
    assert run_dag("omni_order_posting")().state == "success"
    record_invoices(2)
    ledger = Ledger.sqlite(ledger_path)

    dag = run_dag(DAG_ID)
    both = complete_posting(full, 920011, split_shipments=True)
    first_shipment_only = {**both, "messageId": 920001, "shipments": both["shipments"][:1]}
    _push(inbox, first_shipment_only, complete_posting(partial, 920002, cancelled_after_invoice={SKU_A: 1}), complete_posting(unknown, 920003))
    first = dag()
    assert first.state == "failed"  # the unknown order's posting is dead-lettered: the run shows red
    assert {p["message_id"]: (p["state"], p["outcome"]) for p in ledger.postings("OUTWARD_ORDER_COMPLETE")} == {
        "920001": (DONE, "partially_shipped"), "920002": (DONE, "return_order_created"), "920003": (DEAD, "dead_letter"),
    }
    assert ledger.get_order(full["orderCode"])["state"] == ORDER_PARTIALLY_SHIPPED  # the rest ships later: no return order
    assert ledger.get_order(partial["orderCode"])["state"] == ORDER_COMPLETED_WITH_RETURN
    [ret] = ledger.return_orders()
    assert ret["order_code"] == partial["orderCode"] and ret["state"] == RETURN_BOOKED
    assert [(line["sku"], line["quantity"]) for line in ret["lines"]] == [(SKU_A, 1)]
    [dead] = ledger.dead_letters("order_completion")
    assert dead["business_key"] == unknown["orderCode"] and "unknown" in dead["reason"]

    # The second shipment leaves: Omni posts it with the first repeated, and re-delivers the other completion.
    _push(inbox, both, complete_posting(partial, 920012, cancelled_after_invoice={SKU_A: 1}))
    second = dag()
    assert second.state == "success"
    assert dag.xcom(second, "complete_orders") == {
        "batch_id": f"{DAG_ID}/{second.run_id}", "completed": 1, "already_completed": 1, "new_shipments": 1, "duplicate_shipments": 2,
    }
    assert ledger.get_order(full["orderCode"])["state"] == ORDER_COMPLETED
    assert len(erp.state()["return_orders"]) == 1
    assert erp.state()["request_counts"].get("POST /api/v1/return-orders") == 1
    assert {p["state"] for p in ledger.postings("OUTWARD_ORDER_COMPLETE")} == {DONE, DEAD}
