"""ErpNextHook against the ERPNext sandbox over real HTTP on 127.0.0.1: every ErpAdapter method, replays,
Frappe's error format, duplicates and a 5xx fault."""

from __future__ import annotations

import json
import logging
import time
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni_erp import keys
from omni_erp.exceptions import PayloadError, RemoteRejectedError, RemoteUnavailableError
from omni_erp.hooks.erpnext import IRN_CANCEL_WINDOW_CLOSED, ORDER_INVOICED, ErpNextHook, frappe_error
from omni_erp.models.erp import DocumentLine, ReturnOrderRequest, SalesOrderRequest
from omni_erp.timeutil import parse_datetime
from tests.conftest import Sandbox

API_KEY = "erpnext-test-key"
API_SECRET = "erpnext-test-secret-s3cr3t"
DELAY_S = 0.05


@pytest.fixture(scope="module")
def _erpnext_server():
    from omni_erp.sandbox.erpnext import create_erpnext_sandbox
    from omni_erp.sandbox.serve import serve_in_thread

    with serve_in_thread(create_erpnext_sandbox(api_key=API_KEY, api_secret=API_SECRET, invoice_delay_s=DELAY_S)) as server:
        yield server


@pytest.fixture()
def site(_erpnext_server, monkeypatch, fast_retries) -> Sandbox:
    """The ERPNext sandbox, reset, with ``erp_default`` pointing at it (key in login, secret in password)."""
    sandbox = Sandbox(_erpnext_server.url)
    sandbox.reset()
    conn = {"conn_type": "http", "host": _erpnext_server.url, "login": API_KEY, "password": API_SECRET}
    monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps(conn))
    return sandbox


class Recorder(list):
    def __call__(self, attempt):
        self.append(attempt)


def _order(code: str = "FN0000000001", quantity: int = 2, price: str = "1120.00") -> SalesOrderRequest:
    return SalesOrderRequest(
        orderCode=code,
        poNumber=f"PO-{code}",
        buyerCode="AJIO-RRL",
        orderDate="2026-12-03T10:00:00.000+05:30",
        lines=[
            DocumentLine(lineCode=f"{code}-1", sku="460491724004", quantity=quantity, unitPrice=Decimal(price)),
            DocumentLine(lineCode=f"{code}-2", sku="460491724011", quantity=1, unitPrice=Decimal("499.00")),
        ],
        totalAmount=Decimal(price) * quantity + Decimal("499.00"),
    )


def _book_and_invoice(hook: ErpNextHook, *codes: str):
    """Book each order, wait for ERPNext to bill it and India Compliance to register the IRN; the feed page."""
    for code in codes:
        hook.create_sales_order(_order(code), idempotency_key=keys.create_sales_order(code))
    deadline = time.monotonic() + 5
    while True:
        page = hook.einvoices_since(0)
        if len(page.items) == len(codes) or time.monotonic() > deadline:
            return page
        time.sleep(DELAY_S)


def _wait_credit_notes(hook: ErpNextHook, count: int, cursor: int = 0):
    deadline = time.monotonic() + 5
    while True:
        page = hook.credit_notes_since(cursor)
        if len(page.items) >= count or time.monotonic() > deadline:
            return page
        time.sleep(DELAY_S)


def test_create_sales_order_books_once_and_a_replay_returns_the_same_order(site):
    hook = ErpNextHook()
    key = keys.create_sales_order("FN0000000001")
    first = hook.create_sales_order(_order(), idempotency_key=key)
    again = hook.create_sales_order(_order(), idempotency_key=key)
    assert not first.replayed and again.replayed
    assert again.document.sales_order_id == first.document.sales_order_id
    assert first.document.order_code == "FN0000000001" and first.document.status == "BOOKED"
    orders = site.state()["sales_orders"]
    assert len(orders) == 1
    assert orders[0]["po_no"] == "PO-FN0000000001" and orders[0]["omni_idempotency_key"] == key
    assert orders[0]["docstatus"] == 1 and orders[0]["grand_total"] == pytest.approx(2739.0)


def test_a_duplicate_reported_by_erpnext_is_a_replay_not_an_error(site):
    """Two creates racing past the look-up: the second insert meets the unique key field (409 DuplicateEntryError)."""
    key = keys.create_sales_order("FN0000000002")
    first = ErpNextHook().create_sales_order(_order("FN0000000002"), idempotency_key=key)
    racer = ErpNextHook()
    racer._by_key = _lookup_misses_once(racer._by_key)  # the racer's look-up ran before the first insert
    booking = racer.create_sales_order(_order("FN0000000002"), idempotency_key=key)
    assert booking.replayed and booking.document.sales_order_id == first.document.sales_order_id
    state = site.state()
    assert len(state["sales_orders"]) == 1
    assert state["duplicates"] == {"Sales Order": 1}
    assert [r["code"] for r in state["rejected"]] == ["DuplicateEntryError"]


def _lookup_misses_once(lookup):
    calls = []

    def wrapped(doctype, key):
        calls.append(key)
        return None if len(calls) == 1 else lookup(doctype, key)

    return wrapped


def test_einvoices_feed_lists_registered_invoices_with_the_india_compliance_fields(site):
    hook = ErpNextHook()
    page = _book_and_invoice(hook, "FN0000000001", "FN0000000002", "FN0000000003")
    assert [inv.seq for inv in page.items] == [1, 2, 3] and page.next_cursor == 3
    assert not page.unreadable
    invoice = page.items[0]
    order = site.state()["sales_orders"][0]
    assert invoice.invoice_number == "RB2627/000001" and invoice.order_code == "FN0000000001"
    assert invoice.po_number == "PO-FN0000000001" and invoice.sales_order_id == order["name"]
    assert len(invoice.irn) == 64 and invoice.ack_number and invoice.signed_qr_code.count(".") == 2
    assert parse_datetime(invoice.ack_date) is not None and invoice.status == "ACTIVE"
    assert [(line.sku, line.quantity, line.unit_price) for line in invoice.lines] == [
        ("460491724004", 2, Decimal("1120.0")), ("460491724011", 1, Decimal("499.0"))
    ]
    assert invoice.total_value == Decimal("2739.0")
    # the cursor: only later numbers, in order, paged
    assert [inv.invoice_number for inv in hook.einvoices_since(1, limit=1).items] == ["RB2627/000002"]
    assert hook.einvoices_since(3).items == [] and hook.einvoices_since(3).next_cursor == 3
    # the order is billed now: ERPNext reports it as such
    replay = hook.create_sales_order(_order("FN0000000001"), idempotency_key=keys.create_sales_order("FN0000000001"))
    assert replay.replayed and replay.document.status == "INVOICED"


def test_download_pdf_fetches_the_print_from_the_site_only(site):
    hook = ErpNextHook()
    invoice = _book_and_invoice(hook, "FN0000000001").items[0]
    pdf = hook.download_pdf(invoice.pdf_url, key=keys.pdf(invoice.invoice_number))
    assert pdf.startswith(b"%PDF") and b"RB2627/000001" in pdf
    with pytest.raises(PayloadError, match="not on the ERPNext site"):
        hook.download_pdf("http://example.invalid/api/method/x.pdf", key="pdf:x")


def test_cancel_sales_order_before_billing_is_idempotent(site):
    site.configure(invoice_delay_s=60)
    hook = ErpNextHook()
    booked = hook.create_sales_order(_order(), idempotency_key="create:FN0000000001").document
    cancelled = hook.cancel_sales_order(booked.sales_order_id, idempotency_key="cancel:FN0000000001")
    again = hook.cancel_sales_order(booked.sales_order_id, idempotency_key="cancel:FN0000000001")
    assert cancelled.status == again.status == "CANCELLED"
    assert site.state()["sales_orders"][0]["status"] == "Cancelled"
    assert site.state()["request_counts"].get("POST /api/method/{method}") == 1  # the replay only read


def test_cancelling_a_billed_order_is_refused_with_the_contract_code(site):
    hook = ErpNextHook()
    _book_and_invoice(hook, "FN0000000001")
    order_id = site.state()["sales_orders"][0]["name"]
    with pytest.raises(RemoteRejectedError) as refused:
        hook.cancel_sales_order(order_id, idempotency_key="cancel:FN0000000001")
    assert refused.value.status == 409 and refused.value.code == ORDER_INVOICED
    assert "linked with Sales Invoice RB2627/000001" in refused.value.message


def test_cancel_irn_within_24_hours_then_the_order_and_a_replay(site):
    hook = ErpNextHook()
    invoice = _book_and_invoice(hook, "FN0000000001").items[0]
    cancelled = hook.cancel_irn(invoice.invoice_number, "customer cancelled", idempotency_key="cancel-irn:RB2627/000001")
    assert cancelled.status == "CANCELLED" and cancelled.irn == invoice.irn
    replay = hook.cancel_irn(invoice.invoice_number, "customer cancelled", idempotency_key="cancel-irn:RB2627/000001")
    assert replay.status == "CANCELLED" and replay.irn == invoice.irn and replay.ack_number == invoice.ack_number
    state = site.state()
    assert state["sales_invoices"][0]["einvoice_status"] == "Cancelled" and state["sales_invoices"][0]["irn"] == ""
    assert state["einvoice_logs"][0]["is_cancelled"] == 1
    assert state["einvoice_logs"][0]["cancel_remark"] == "customer cancelled"
    assert hook.einvoices_since(0).items == []  # a cancelled e-invoice leaves the feed
    order = hook.cancel_sales_order(invoice.sales_order_id, idempotency_key="cancel:FN0000000001")
    assert order.status == "CANCELLED"


def test_cancel_irn_after_24_hours_is_refused_with_the_contract_code(site):
    hook = ErpNextHook()
    invoice = _book_and_invoice(hook, "FN0000000001").items[0]
    site.configure(clock_offset_s=24 * 3600 + 60)
    with pytest.raises(RemoteRejectedError) as refused:
        hook.cancel_irn(invoice.invoice_number, "late", idempotency_key="cancel-irn:RB2627/000001")
    assert refused.value.status == 409 and refused.value.code == IRN_CANCEL_WINDOW_CLOSED
    assert "24 hours" in refused.value.message
    assert site.state()["sales_invoices"][0]["einvoice_status"] == "Generated"


def test_return_order_raises_a_credit_note_once_and_the_feed_lists_it(site):
    hook = ErpNextHook()
    invoice = _book_and_invoice(hook, "FN0000000001").items[0]
    request = ReturnOrderRequest(
        returnOrderCode="RO-1", orderCode="FN0000000001", invoiceNumber=invoice.invoice_number, reason="QC pass return",
        lines=[DocumentLine(lineCode="FN0000000001-1", sku="460491724004", quantity=1, unitPrice=Decimal("1120.00"))],
    )
    first = hook.create_return_order(request, idempotency_key=keys.return_order("RO-1"))
    again = hook.create_return_order(request, idempotency_key=keys.return_order("RO-1"))
    assert not first.replayed and again.replayed
    assert first.document.return_order_id == again.document.return_order_id == "RC2627/000001"
    assert first.document.return_order_code == "RO-1"
    page = _wait_credit_notes(hook, 1)
    note = page.items[0]
    assert (note.seq, note.credit_note_number, note.invoice_number) == (1, "RC2627/000001", invoice.invoice_number)
    assert (note.return_order_code, note.order_code, note.total_value) == ("RO-1", "FN0000000001", Decimal("1120.0"))
    assert [(line.sku, line.quantity) for line in note.lines] == [("460491724004", 1)]
    assert len(note.irn) == 64 and note.ack_number and note.signed_qr_code
    assert len(site.state()["credit_notes"]) == 1


def test_returning_more_than_invoiced_is_rejected_with_erpnexts_message(site):
    hook = ErpNextHook()
    invoice = _book_and_invoice(hook, "FN0000000001").items[0]
    request = ReturnOrderRequest(
        returnOrderCode="RO-2", orderCode="FN0000000001", invoiceNumber=invoice.invoice_number, reason="too many",
        lines=[DocumentLine(sku="460491724004", quantity=5, unitPrice=Decimal("1120.00"))],
    )
    with pytest.raises(RemoteRejectedError) as refused:
        hook.create_return_order(request, idempotency_key=keys.return_order("RO-2"))
    assert refused.value.status == 417 and refused.value.code == "ValidationError"
    assert "Returned Item 460491724004 exceeds" in refused.value.message
    assert site.state()["credit_notes"] == []


def test_request_credit_note_credits_what_is_left_once(site):
    hook = ErpNextHook()
    invoice = _book_and_invoice(hook, "FN0000000001").items[0]
    partial = ReturnOrderRequest(
        returnOrderCode="RO-3", orderCode="FN0000000001", invoiceNumber=invoice.invoice_number, reason="partial",
        lines=[DocumentLine(sku="460491724004", quantity=1, unitPrice=Decimal("1120.00"))],
    )
    hook.create_return_order(partial, idempotency_key=keys.return_order("RO-3"))
    key = keys.credit_note_for_invoice(invoice.invoice_number)
    first = hook.request_credit_note(invoice.invoice_number, "FN0000000001", "after 24 h", idempotency_key=key)
    again = hook.request_credit_note(invoice.invoice_number, "FN0000000001", "after 24 h", idempotency_key=key)
    assert not first.replayed and again.replayed
    assert first.document["creditNoteNumber"] == again.document["creditNoteNumber"] == "RC2627/000002"
    notes = _wait_credit_notes(hook, 2).items
    full = notes[1]
    assert sorted((line.sku, line.quantity) for line in full.lines) == [("460491724004", 1), ("460491724011", 1)]
    assert full.return_order_code is None and full.total_value == Decimal("1619.0")
    with pytest.raises(PayloadError, match="belongs to order"):
        hook.request_credit_note(invoice.invoice_number, "FN-OTHER", "x", idempotency_key="credit-note:other")


def test_5xx_is_retried_until_success_and_an_outage_is_unavailable(site):
    site.configure(fail_next=[503, 500])
    attempts = Recorder()
    booking = ErpNextHook(on_attempt=attempts).create_sales_order(_order(), idempotency_key="create:FN0000000001")
    assert not booking.replayed and booking.document.status == "BOOKED"
    assert [a.status_code for a in attempts] == [503, 500, 200, 200]  # look-up retried, then insert
    assert [a.outcome for a in attempts] == ["retry", "retry", "ok", "ok"]
    site.configure(fail_next=[503] * 4)
    with pytest.raises(RemoteUnavailableError):
        ErpNextHook().einvoices_since(0)


def test_an_insert_answered_too_late_is_retried_and_erpnexts_duplicate_becomes_a_replay(site, monkeypatch):
    """The insert is stored but answered past the read timeout; the hook's retry meets the unique key
    (409 DuplicateEntryError) and the adapter returns the stored order instead of failing."""
    monkeypatch.setenv("OMNI_ERP_HTTP_READ_TIMEOUT_S", "0.3")
    site.configure(timeout_s=0.6)
    hook = ErpNextHook()
    original_insert = hook._insert

    def insert_answered_late(doctype, doc, key):
        site.configure(fail_next=["timeout"])  # only the insert's first attempt: it stores, then answers late
        return original_insert(doctype, doc, key)

    hook._insert = insert_answered_late
    booking = hook.create_sales_order(_order(), idempotency_key="create:FN0000000001")
    assert booking.replayed and booking.document.order_code == "FN0000000001"
    state = site.state()
    assert len(state["sales_orders"]) == 1 and state["duplicates"] == {"Sales Order": 1}


def test_wrong_token_is_rejected_and_the_secret_is_never_logged(site, monkeypatch, caplog):
    conn = {"conn_type": "http", "host": site.url, "login": API_KEY, "password": "wrong-secret"}
    monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps(conn))
    with caplog.at_level(logging.DEBUG), pytest.raises(RemoteRejectedError) as refused:
        ErpNextHook().einvoices_since(0)
    assert refused.value.status == 401 and refused.value.code == "AuthenticationError"
    assert "wrong-secret" not in caplog.text and API_SECRET not in caplog.text
    assert "****" in repr(ErpNextHook().get_conn().auth)


def test_missing_api_key_is_a_configuration_error(site, monkeypatch):
    from omni_erp.hooks.base import ConnectionConfigError

    monkeypatch.setenv("AIRFLOW_CONN_ERP_DEFAULT", json.dumps({"conn_type": "http", "host": site.url, "password": "x"}))
    with pytest.raises(ConnectionConfigError, match="API key in 'login'"):
        ErpNextHook().einvoices_since(0)


def test_frappe_error_reads_server_messages_then_the_exception_line():
    queued = {
        "exc_type": "ValidationError",
        "exception": "frappe.exceptions.ValidationError: Row 1: bad",
        "_server_messages": json.dumps([json.dumps({"message": "Row 1: <b>bad</b> qty"})]),
    }
    assert frappe_error(queued) == ("ValidationError", "Row 1: bad qty")
    assert frappe_error({"exception": "frappe.exceptions.DoesNotExistError: Sales Invoice X not found"}) == (
        "DoesNotExistError", "Sales Invoice X not found"
    )
    assert frappe_error("not a dict") == (None, "")


@pytest.mark.parametrize(
    "message",
    [
        "e-Invoice can only be cancelled upto 24 hours after it is generated",  # India Compliance today
        "e-Invoice can be cancelled only within 24 Hours of its generation",  # its earlier wording
    ],
)
def test_both_wordings_of_the_24_hour_refusal_get_the_contract_code(message):
    from omni_erp.hooks.erpnext import _IRN_WINDOW_MESSAGE

    assert _IRN_WINDOW_MESSAGE.search(message)
    assert not _IRN_WINDOW_MESSAGE.search("IRN not found")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    body=_json | st.fixed_dictionaries(
        {},
        optional={
            "exc_type": _json,
            "exception": _json,
            "_server_messages": st.one_of(_json, _json.map(json.dumps), st.lists(_json.map(json.dumps)).map(json.dumps)),
            "message": _json,
        },
    )
)
def test_frappe_error_never_raises_on_any_json_body(body):
    code, message = frappe_error(body)
    assert code is None or isinstance(code, str)
    assert isinstance(message, str) and len(message) <= 500


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
def test_any_order_code_is_booked_once_and_replayed(site, code):
    """Order codes are any Unicode (Increff sends it): the key is header-safe, the look-up finds the order again."""
    hook = ErpNextHook()
    key = keys.create_sales_order(code)
    first = hook.create_sales_order(_order(code), idempotency_key=key)
    again = hook.create_sales_order(_order(code), idempotency_key=key)
    assert again.replayed and again.document.sales_order_id == first.document.sales_order_id
    assert first.document.order_code == again.document.order_code == code
    orders = [o for o in site.state()["sales_orders"] if o["omni_idempotency_key"] == key]
    assert len(orders) == 1


def test_an_invoice_registered_after_higher_numbers_is_found_by_the_look_back(site):
    """The cursor is the naming-series number: an IRN that comes late appears behind the cursor, where the
    feed readers' look-back re-reads it."""
    site.configure(irn_hold=["FN0000000001"])
    hook = ErpNextHook()
    for code in ("FN0000000001", "FN0000000002"):
        hook.create_sales_order(_order(code), idempotency_key=keys.create_sales_order(code))
    deadline = time.monotonic() + 5
    page = hook.einvoices_since(0)
    while not page.items and time.monotonic() < deadline:
        time.sleep(DELAY_S)
        page = hook.einvoices_since(0)
    assert [(inv.seq, inv.order_code) for inv in page.items] == [(2, "FN0000000002")] and page.next_cursor == 2
    site.configure(irn_hold=[])
    assert hook.einvoices_since(page.next_cursor).items == []  # not after the cursor...
    late = hook.einvoices_since(max(0, page.next_cursor - 200))  # ...but within the look-back
    assert [(inv.seq, inv.order_code) for inv in late.items] == [(1, "FN0000000001"), (2, "FN0000000002")]
