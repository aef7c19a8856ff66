"""F2/F6 document operators on a real ledger and both sandboxes: matching, uploads, cursor, idempotency."""

from __future__ import annotations

import base64
import json
import time
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from airflow.sdk.exceptions import AirflowFailException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_erp.hooks.erp import ErpHook
from omni_erp.ledger import Ledger
from omni_erp.models.erp import DocumentLine, ReturnOrderRequest, SalesOrderRequest
from omni_erp.operators.credit_notes import ErpCreditNoteFetchOperator, OmniCreditNoteUploadOperator
from omni_erp.operators.invoice_upload import ErpEInvoiceFetchOperator, OmniInvoiceUploadOperator
from omni_erp.states import (
    DOC_CREDIT_NOTE,
    DOC_INVALID,
    DOC_INVOICE,
    DOC_KEPT_IN_ERP,
    DOC_MISMATCH,
    DOC_READY,
    DOC_SKIPPED,
    DOC_UNMATCHED,
    DOC_UPLOAD_FAILED,
    DOC_UPLOADED,
    ORDER_BOOKED,
    ORDER_CANCELLED,
    ORDER_INVOICED,
    ORDER_READY,
    RETURN_CUSTOMER,
    RETURN_PARTIAL_CANCEL,
    RETURN_RTO,
)
from omni_erp.timeutil import parse_datetime, to_omni
from tests.conftest import SECRETS

BATCH = "erp_invoice_upload/manual__test"
SHIRT, JEANS = "460491724004", "460491724011"
PO = "4042640641"

Line = tuple[str, int, int, str]  # (sku, ordered, cancelled, tax-inclusive unit price)


@pytest.fixture()
def ledger(ledger_path) -> Ledger:
    return Ledger.sqlite(ledger_path)


def _run(operator_class, batch_id: str = BATCH, **kwargs) -> dict[str, Any]:
    return operator_class(task_id="t", batch_id=batch_id, **kwargs).execute(context={})


def _fails(operator_class, match: str, batch_id: str = BATCH, **kwargs) -> str:
    """Run an operator that must end failed (the run shows red); returns the failure message."""
    with pytest.raises(AirflowFailException, match=match) as failed:
        _run(operator_class, batch_id, **kwargs)
    return str(failed.value)


def _order(
    ledger: Ledger,
    code: str,
    lines: tuple[Line, ...] = ((SHIRT, 2, 0, "1120.00"),),
    *,
    erp_lines: tuple[tuple[str, int, str], ...] | None = None,
    erp_po: str = PO,
    in_ledger: bool = True,
) -> None:
    """An order as F1 leaves it: in the ledger (booked) and booked in the ERP, which e-invoices it shortly after.

    ``erp_lines``/``erp_po`` book something else in the ERP than the ledger holds (to make mismatches).
    """
    ledger_lines = [
        {"lineCode": f"{code}-{n}", "sku": sku, "ordered": o, "cancelled": c, "quantity": o - c, "unitPrice": price}
        for n, (sku, o, c, price) in enumerate(lines, start=1)
    ]
    booked = erp_lines or tuple((sku, o - c, price) for sku, o, c, price in lines if o > c)
    request = SalesOrderRequest(
        orderCode=code,
        poNumber=erp_po,
        buyerCode="AJIO-RRL",
        lines=[
            DocumentLine(lineCode=f"{code}-{n}", sku=sku, quantity=q, unitPrice=Decimal(p))
            for n, (sku, q, p) in enumerate(booked, start=1)
        ],
        totalAmount=sum((Decimal(p) * q for _, q, p in booked), Decimal(0)),
    )
    if in_ledger:
        ledger.register_order(
            order_code=code, po_number=PO, state=ORDER_READY, create_message_id=f"m-{code}", lines=ledger_lines,
            total_amount=sum((Decimal(p) * (o - c) for _, o, c, p in lines), Decimal(0)), erp_request=None,
        )
    booking = ErpHook().create_sales_order(request, idempotency_key=f"create:{code}")
    if in_ledger:
        ledger.update_order(code, state=ORDER_BOOKED, erp_sales_order_id=booking.document.sales_order_id)


def _wait_for(erp, kind: str, count: int) -> list[dict[str, Any]]:
    """The ERP generates documents asynchronously; wait until ``count`` of ``kind`` exist (visible or not)."""
    deadline = time.monotonic() + 5
    while len(documents := erp.state()[kind]) < count:
        assert time.monotonic() < deadline, f"the ERP generated only {len(documents)} {kind}"
        time.sleep(0.02)
    return documents


def _omni_invoices(omni) -> dict[str, dict[str, Any]]:
    return {d["body"]["invoiceNumber"]: d["body"] for d in omni.state()["invoices"]}


def _omni_posts(omni, path: str = "b2bInvoice") -> int:
    return sum(n for endpoint, n in omni.state()["request_counts"].items() if path in endpoint)


def _invoice_state(ledger: Ledger, order_code: str) -> dict[str, Any]:
    [document] = ledger.documents(DOC_INVOICE, order_code=order_code)
    return document


# --- e-invoice fetch and match ---------------------------------------------------------------------


def test_matched_invoice_is_ready_and_its_order_invoiced_at_the_ack_date(erp, ledger):
    _order(ledger, "FN0000000001")
    [invoice] = _wait_for(erp, "invoices", 1)

    summary = _run(ErpEInvoiceFetchOperator)

    assert summary == {"batch_id": BATCH, "read": 1, "new": 1, "cursor": invoice["seq"], DOC_READY: 1}
    order = ledger.get_order("FN0000000001")
    assert order["state"] == ORDER_INVOICED
    assert (order["erp_invoice_number"], order["irn"]) == (invoice["invoiceNumber"], invoice["irn"])
    assert order["invoiced_at"] == parse_datetime(invoice["ackDate"])  # F3's 24 h window starts here
    document = _invoice_state(ledger, "FN0000000001")
    assert (document["state"], document["seq"], document["batch_id"]) == (DOC_READY, invoice["seq"], BATCH)
    assert document["payload"]["irn"] == invoice["irn"]
    assert ledger.get_cursor("erp_einvoice_seq") == str(invoice["seq"])


@pytest.mark.parametrize(
    ("erp_lines", "erp_po", "expected"),
    [
        (None, "4042649999", "PO 4042649999 differs from the order's PO 4042640641"),
        (((JEANS, 2, "1120.00"),), PO, "SKU not in the order: 460491724011"),
        (((SHIRT, 3, "1120.00"),), PO, "SKU 460491724004: 3 invoiced, 2 booked"),
        (((SHIRT, 2, "1125.00"),), PO, "totalValue 2250.00 differs from 2240.00 (invoiced units at the order's prices) by 10.00"),
    ],
    ids=["po-differs", "sku-not-in-order", "quantity-above-booked", "total-off-by-more-than-a-rupee"],
)
def test_invoice_that_disagrees_with_its_order_is_a_mismatch_with_the_figures(erp, ledger, erp_lines, erp_po, expected):
    _order(ledger, "FN0000000001", erp_lines=erp_lines, erp_po=erp_po)
    _wait_for(erp, "invoices", 1)

    failure = _fails(ErpEInvoiceFetchOperator, r"1 e-invoice\(s\) of the ERP feed need a person")

    assert expected in failure and "'mismatch': 1" in failure
    document = _invoice_state(ledger, "FN0000000001")
    assert document["state"] == DOC_MISMATCH and expected in document["reason"]
    assert ledger.get_order("FN0000000001")["state"] == ORDER_BOOKED  # not invoiced: a person must look
    [dead] = ledger.dead_letters("invoice_upload")
    assert expected in dead["reason"] and dead["business_key"] == document["doc_number"]
    assert _run(OmniInvoiceUploadOperator) == {"batch_id": BATCH}
    # Alerted once: the next run re-reads the known mismatch without failing again.
    assert _run(ErpEInvoiceFetchOperator, batch_id="next-run")["new"] == 0
    assert len(ledger.dead_letters()) == 1


def test_total_within_one_rupee_of_the_order_is_ready(erp, ledger):
    _order(ledger, "FN0000000001", erp_lines=((SHIRT, 2, "1120.40"),))  # 2240.80 against 2240.00
    _wait_for(erp, "invoices", 1)

    assert _run(ErpEInvoiceFetchOperator)[DOC_READY] == 1


def test_invoice_of_an_unknown_order_is_unmatched_and_dead_lettered(erp, ledger):
    _order(ledger, "FN0000000404", in_ledger=False)
    [invoice] = _wait_for(erp, "invoices", 1)

    _fails(ErpEInvoiceFetchOperator, "no order FN0000000404 in the ledger")

    document = ledger.get_document(DOC_INVOICE, invoice["invoiceNumber"])
    assert document["state"] == DOC_UNMATCHED and "no order FN0000000404 in the ledger" in document["reason"]
    [dead] = ledger.dead_letters("invoice_upload")
    assert invoice["invoiceNumber"] in dead["reason"]


def test_invoice_of_an_order_cancelled_in_omni_is_recorded_and_not_uploaded(erp, omni, ledger):
    _order(ledger, "FN0000000001")
    ledger.update_order("FN0000000001", state=ORDER_CANCELLED, cancel_route="irn_cancelled")
    _wait_for(erp, "invoices", 1)

    assert _run(ErpEInvoiceFetchOperator)[DOC_SKIPPED] == 1
    assert _run(OmniInvoiceUploadOperator) == {"batch_id": BATCH}
    assert ledger.dead_letters() == [] and omni.state()["invoices"] == []
    assert ledger.get_order("FN0000000001")["state"] == ORDER_CANCELLED


def test_invoice_of_an_order_cancelled_after_matching_is_not_uploaded(erp, omni, ledger):
    _order(ledger, "FN0000000001")
    _wait_for(erp, "invoices", 1)
    _run(ErpEInvoiceFetchOperator)
    ledger.update_order("FN0000000001", state=ORDER_CANCELLED, cancel_route="irn_cancelled")  # F3 ran in between

    assert _run(OmniInvoiceUploadOperator) == {"batch_id": BATCH, DOC_SKIPPED: 1}
    document = _invoice_state(ledger, "FN0000000001")
    assert document["state"] == DOC_SKIPPED and "irn_cancelled" in document["reason"]
    assert _omni_posts(omni) == 0


def test_feed_refused_by_the_erp_fails_the_task_without_moving_the_cursor(erp, ledger):
    _order(ledger, "FN0000000001")
    _wait_for(erp, "invoices", 1)
    erp.configure(fail_next=[400])

    with pytest.raises(AirflowFailException, match="the ERP refused to list invoices"):
        _run(ErpEInvoiceFetchOperator)
    assert ledger.get_cursor("erp_einvoice_seq") is None and ledger.documents(DOC_INVOICE) == []


def test_feed_is_read_page_by_page_and_a_retried_task_records_nothing_new(erp, ledger):
    for n in range(1, 6):
        _order(ledger, f"FN000000000{n}")
    _wait_for(erp, "invoices", 5)

    first = _run(ErpEInvoiceFetchOperator, page_size=2)
    again = _run(ErpEInvoiceFetchOperator, page_size=2)

    assert first == {"batch_id": BATCH, "read": 5, "new": 5, "cursor": 5, DOC_READY: 5}
    assert again == {"batch_id": BATCH, "read": 5, "new": 0, "cursor": 5}  # the lookback re-reads, nothing doubles
    list_calls = [c for c in ledger.calls() if c["operation"] == "list_einvoices"]
    assert len(list_calls) == 6  # pages of 2, 2, 1 per run


def test_order_booked_but_not_yet_invoiced_stays_booked(erp, ledger):
    erp.configure(invoice_hold=["FN0000000002"])
    _order(ledger, "FN0000000001")
    _order(ledger, "FN0000000002")
    _wait_for(erp, "invoices", 1)

    assert _run(ErpEInvoiceFetchOperator)["new"] == 1
    assert ledger.get_order("FN0000000002")["state"] == ORDER_BOOKED

    erp.configure(invoice_hold=[])
    _wait_for(erp, "invoices", 2)
    assert _run(ErpEInvoiceFetchOperator, batch_id="next-run")["new"] == 1
    assert ledger.get_order("FN0000000002")["state"] == ORDER_INVOICED


def test_orders_booked_long_ago_without_an_einvoice_are_named_as_overdue(erp, ledger, monkeypatch, capfd):
    erp.configure(invoice_hold=["FN0000000002"])
    _order(ledger, "FN0000000001")
    _order(ledger, "FN0000000002")
    _wait_for(erp, "invoices", 1)
    assert "overdue_einvoices" not in _run(ErpEInvoiceFetchOperator)  # just booked: not overdue yet

    monkeypatch.setenv("OMNI_ERP_CLOCK_OFFSET_S", str(61 * 60))
    summary = _run(ErpEInvoiceFetchOperator, batch_id="an-hour-later")
    assert summary["overdue_einvoices"] == 1  # FN0000000001 was invoiced; FN0000000002 waits
    assert "FN0000000002" in capfd.readouterr().out
    assert "overdue_einvoices" not in _run(ErpEInvoiceFetchOperator, batch_id="later", overdue_after_minutes=120)


# --- cursor: late and out-of-order documents --------------------------------------------------------


def test_invoice_published_after_the_cursor_moved_past_it_is_uploaded_exactly_once(erp, omni, ledger):
    erp.configure(feed_hold=["FN0000000001"])
    for n in range(1, 4):
        _order(ledger, f"FN000000000{n}")
    invoices = _wait_for(erp, "invoices", 3)
    late = next(i for i in invoices if i["orderCode"] == "FN0000000001")
    assert late["seq"] == 1

    first = _run(ErpEInvoiceFetchOperator, batch_id="run-1")
    _run(OmniInvoiceUploadOperator, batch_id="run-1")
    assert (first["read"], first["cursor"]) == (2, 3)  # the cursor is past seq 1, which is still invisible
    assert late["invoiceNumber"] not in _omni_invoices(omni)

    erp.configure(feed_hold=[])
    second = _run(ErpEInvoiceFetchOperator, batch_id="run-2")
    uploaded = _run(OmniInvoiceUploadOperator, batch_id="run-2")

    assert (second["read"], second["new"], second["cursor"]) == (3, 1, 3)
    assert uploaded == {"batch_id": "run-2", DOC_UPLOADED: 1}
    assert sorted(_omni_invoices(omni)) == sorted(i["invoiceNumber"] for i in invoices)

    reread = _run(ErpEInvoiceFetchOperator, batch_id="run-3", since_seq="0")
    again = _run(OmniInvoiceUploadOperator, batch_id="run-3", retry_failed="True")
    assert (reread["read"], reread["new"], reread["cursor"]) == (3, 0, 3)
    assert again == {"batch_id": "run-3"}
    assert len(omni.state()["invoices"]) == 3 and omni.state()["duplicates"] == {}
    assert len(ledger.documents(DOC_INVOICE)) == 3


def test_late_invoice_beyond_the_lookback_is_found_by_a_backfill_with_since_seq(erp, ledger):
    erp.configure(feed_hold=["FN0000000001"])
    for n in range(1, 4):
        _order(ledger, f"FN000000000{n}")
    _wait_for(erp, "invoices", 3)
    _run(ErpEInvoiceFetchOperator, lookback=0)
    erp.configure(feed_hold=[])

    assert _run(ErpEInvoiceFetchOperator, lookback=0, since_seq="None")["new"] == 0  # "None": the rendered empty param
    backfill = _run(ErpEInvoiceFetchOperator, lookback=0, since_seq=0)
    assert (backfill["new"], backfill["cursor"]) == (1, 3)
    assert ledger.get_order("FN0000000001")["state"] == ORDER_INVOICED


# --- invoice upload ---------------------------------------------------------------------------------


def test_full_invoice_reaches_omni_with_url_po_and_ist_date(erp, omni, ledger):
    _order(ledger, "FN0000000001", ((SHIRT, 2, 0, "1120.00"), (JEANS, 1, 0, "3299.00")))
    [invoice] = _wait_for(erp, "invoices", 1)
    _run(ErpEInvoiceFetchOperator)

    summary = _run(OmniInvoiceUploadOperator)

    assert summary == {"batch_id": BATCH, DOC_UPLOADED: 1}
    body = _omni_invoices(omni)[invoice["invoiceNumber"]]
    assert body == {
        "invoiceNumber": invoice["invoiceNumber"],
        "invoiceDate": to_omni(parse_datetime(invoice["invoiceDate"])),
        "forwardPurchaseOrder": PO,
        "irnNumber": invoice["irn"],
        "qrCode": invoice["signedQrCode"],
        "isPartialInvoice": False,
        "invoiceURL": invoice["pdfUrl"],
    }
    assert body["invoiceDate"].endswith("+05:30")
    document = _invoice_state(ledger, "FN0000000001")
    assert document["state"] == DOC_UPLOADED and document["uploaded_at"] and document["upload_attempts"] == 1


def test_partial_invoice_lists_the_invoiced_units_per_sku(erp, omni, ledger):
    # 3 shirts ordered, 1 cancelled before posting: the ERP invoices 2 of the PO's 4 units.
    _order(ledger, "FN0000000001", ((SHIRT, 3, 1, "1120.00"), (JEANS, 1, 0, "3299.00")))
    [invoice] = _wait_for(erp, "invoices", 1)
    _run(ErpEInvoiceFetchOperator)

    _run(OmniInvoiceUploadOperator)

    body = _omni_invoices(omni)[invoice["invoiceNumber"]]
    assert body["isPartialInvoice"] is True
    assert body["invoiceLineEntries"] == [{"channelSkuCode": SHIRT, "quantity": 2}, {"channelSkuCode": JEANS, "quantity": 1}]


def test_pdf_mode_sends_the_erps_pdf_base64_instead_of_the_url(erp, omni, ledger):
    _order(ledger, "FN0000000001")
    [invoice] = _wait_for(erp, "invoices", 1)
    _run(ErpEInvoiceFetchOperator)

    assert _run(OmniInvoiceUploadOperator, document="pdf") == {"batch_id": BATCH, DOC_UPLOADED: 1}

    body = _omni_invoices(omni)[invoice["invoiceNumber"]]
    assert "invoiceURL" not in body
    pdf = base64.b64decode(body["invoicePdf"])
    assert pdf.startswith(b"%PDF") and invoice["invoiceNumber"].encode() in pdf
    [download] = [c for c in ledger.calls() if c["operation"] == "download_pdf"]
    assert download["status_code"] == 200 and download["endpoint"].startswith("/_sandbox/pdf/")


def test_rejected_invoice_stays_failed_until_retry_failed(erp, omni, ledger):
    _order(ledger, "FN0000000001")
    [invoice] = _wait_for(erp, "invoices", 1)
    _run(ErpEInvoiceFetchOperator)
    omni.configure(fail_next=[400])

    _fails(OmniInvoiceUploadOperator, r"1 item\(s\) dead-lettered, rejected or failed", batch_id="run-1")
    document = _invoice_state(ledger, "FN0000000001")
    assert document["state"] == DOC_UPLOAD_FAILED
    assert "Omni rejected the invoice (HTTP 400) BAD_DATA: injected by the sandbox (400)" in document["reason"]
    [dead] = ledger.dead_letters("invoice_upload")
    assert "BAD_DATA" in dead["reason"] and dead["business_key"] == invoice["invoiceNumber"]

    posts = _omni_posts(omni)
    assert _run(OmniInvoiceUploadOperator, batch_id="run-2", retry_failed="False") == {"batch_id": "run-2"}
    assert _omni_posts(omni) == posts  # a failed invoice is not sent again on its own

    retried = _run(OmniInvoiceUploadOperator, batch_id="run-3", retry_failed="True")
    assert retried == {"batch_id": "run-3", DOC_UPLOADED: 1}
    assert list(_omni_invoices(omni)) == [invoice["invoiceNumber"]]
    document = _invoice_state(ledger, "FN0000000001")
    assert (document["state"], document["reason"], document["upload_attempts"]) == (DOC_UPLOADED, None, 2)


def test_invoice_that_cannot_be_built_fails_without_calling_omni(erp, omni, ledger):
    _order(ledger, "FN0000000001")
    _wait_for(erp, "invoices", 1)
    _run(ErpEInvoiceFetchOperator)
    ledger.update_order("FN0000000001", po_number="")  # someone broke the order's PO after matching

    assert f"'{DOC_UPLOAD_FAILED}': 1" in _fails(OmniInvoiceUploadOperator, "failed")
    assert "Ajio PO" in _invoice_state(ledger, "FN0000000001")["reason"]
    assert _omni_posts(omni) == 0


def test_omni_outage_keeps_invoices_ready_and_fails_the_task(erp, omni, ledger):
    for n in range(1, 5):
        _order(ledger, f"FN000000000{n}")
    _wait_for(erp, "invoices", 4)
    _run(ErpEInvoiceFetchOperator)
    omni.configure(error_rate=1.0)

    with pytest.raises(AirflowFailException, match="4 item\\(s\\) deferred"):
        # One at a time: "in a row" is then the batch order (the pooled case: tests/operators/test_concurrency.py).
        _run(OmniInvoiceUploadOperator, batch_id="run-1", max_consecutive_unavailable=2, max_in_flight=1)

    attempted = {c["idempotency_key"] for c in ledger.calls() if c["operation"] == "post_b2b_invoice"}
    assert len(attempted) == 2  # the circuit opened after two invoices in a row found Omni down
    documents = ledger.documents(DOC_INVOICE)
    assert {d["state"] for d in documents} == {DOC_READY}
    assert all("waiting for the next run" in d["reason"] and d["batch_id"] == "run-1" for d in documents)

    omni.configure(error_rate=0.0)
    assert _run(OmniInvoiceUploadOperator, batch_id="run-2") == {"batch_id": "run-2", DOC_UPLOADED: 4}
    assert len(omni.state()["invoices"]) == 4


def test_retried_upload_task_and_rerun_send_nothing_new(erp, omni, ledger):
    _order(ledger, "FN0000000001")
    _wait_for(erp, "invoices", 1)
    _run(ErpEInvoiceFetchOperator)
    # Omni stores the invoice but answers after the client gave up: the hook re-sends the identical body.
    omni.configure(fail_next=["timeout"], timeout_s=2.5)
    assert _run(OmniInvoiceUploadOperator) == {"batch_id": BATCH, DOC_UPLOADED: 1}
    assert len(omni.state()["invoices"]) == 1 and omni.state()["duplicates"] == {"invoice": 1}
    posts = _omni_posts(omni)

    retried = _run(OmniInvoiceUploadOperator)  # Airflow retrying the finished task
    rerun = _run(OmniInvoiceUploadOperator, batch_id="next-run", retry_failed=True)

    assert retried == {"batch_id": BATCH} and rerun == {"batch_id": "next-run"}
    assert _omni_posts(omni) == posts
    assert len(omni.state()["invoices"]) == 1


def test_summaries_and_ledger_hold_no_secrets_or_payloads(erp, omni, ledger):
    _order(ledger, "FN0000000001")
    _wait_for(erp, "invoices", 1)
    summaries = [_run(ErpEInvoiceFetchOperator), _run(OmniInvoiceUploadOperator, document="pdf")]

    for summary in summaries:
        text = json.dumps(summary)
        assert len(text) < 200 and "irn" not in text.lower() and "pdf" not in text.lower()
    stored = json.dumps([ledger.documents(DOC_INVOICE), ledger.calls(), ledger.dead_letters()], default=str)
    assert not any(secret in stored for secret in SECRETS)


# --- credit notes -----------------------------------------------------------------------------------


def _invoiced(erp, ledger, code: str = "FN0000000001") -> dict[str, Any]:
    """An order with 4 shirts, booked, e-invoiced and matched in the ledger."""
    _order(ledger, code, ((SHIRT, 4, 0, "1120.00"),))
    deadline = time.monotonic() + 5
    while not (invoices := [i for i in erp.state()["invoices"] if i["orderCode"] == code]):
        assert time.monotonic() < deadline, f"no e-invoice for {code}"
        time.sleep(0.02)
    _run(ErpEInvoiceFetchOperator, batch_id="invoices")
    return invoices[0]


def _return(erp, ledger, invoice: dict[str, Any], code: str, kind: str | None) -> None:
    """One unit returned in the ERP; registered in the ledger as ``kind`` (None: the ledger does not know it)."""
    lines = [DocumentLine(sku=SHIRT, quantity=1, unitPrice=Decimal("1120.00"))]
    request = ReturnOrderRequest(
        returnOrderCode=code, orderCode=invoice["orderCode"], invoiceNumber=invoice["invoiceNumber"],
        reason="SIZE_ISSUE", lines=lines,
    )
    ErpHook().create_return_order(request, idempotency_key=f"return:{code}")
    if kind is not None:
        ledger.register_return_order(
            return_order_code=code, order_code=invoice["orderCode"], kind=kind, state="booked",
            lines=[{"sku": SHIRT, "quantity": 1}], erp_request=request.to_json_dict(),
        )


@pytest.mark.parametrize(
    ("kind", "upload_partial_cancel", "expected_state", "reason"),
    [
        (RETURN_CUSTOMER, None, DOC_READY, None),
        (RETURN_RTO, None, DOC_READY, None),
        (RETURN_PARTIAL_CANCEL, None, DOC_KEPT_IN_ERP, "partial cancellation after e-invoicing: kept in the ERP"),
        (RETURN_PARTIAL_CANCEL, "true", DOC_READY, None),
        (None, None, DOC_UNMATCHED, "no return order RTN-1 in the ledger"),
    ],
    ids=["customer-return", "rto", "partial-cancel-kept", "partial-cancel-upload-on", "unknown-return-order"],
)
def test_credit_note_of_a_return_is_classified_by_the_return_order_kind(
    erp, omni, ledger, monkeypatch, kind, upload_partial_cancel, expected_state, reason
):
    if upload_partial_cancel:
        monkeypatch.setenv("OMNI_ERP_UPLOAD_PARTIAL_CANCEL_CREDIT_NOTES", upload_partial_cancel)
    invoice = _invoiced(erp, ledger)
    _return(erp, ledger, invoice, "RTN-1", kind)
    [note] = _wait_for(erp, "credit_notes", 1)

    if expected_state == DOC_UNMATCHED:
        _fails(ErpCreditNoteFetchOperator, "no return order RTN-1 in the ledger")  # dead-lettered: the run is red
    else:
        summary = _run(ErpCreditNoteFetchOperator)
        assert summary == {"batch_id": BATCH, "read": 1, "new": 1, "cursor": note["seq"], expected_state: 1}
    uploaded = _run(OmniCreditNoteUploadOperator)

    document = ledger.get_document(DOC_CREDIT_NOTE, note["creditNoteNumber"])
    assert (document["order_code"], document["related_code"]) == ("FN0000000001", "RTN-1")
    assert document["state"] == (DOC_UPLOADED if expected_state == DOC_READY else expected_state)
    assert (reason or "") in (document["reason"] or "")
    assert bool(ledger.dead_letters("credit_note_upload")) == (expected_state == DOC_UNMATCHED)
    if kind is not None:
        assert ledger.get_return_order("RTN-1")["credit_note_number"] == note["creditNoteNumber"]
    sent = {d["body"]["creditNoteNumber"]: d["body"] for d in omni.state()["credit_notes"]}
    if expected_state == DOC_READY:
        assert uploaded == {"batch_id": BATCH, DOC_UPLOADED: 1}
        assert sent[note["creditNoteNumber"]] == {
            "creditNoteNumber": note["creditNoteNumber"],
            "returnOrderId": "RTN-1",  # domain.md decision 7
            "irnNumber": note["irn"],
            "ackNumber": note["ackNumber"],
            "ackDate": to_omni(parse_datetime(note["ackDate"])),
            "signedQrCode": note["signedQrCode"],
            "creditNotePdfUrl": note["pdfUrl"],
        }
    else:
        assert uploaded == {"batch_id": BATCH} and sent == {}


def test_full_credit_note_without_return_order_is_kept_in_the_erp(erp, omni, ledger):
    invoice = _invoiced(erp, ledger)
    ErpHook().request_credit_note(
        invoice["invoiceNumber"], invoice["orderCode"], "Order cancelled", idempotency_key=f"credit:{invoice['invoiceNumber']}"
    )
    [note] = _wait_for(erp, "credit_notes", 1)

    assert _run(ErpCreditNoteFetchOperator)[DOC_KEPT_IN_ERP] == 1
    assert _run(OmniCreditNoteUploadOperator) == {"batch_id": BATCH}

    document = ledger.get_document(DOC_CREDIT_NOTE, note["creditNoteNumber"])
    assert document["reason"] == "Ajio seller SOP: kept in the ERP, not uploaded"
    assert document["related_code"] == invoice["invoiceNumber"]
    assert omni.state()["credit_notes"] == [] and ledger.dead_letters() == []


def test_credit_notes_in_pdf_mode_late_and_re_read_are_uploaded_exactly_once(erp, omni, ledger):
    invoice = _invoiced(erp, ledger)
    erp.configure(feed_hold=["FN0000000001"])
    _return(erp, ledger, invoice, "RTN-1", RETURN_CUSTOMER)  # published late
    other = _invoiced(erp, ledger, "FN0000000002")
    _return(erp, ledger, other, "RTN-2", RETURN_RTO)
    notes = {n["returnOrderCode"]: n for n in _wait_for(erp, "credit_notes", 2)}

    first = _run(ErpCreditNoteFetchOperator, batch_id="run-1")
    assert first["cursor"] == notes["RTN-2"]["seq"] > notes["RTN-1"]["seq"]  # the cursor passed the hidden one
    erp.configure(feed_hold=[])
    second = _run(ErpCreditNoteFetchOperator, batch_id="run-2")
    uploaded = _run(OmniCreditNoteUploadOperator, batch_id="run-2", document="pdf")
    _run(ErpCreditNoteFetchOperator, batch_id="run-3", since_seq=0)
    again = _run(OmniCreditNoteUploadOperator, batch_id="run-3", document="pdf", retry_failed=True)

    assert (first["new"], second["new"]) == (1, 1)
    assert uploaded == {"batch_id": "run-2", DOC_UPLOADED: 2} and again == {"batch_id": "run-3"}
    sent = omni.state()["credit_notes"]
    assert sorted(d["body"]["creditNoteNumber"] for d in sent) == sorted(n["creditNoteNumber"] for n in notes.values())
    assert all(base64.b64decode(d["body"]["signedCreditNotePdf"]).startswith(b"%PDF") for d in sent)
    assert omni.state()["duplicates"] == {}


# --- a reused document number (issue 7.3) ------------------------------------------------------------


@pytest.fixture()
def any_ledger(ledger_url, monkeypatch) -> Ledger:
    """This test's ledger on SQLite and on PostgreSQL; every operator of the test uses it."""
    ledger = Ledger(ledger_url)
    monkeypatch.setattr(Ledger, "from_conn_id", classmethod(lambda cls, conn_id=None: ledger))
    return ledger


def test_invoice_number_the_erp_reuses_for_another_order_is_a_conflict_dead_lettered_and_alerted_once(
    erp, omni, any_ledger, capfd
):
    ledger = any_ledger
    _order(ledger, "FN0000000001")
    [first] = _wait_for(erp, "invoices", 1)
    _run(ErpEInvoiceFetchOperator, batch_id="run-1")
    # The ERP is restored from a backup taken before that invoice: its number series starts again.
    erp.reset()
    _order(ledger, "FN0000000002", ((JEANS, 1, 0, "3299.00"),))
    [second] = _wait_for(erp, "invoices", 1)
    number = first["invoiceNumber"]
    assert second["invoiceNumber"] == number and second["orderCode"] == "FN0000000002"
    capfd.readouterr()

    failure = _fails(ErpEInvoiceFetchOperator, "reused a document number", batch_id="run-2")

    [dead] = ledger.dead_letters("invoice_upload")
    for text in (failure, dead["reason"]):  # both orders named, with what tells the two documents apart
        assert all(part in text for part in (number, "FN0000000001", "FN0000000002", first["irn"], second["irn"]))
    assert dead["business_key"] == number and "FN0000000002" in dead["payload"]
    assert any("error" in line.lower() and "reused a document number" in line for line in capfd.readouterr().out.splitlines())
    document = ledger.get_document(DOC_INVOICE, number)
    assert (document["order_code"], document["state"]) == ("FN0000000001", DOC_READY)  # the first is untouched ...
    assert ledger.get_order("FN0000000002")["state"] == ORDER_BOOKED  # ... and FN2 never gets someone else's number
    assert _run(OmniInvoiceUploadOperator, batch_id="run-2") == {"batch_id": "run-2", DOC_UPLOADED: 1}
    assert list(_omni_invoices(omni)) == [number] and _omni_invoices(omni)[number]["irnNumber"] == first["irn"]

    again = _run(ErpEInvoiceFetchOperator, batch_id="run-3")  # seen again: logged, not dead-lettered or alerted again
    assert (again["new"], again["conflict"]) == (0, 1)
    assert len(ledger.dead_letters()) == 1
    assert _run(OmniInvoiceUploadOperator, batch_id="run-3") == {"batch_id": "run-3"}


def test_credit_note_number_the_erp_reuses_for_another_return_order_is_a_conflict(erp, omni, ledger):
    invoice = _invoiced(erp, ledger, "FN0000000001")
    _return(erp, ledger, invoice, "RTN-1", RETURN_CUSTOMER)
    [first] = _wait_for(erp, "credit_notes", 1)
    _run(ErpCreditNoteFetchOperator, batch_id="run-1")
    erp.reset()
    erp.configure(invoice_prefix="RB2728/")  # only the credit note series starts again
    other = _invoiced(erp, ledger, "FN0000000002")
    _return(erp, ledger, other, "RTN-2", RETURN_RTO)
    [second] = _wait_for(erp, "credit_notes", 1)
    assert second["creditNoteNumber"] == first["creditNoteNumber"]

    failure = _fails(ErpCreditNoteFetchOperator, "reused a document number", batch_id="run-2")

    assert all(part in failure for part in ("RTN-1", "RTN-2", "FN0000000001", "FN0000000002"))
    assert ledger.get_document(DOC_CREDIT_NOTE, first["creditNoteNumber"])["related_code"] == "RTN-1"
    assert ledger.get_return_order("RTN-2")["credit_note_number"] is None  # not given the other return's note
    assert len(ledger.dead_letters("credit_note_upload")) == 1
    assert _run(OmniCreditNoteUploadOperator, batch_id="run-2") == {"batch_id": "run-2", DOC_UPLOADED: 1}
    assert [d["body"]["returnOrderId"] for d in omni.state()["credit_notes"]] == ["RTN-1"]


def test_the_same_document_read_again_is_skipped_silently_whatever_its_amount_looks_like(erp, ledger):
    _order(ledger, "FN0000000001")
    [invoice] = _wait_for(erp, "invoices", 1)
    _run(ErpEInvoiceFetchOperator)
    # The same invoice listed again with its amount written another way (a string, more decimals).
    erp.configure(feed_override={"FN0000000001": {"totalValue": f"{invoice['totalValue']:.3f}"}})

    assert _run(ErpEInvoiceFetchOperator, batch_id="re-read", since_seq=0) == {
        "batch_id": "re-read", "read": 1, "new": 0, "cursor": invoice["seq"]
    }
    assert ledger.dead_letters() == []


# --- one bad document never stops the others (issue 6) -------------------------------------------


POISON = {  # a field of one ERP document -> a value the flow cannot use
    "number-with-rtl-override": {"invoiceNumber": "RB2627/\u202e000002"},
    "number-empty": {"invoiceNumber": ""},
    "order-code-with-rtl-override": {"orderCode": "FN\u202e0000000002"},
    "total-not-a-number": {"totalValue": "two thousand"},
    "lines-missing": {"lines": None},
    "line-quantity-not-a-number": {"lines": [{"sku": SHIRT, "quantity": "many", "unitPrice": 1}]},
    "ack-date-not-a-date": {"ackDate": "yesterday"},
    "ack-date-empty": {"ackDate": ""},
    "seq-far-ahead": {"seq": 2**62},
}
# Text the database itself may refuse (PostgreSQL stores no NUL; columns have lengths): tried on both backends.
DATABASE_POISON = {
    "number-with-nul": {"invoiceNumber": "RB2627/\x00000002"},
    "number-too-long": {"invoiceNumber": "RB2627/" + "9" * 80},
    "order-code-with-nul-and-too-long": {"orderCode": "FN\x00" + "2" * 300},
}


def _order_in_ledger(ledger: Ledger, code: str, sales_order_id: str) -> None:
    """The ledger side of ``_order`` for an order the ERP already holds (booked with the default shirt line)."""
    ledger.register_order(
        order_code=code, po_number=PO, state=ORDER_BOOKED, create_message_id=f"m-{code}", total_amount=Decimal("2240.00"),
        lines=[{"lineCode": f"{code}-1", "sku": SHIRT, "ordered": 2, "cancelled": 0, "quantity": 2, "unitPrice": "1120.00"}],
        erp_request=None,
    )
    ledger.update_order(code, erp_sales_order_id=sales_order_id)


def _three_invoices_in_the_erp(erp) -> dict[str, dict[str, Any]]:
    """FN0000000001-3 booked and e-invoiced in the ERP (once per test), by order code."""
    if len(erp.state()["invoices"]) < 3:
        for n in (1, 2, 3):
            _order(None, f"FN000000000{n}", in_ledger=False)  # type: ignore[arg-type]
        _wait_for(erp, "invoices", 3)
    return {i["orderCode"]: i for i in erp.state()["invoices"]}


def _one_poison_among_good_ones(erp, omni, ledger: Ledger, override: dict[str, Any]) -> tuple[str | None, list[dict]]:
    """FN0000000002's e-invoice listed with ``override`` between two good ones; run F2 twice and check what must
    hold for any document the ERP lists: only the run's failure escapes, the good invoices are uploaded once in
    the first run, the cursor passes the poison, and the poison is uploaded like any invoice or has a reason
    (dead letter) and fails the run once. Returns the first run's failure (None if it passed) and the dead letters."""
    omni.reset()
    erp.configure(feed_override={"FN0000000002": override})
    invoices = _three_invoices_in_the_erp(erp)
    for code, invoice in invoices.items():
        _order_in_ledger(ledger, code, invoice["salesOrderId"])
    good = sorted(invoices[c]["invoiceNumber"] for c in ("FN0000000001", "FN0000000003"))

    def run(batch: str) -> str | None:
        operators = [ErpEInvoiceFetchOperator(task_id="f", batch_id=batch), OmniInvoiceUploadOperator(task_id="u", batch_id=batch)]
        failures = []
        for operator in operators:
            operator.ledger = ledger
            try:
                operator.execute(context={})
            except AirflowFailException as exc:  # the run is red; anything else escaping fails the test
                failures.append(str(exc))
        return " | ".join(failures) or None

    failure = run("run-1")
    uploaded = [d["body"]["invoiceNumber"] for d in omni.state()["invoices"]]
    assert sorted(n for n in uploaded if n in good) == good  # the good ones, once each, in the same run
    assert ledger.get_order("FN0000000001")["state"] == ledger.get_order("FN0000000003")["state"] == ORDER_INVOICED
    assert ledger.get_cursor("erp_einvoice_seq") == "3"  # past the poison: it is in the ledger with its reason
    dead = ledger.dead_letters("invoice_upload")
    [row] = [d for d in ledger.documents(DOC_INVOICE) if d["doc_number"] not in good] or [None]
    if row is not None and row["state"] in (DOC_UPLOADED, DOC_SKIPPED):
        assert dead == [] and failure is None  # still a usable invoice: handled like any other
    else:  # recorded with its reason, unless its number cannot key the ledger: then the dead letter is its record
        assert failure is not None and "\x00" not in failure and "\u202e" not in failure  # invisible characters escaped
        assert len(dead) == 1 and (row is None or (row["reason"] in dead[0]["reason"]))
        assert ledger.get_order("FN0000000002")["state"] in (ORDER_BOOKED, ORDER_INVOICED)

    assert run("run-2") is None  # seen again: nothing new, nothing alerted twice, nothing uploaded twice
    assert ledger.dead_letters() == dead and len(omni.state()["invoices"]) == len(uploaded)
    return failure, dead


@pytest.mark.parametrize("override", POISON.values(), ids=POISON.keys())
def test_a_poison_einvoice_gets_a_reason_while_the_others_are_matched_and_uploaded(erp, omni, ledger, override):
    failure, [dead] = _one_poison_among_good_ones(erp, omni, ledger, override)
    assert failure is not None and dead["stage"] == "invoice_upload"
    assert ledger.get_order("FN0000000002")["state"] == ORDER_BOOKED  # never invoiced by a document it cannot trust


@pytest.mark.parametrize("override", DATABASE_POISON.values(), ids=DATABASE_POISON.keys())
def test_a_document_the_database_cannot_store_as_sent_still_gets_a_reason(erp, omni, any_ledger, override):
    _, [dead] = _one_poison_among_good_ones(erp, omni, any_ledger, override)
    assert all("\x00" not in (dead[column] or "") for column in ("reason", "business_key"))  # stored escaped


FIELDS = ("invoiceNumber", "orderCode", "salesOrderId", "poNumber", "irn", "ackDate", "invoiceDate", "totalValue",
          "lines", "seq", "status", "signedQrCode")
ANY_JSON = st.one_of(
    st.none(),  # the field is left out
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
    st.lists(st.dictionaries(st.sampled_from(["sku", "quantity", "unitPrice"]), st.integers() | st.text(max_size=5)), max_size=2),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(override=st.dictionaries(st.sampled_from(FIELDS), ANY_JSON, min_size=1, max_size=3))
def test_no_einvoice_the_erp_can_list_stops_the_others_or_escapes_the_batch(erp, omni, tmp_path_factory, override):
    ledger = Ledger.sqlite(tmp_path_factory.mktemp("ledger") / "ledger.sqlite")
    try:
        _one_poison_among_good_ones(erp, omni, ledger, override)
    finally:
        ledger.engine.dispose()


def test_an_invalid_einvoice_is_matched_again_once_the_erp_corrects_it(erp, omni, ledger):
    erp.configure(feed_override={"FN0000000001": {"ackDate": "yesterday"}})
    _order(ledger, "FN0000000001")
    [invoice] = _wait_for(erp, "invoices", 1)
    _fails(ErpEInvoiceFetchOperator, "not a date-time", batch_id="run-1")
    assert _invoice_state(ledger, "FN0000000001")["state"] == DOC_INVALID

    erp.configure(feed_override={})
    assert _run(ErpEInvoiceFetchOperator, batch_id="run-2")[DOC_READY] == 1

    assert ledger.get_order("FN0000000001")["invoiced_at"] == parse_datetime(invoice["ackDate"])
    assert _run(OmniInvoiceUploadOperator, batch_id="run-2") == {"batch_id": "run-2", DOC_UPLOADED: 1}


def _refuse_updates_of(ledger: Ledger, table: str, key_column: str, key: str) -> None:
    """Make the database itself refuse to update one row (a constraint a DBA added, a full disk...)."""
    with ledger.engine.begin() as conn:
        if ledger.backend == "sqlite":
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse BEFORE UPDATE ON {table} WHEN OLD.{key_column} = '{key}' "
                "BEGIN SELECT RAISE(ABORT, 'the database refuses this row'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'the database refuses this row'; END $$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER refuse BEFORE UPDATE ON {table} FOR EACH ROW WHEN (OLD.{key_column} = '{key}') "
                "EXECUTE FUNCTION refuse()"
            )


def _allow_updates(ledger: Ledger, table: str) -> None:
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse" if ledger.backend == "sqlite" else f"DROP TRIGGER refuse ON {table}")


def test_the_invoice_and_its_orders_update_land_together_or_not_at_all(erp, any_ledger):
    ledger = any_ledger
    for n in (1, 2):
        _order(ledger, f"FN000000000{n}")
    _wait_for(erp, "invoices", 2)
    _refuse_updates_of(ledger, "ajio_order", "order_code", "FN0000000001")

    failure = _fails(ErpEInvoiceFetchOperator, "the database refuses this row", batch_id="run-1")

    # The order could not become invoiced, so its invoice is not ready either: it waits, invalid, with the reason.
    document = _invoice_state(ledger, "FN0000000001")
    assert document["state"] == DOC_INVALID and "could not be matched" in document["reason"]
    assert "[SQL" not in failure and "[SQL" not in document["reason"]  # the driver's message, not the statement
    assert ledger.get_order("FN0000000001")["state"] == ORDER_BOOKED
    assert _invoice_state(ledger, "FN0000000002")["state"] == DOC_READY

    _allow_updates(ledger, "ajio_order")
    assert _run(ErpEInvoiceFetchOperator, batch_id="run-2", since_seq=0)[DOC_READY] == 1
    assert ledger.get_order("FN0000000001")["state"] == ORDER_INVOICED


def test_the_credit_note_and_its_return_orders_update_land_together_or_not_at_all(erp, ledger):
    invoice = _invoiced(erp, ledger)
    _return(erp, ledger, invoice, "RTN-1", RETURN_CUSTOMER)
    _wait_for(erp, "credit_notes", 1)
    _refuse_updates_of(ledger, "return_order", "return_order_code", "RTN-1")

    _fails(ErpCreditNoteFetchOperator, "the database refuses this row")

    assert ledger.documents(DOC_CREDIT_NOTE)[0]["state"] == DOC_INVALID
    assert ledger.get_return_order("RTN-1")["credit_note_number"] is None
    assert _run(OmniCreditNoteUploadOperator) == {"batch_id": BATCH}  # nothing half-matched is uploaded


def test_a_ledger_outage_while_reading_the_feed_fails_the_task_and_blames_no_document(erp, ledger, ledger_path):
    _order(ledger, "FN0000000001")
    _wait_for(erp, "invoices", 1)
    operator = ErpEInvoiceFetchOperator(task_id="t", batch_id=BATCH)
    operator.ledger  # noqa: B018 - resolved while the database is there
    # The database goes away: its directory is replaced by a file, so SQLite cannot open it any more.
    ledger.engine.dispose()
    ledger_path.rename(ledger_path.with_suffix(".moved"))
    ledger_path.parent.joinpath(ledger_path.name + "-wal").unlink(missing_ok=True)
    ledger_path.mkdir()

    with pytest.raises(sa.exc.OperationalError):
        operator.execute(context={})

    ledger_path.rmdir()
    ledger_path.with_suffix(".moved").rename(ledger_path)
    assert ledger.documents(DOC_INVOICE) == [] and ledger.dead_letters() == []


def test_an_invoice_whose_upload_keeps_failing_is_deferred_then_dead_lettered_while_the_others_go(
    erp, omni, any_ledger, monkeypatch
):
    monkeypatch.delenv("OMNI_ERP_MAX_ITEM_ATTEMPTS", raising=False)  # the default bound: 3 attempts
    ledger = any_ledger
    for n in (1, 2, 3):
        _order(ledger, f"FN000000000{n}")
    invoices = {i["orderCode"]: i["invoiceNumber"] for i in _wait_for(erp, "invoices", 3)}
    _run(ErpEInvoiceFetchOperator, batch_id="fetch")
    # An order row an older version wrote without the ordered units per line: building its invoice raises KeyError.
    lines = ledger.get_order("FN0000000002")["lines"]
    ledger.update_order("FN0000000002", lines=json.dumps([{k: v for k, v in line.items() if k != "ordered"} for line in lines]))
    poison = invoices["FN0000000002"]

    for run in (1, 2):
        failure = _fails(OmniInvoiceUploadOperator, r"1 item\(s\) deferred of \d in this run", batch_id=f"run-{run}")
        assert "KeyError" in failure
        document = ledger.get_document(DOC_INVOICE, poison)
        assert document["state"] == DOC_READY and f"(attempt {run} of 3)" in document["reason"]
        assert document["upload_attempts"] == run and document["batch_id"] == f"run-{run}"  # the report lists it
    assert sorted(_omni_invoices(omni)) == sorted(invoices[c] for c in ("FN0000000001", "FN0000000003"))

    _fails(OmniInvoiceUploadOperator, r"1 item\(s\) dead-lettered", batch_id="run-3")
    document = ledger.get_document(DOC_INVOICE, poison)
    assert document["state"] == DOC_UPLOAD_FAILED and document["reason"].startswith("gave up after 3 attempts")
    [dead] = ledger.dead_letters("invoice_upload")
    assert dead["business_key"] == poison and "KeyError" in dead["reason"]
    assert _run(OmniInvoiceUploadOperator, batch_id="run-4") == {"batch_id": "run-4"}  # nothing holds the queue

    ledger.update_order("FN0000000002", lines=json.dumps(lines))  # a person repairs the order ...
    retried = _run(OmniInvoiceUploadOperator, batch_id="run-5", retry_failed=True)  # ... and re-triggers
    assert retried == {"batch_id": "run-5", DOC_UPLOADED: 1}
    assert len(omni.state()["invoices"]) == 3 and omni.state()["duplicates"] == {}


def test_omni_outage_keeps_credit_notes_ready_fails_the_task_and_the_next_run_uploads_each_once(erp, omni, ledger):
    for n, kind in ((1, RETURN_CUSTOMER), (2, RETURN_RTO)):
        invoice = _invoiced(erp, ledger, f"FN000000000{n}")
        _return(erp, ledger, invoice, f"RTN-{n}", kind)
    notes = _wait_for(erp, "credit_notes", 2)
    _run(ErpCreditNoteFetchOperator, batch_id="run-1")
    omni.configure(error_rate=1.0)

    _fails(OmniCreditNoteUploadOperator, r"2 item\(s\) deferred", batch_id="run-1")
    assert {d["state"] for d in ledger.documents(DOC_CREDIT_NOTE)} == {DOC_READY}
    assert omni.state()["credit_notes"] == []

    omni.configure(error_rate=0.0)
    assert _run(OmniCreditNoteUploadOperator, batch_id="run-2") == {"batch_id": "run-2", DOC_UPLOADED: 2}
    sent = [d["body"]["creditNoteNumber"] for d in omni.state()["credit_notes"]]
    assert sorted(sent) == sorted(n["creditNoteNumber"] for n in notes) and omni.state()["duplicates"] == {}
