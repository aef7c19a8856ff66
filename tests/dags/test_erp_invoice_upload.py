"""erp_invoice_upload end to end with dag.test(): orders booked by F1, e-invoiced by the ERP, uploaded to Omni once."""

from __future__ import annotations

import time

import pytest

from omni_erp.ledger import Ledger
from omni_erp.sandbox.pusher import PostingPusher, generate_orders
from omni_erp.states import DOC_INVOICE, DOC_READY, DOC_UPLOADED, ORDER_INVOICED
from tests.conftest import INBOX_KEY
from tests.flows import book, create_posting

pytestmark = pytest.mark.integration


def _wait_for_invoices(erp, count: int) -> list[dict]:
    deadline = time.monotonic() + 5
    while len(invoices := erp.state()["invoices"]) < count:
        assert time.monotonic() < deadline, f"the ERP e-invoiced {len(invoices)} of {count} orders"
        time.sleep(0.05)
    return invoices


def test_booked_orders_are_uploaded_once_and_a_re_read_sends_nothing(erp, omni, inbox, ledger_path, run_dag):
    postings = generate_orders(6, seed=21, partially_cancelled_rate=0.5)
    partially_cancelled = {
        p["orderCode"] for p in postings if any(i["cancelledQuantity"] for i in p["orderItems"])
    }
    assert partially_cancelled and len(partially_cancelled) < len(postings), "the seed must give both kinds"
    report = PostingPusher(inbox, INBOX_KEY, backoff_s=0.01).push(postings)
    assert report.accepted == len(postings), report.rejected
    assert run_dag("omni_order_posting")().state == "success"
    invoices = _wait_for_invoices(erp, len(postings))

    dag = run_dag("erp_invoice_upload")
    first = dag()

    assert first.state == "success"
    fetched = dag.xcom(first, "fetch_einvoices")
    assert fetched == {
        "batch_id": f"erp_invoice_upload/{first.run_id}", "read": 6, "new": 6, "cursor": 6, "ready_to_upload": 6
    }
    assert dag.xcom(first, "upload_invoices") == {"batch_id": fetched["batch_id"], DOC_UPLOADED: 6}
    assert dag.xcom(first, "report_outcome")["by_outcome"] == {f"{DOC_INVOICE}:{DOC_UPLOADED}": 6}
    received = {d["body"]["invoiceNumber"]: d["body"] for d in omni.state()["invoices"]}
    assert set(received) == {i["invoiceNumber"] for i in invoices}
    by_order = {i["orderCode"]: received[i["invoiceNumber"]] for i in invoices}
    assert {code for code, body in by_order.items() if body["isPartialInvoice"]} == partially_cancelled
    ledger = Ledger.sqlite(ledger_path)
    for posting in postings:
        order = ledger.get_order(posting["orderCode"])
        assert order["state"] == ORDER_INVOICED
        assert by_order[posting["orderCode"]]["forwardPurchaseOrder"] == posting["orderCustomAttributes"]["attribute1"]

    posts = sum(n for endpoint, n in omni.state()["request_counts"].items() if "b2bInvoice" in endpoint)
    again = dag(since_seq=0, retry_failed=True)

    assert again.state == "success"
    assert dag.xcom(again, "fetch_einvoices")["new"] == 0
    assert set(dag.xcom(again, "upload_invoices")) == {"batch_id"}
    assert sum(n for endpoint, n in omni.state()["request_counts"].items() if "b2bInvoice" in endpoint) == posts
    assert omni.state()["duplicates"] == {}


def test_omni_down_for_a_whole_run_keeps_every_invoice_ready_fails_the_run_and_the_next_run_uploads_each_once(
    erp, omni, ledger_path, run_dag
):
    ledger = Ledger.sqlite(ledger_path)
    book(ledger, *(create_posting(n, f"FN00000000{n:02d}") for n in range(1, 5)))  # the real F1 operators
    invoices = {i["invoiceNumber"] for i in _wait_for_invoices(erp, 4)}
    omni.configure(error_rate=1.0)  # Omni answers 503 to every upload, retries included

    dag = run_dag("erp_invoice_upload")
    down = dag()

    assert down.state == "failed"  # red, so the failure alert fires
    tasks = {ti.task_id: ti.state for ti in down.get_task_instances()}
    assert (tasks["fetch_einvoices"], tasks["upload_invoices"]) == ("success", "failed")
    documents = ledger.documents(DOC_INVOICE)
    assert {d["doc_number"] for d in documents} == invoices  # nothing lost ...
    assert all(d["state"] == DOC_READY and "waiting for the next run" in d["reason"] for d in documents)  # ... all waiting
    assert all(d["batch_id"] == f"erp_invoice_upload/{down.run_id}" for d in documents)  # the report lists them
    assert omni.state()["invoices"] == []

    omni.configure(error_rate=0.0)
    up = dag()

    assert up.state == "success"
    assert dag.xcom(up, "upload_invoices") == {"batch_id": f"erp_invoice_upload/{up.run_id}", DOC_UPLOADED: 4}
    received = [d["body"]["invoiceNumber"] for d in omni.state()["invoices"]]
    assert sorted(received) == sorted(invoices) and omni.state()["duplicates"] == {}  # each exactly once
