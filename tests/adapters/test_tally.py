"""TallyHook against the TallyPrime sandbox on 127.0.0.1: every ErpAdapter method, replays, error mapping, faults."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from omni_erp import einvoice
from omni_erp.exceptions import PayloadError, RemoteRejectedError, RemoteUnavailableError
from omni_erp.hooks.base import Attempt, RetryPolicy
from omni_erp.hooks.tally import TallyHook
from omni_erp.models.erp import DocumentLine, ReturnOrderRequest, SalesOrderRequest
from omni_erp.sandbox.tally import create_tally_sandbox
from omni_erp.timeutil import financial_year, parse_datetime
from tests.conftest import Sandbox

COMPANY = "Omni Demo Co"
SUPPLIER_GSTIN = "29ABCDE1234F1Z5"
SHIRT, JEANS = "460491724004", "460491724011"
FAST = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02, connect_timeout_s=2, read_timeout_s=2)


@pytest.fixture(scope="module")
def _tally_server():
    from omni_erp.sandbox.serve import serve_in_thread

    with serve_in_thread(create_tally_sandbox(company=COMPANY, invoice_delay_s=0)) as server:
        yield server


@pytest.fixture()
def tally(_tally_server, monkeypatch) -> Sandbox:
    """The Tally sandbox, reset, with ``tally_default`` pointing at it (login = the company name)."""
    sandbox = Sandbox(_tally_server.url)
    sandbox.reset()
    monkeypatch.setenv(
        "AIRFLOW_CONN_TALLY_DEFAULT", json.dumps({"conn_type": "http", "host": _tally_server.url, "login": COMPANY})
    )
    return sandbox


@pytest.fixture()
def attempts() -> list[Attempt]:
    return []


@pytest.fixture()
def hook(tally: Sandbox, attempts: list[Attempt]) -> TallyHook:
    return TallyHook(retry_policy=FAST, on_attempt=attempts.append, pdf_path="/_sandbox/pdf")


def order(code: str = "FN6018822001", lines: tuple[tuple[str, int, str], ...] = ((SHIRT, 2, "1120.00"),), **extra: Any) -> SalesOrderRequest:
    body = {
        "orderCode": code,
        "poNumber": "4042640641",
        "buyerCode": "AJIO-RRL",
        "orderDate": "2026-12-03T10:00:00.000+05:30",
        "lines": [{"sku": sku, "quantity": qty, "unitPrice": price} for sku, qty, price in lines],
        "totalAmount": str(sum(qty * Decimal(price) for _, qty, price in lines)),
    }
    return SalesOrderRequest.model_validate({**body, **extra})


def book_and_invoice(hook: TallyHook, code: str = "FN6018822001", **kwargs: Any) -> Any:
    hook.create_sales_order(order(code, **kwargs), idempotency_key=f"create:{code}")
    return next(i for i in hook.einvoices_since(0, limit=500).items if i.order_code == code)


def vouchers(tally: Sandbox, vch_type: str) -> list[dict[str, Any]]:
    return [v for v in tally.state()["vouchers"] if v["voucherType"] == vch_type]


def raw_import(tally: Sandbox, voucher: str) -> str:
    """Import a voucher as someone in the seller's office would (no adapter involved)."""
    xml = (
        "<ENVELOPE><HEADER><TALLYREQUEST>Import Data</TALLYREQUEST></HEADER><BODY><IMPORTDATA><REQUESTDESC>"
        "<REPORTNAME>Vouchers</REPORTNAME></REQUESTDESC><REQUESTDATA>"
        f'<TALLYMESSAGE xmlns:UDF="TallyUDF">{voucher}</TALLYMESSAGE></REQUESTDATA></IMPORTDATA></BODY></ENVELOPE>'
    )
    return requests.post(tally.url + "/", data=xml.encode(), timeout=5).text


def hand_entered_order(number: str, key: str = "") -> str:
    udf = (
        f'<UDF:OMNIERPKEY.LIST DESC="`OmniErpKey`" ISLIST="YES" TYPE="String"><UDF:OMNIERPKEY>{key}</UDF:OMNIERPKEY>'
        "</UDF:OMNIERPKEY.LIST>" if key else ""
    )
    return (
        f'<VOUCHER VCHTYPE="Sales Order" ACTION="Create"><DATE>20261203</DATE><VOUCHERNUMBER>{number}</VOUCHERNUMBER>'
        f"<REFERENCE>4042640641</REFERENCE><PARTYLEDGERNAME>AJIO-RRL</PARTYLEDGERNAME>{udf}"
        "<LEDGERENTRIES.LIST><LEDGERNAME>AJIO-RRL</LEDGERNAME><AMOUNT>-2240.00</AMOUNT></LEDGERENTRIES.LIST>"
        f"<ALLINVENTORYENTRIES.LIST><STOCKITEMNAME>{SHIRT}</STOCKITEMNAME><RATE>1120.00/Nos</RATE>"
        "<AMOUNT>2240.00</AMOUNT><BILLEDQTY> 2 Nos</BILLEDQTY></ALLINVENTORYENTRIES.LIST></VOUCHER>"
    )


# --- sales orders ------------------------------------------------------------------------------


def test_create_sales_order_books_one_voucher_and_a_retry_replays_it(hook: TallyHook, tally: Sandbox) -> None:
    first = hook.create_sales_order(order(), idempotency_key="create:FN6018822001")
    again = hook.create_sales_order(order(), idempotency_key="create:FN6018822001")

    assert (first.replayed, again.replayed) == (False, True)
    assert first.document.sales_order_id == again.document.sales_order_id == "FN6018822001"
    assert first.document.status == "BOOKED"
    [booked] = vouchers(tally, "Sales Order")
    assert (booked["number"], booked["reference"], booked["key"]) == ("FN6018822001", "4042640641", "create:FN6018822001")
    assert booked["lines"] == [[SHIRT, 2, 1120.0]] and booked["total"] == 2240.0
    assert tally.state()["duplicates"] == {}  # the replay was answered by the look-up, not by a refused import


def test_a_voucher_number_tally_reports_as_existing_is_a_replay(hook: TallyHook, tally: Sandbox) -> None:
    """Entered by hand (no key): the look-up by key misses, Tally refuses the number, the adapter returns it."""
    assert "<CREATED>1</CREATED>" in raw_import(tally, hand_entered_order("FN6018822001"))

    booking = hook.create_sales_order(order(), idempotency_key="create:FN6018822001")

    assert booking.replayed and booking.document.sales_order_id == "FN6018822001"
    assert len(vouchers(tally, "Sales Order")) == 1
    assert tally.state()["duplicates"] == {"Sales Order": 1}


def test_a_voucher_number_taken_by_another_booking_is_rejected(hook: TallyHook, tally: Sandbox) -> None:
    raw_import(tally, hand_entered_order("FN6018822001", key="create:SOMETHING-ELSE"))

    with pytest.raises(RemoteRejectedError, match="already exists") as caught:
        hook.create_sales_order(order(), idempotency_key="create:FN6018822001")

    assert caught.value.code == "LINEERROR"
    assert len(vouchers(tally, "Sales Order")) == 1


def test_tally_line_errors_become_rejections_and_nothing_is_booked(hook: TallyHook, tally: Sandbox, attempts: list[Attempt]) -> None:
    bad = order(totalAmount="9999.00")  # Tally refuses a voucher whose party amount differs from its lines

    with pytest.raises(RemoteRejectedError, match="Voucher totals do not match") as caught:
        hook.create_sales_order(bad, idempotency_key="create:FN6018822001")

    assert (caught.value.status, caught.value.code) == (200, "LINEERROR")
    assert vouchers(tally, "Sales Order") == []
    assert all(a.status_code == 200 for a in attempts)  # HTTP 200 throughout: the error was in the XML


def test_another_company_is_refused(tally: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_TALLY_DEFAULT", json.dumps({"conn_type": "http", "host": tally.url, "login": "Other Co"}))

    with pytest.raises(RemoteRejectedError, match="Could not set 'SVCurrentCompany' to 'Other Co'"):
        TallyHook(retry_policy=FAST).create_sales_order(order(), idempotency_key="create:FN6018822001")


def test_cancel_sales_order_cancels_once(hook: TallyHook, tally: Sandbox) -> None:
    tally.configure(invoice_delay_s=3600)  # the office has not invoiced it yet
    hook.create_sales_order(order(), idempotency_key="create:FN6018822001")

    cancelled = hook.cancel_sales_order("FN6018822001", idempotency_key="cancel:FN6018822001")
    again = hook.cancel_sales_order("FN6018822001", idempotency_key="cancel:FN6018822001")

    assert cancelled.status == again.status == "CANCELLED"
    assert [v["cancelled"] for v in vouchers(tally, "Sales Order")] == [True]
    assert "Sales Order cancel" not in tally.state()["duplicates"]  # the second call saw it cancelled, sent nothing


def test_cancelling_an_invoiced_or_unknown_order_is_rejected(hook: TallyHook, tally: Sandbox) -> None:
    book_and_invoice(hook)

    with pytest.raises(RemoteRejectedError, match="linked to the invoice"):
        hook.cancel_sales_order("FN6018822001", idempotency_key="cancel:FN6018822001")
    with pytest.raises(RemoteRejectedError, match="does not exist") as caught:
        hook.cancel_sales_order("FN-NOPE", idempotency_key="cancel:FN-NOPE")
    assert caught.value.code == "NOT_FOUND"


# --- e-invoices --------------------------------------------------------------------------------


def test_einvoices_carry_the_irp_registration_and_the_booking(hook: TallyHook, tally: Sandbox) -> None:
    booking = hook.create_sales_order(
        order(lines=((SHIRT, 2, "1120.00"), (JEANS, 1, "3299.00"))), idempotency_key="create:FN6018822001"
    )

    [invoice] = hook.einvoices_since(0).items

    assert invoice.sales_order_id == booking.document.sales_order_id and invoice.order_code == "FN6018822001"
    assert invoice.po_number == "4042640641" and invoice.status == "ACTIVE"
    acked = parse_datetime(invoice.ack_date)
    assert acked is not None
    assert invoice.irn == einvoice.irn(SUPPLIER_GSTIN, financial_year(acked), "INV", invoice.invoice_number)
    assert einvoice.decode_qr_payload(invoice.signed_qr_code)["data"]["DocNo"] == invoice.invoice_number
    assert invoice.ack_number and parse_datetime(invoice.invoice_date) is not None
    assert [(line.sku, line.quantity, line.unit_price) for line in invoice.lines] == [
        (SHIRT, 2, Decimal("1120.00")), (JEANS, 1, Decimal("3299.00"))
    ]
    assert invoice.total_value == Decimal("5539.00")


def test_einvoice_feed_pages_by_master_id(hook: TallyHook) -> None:
    for n in range(3):
        hook.create_sales_order(order(f"FN60188220{n:02d}"), idempotency_key=f"create:FN60188220{n:02d}")

    everything = hook.einvoices_since(0)
    first = hook.einvoices_since(0, limit=2)
    rest = hook.einvoices_since(first.next_cursor, limit=2)

    assert [i.seq for i in everything.items] == sorted(i.seq for i in everything.items)
    assert [i.invoice_number for i in first.items + rest.items] == [i.invoice_number for i in everything.items]
    assert len(everything.items) == 3 and hook.einvoices_since(everything.next_cursor).items == []
    assert hook.einvoices_since(everything.next_cursor).next_cursor == everything.next_cursor


def test_cancel_irn_within_24_hours_then_not_after(hook: TallyHook, tally: Sandbox) -> None:
    first = book_and_invoice(hook, "FN6018822001")
    second = book_and_invoice(hook, "FN6018822002")

    cancelled = hook.cancel_irn(first.invoice_number, "order cancelled", idempotency_key=f"cancel-irn:{first.invoice_number}")
    assert cancelled.status == "CANCELLED" and cancelled.irn == first.irn
    assert {i.invoice_number: i.status for i in hook.einvoices_since(0).items}[first.invoice_number] == "CANCELLED"

    tally.configure(clock_offset_s=timedelta(hours=25).total_seconds())
    with pytest.raises(RemoteRejectedError, match="24 hours"):
        hook.cancel_irn(second.invoice_number, "too late", idempotency_key=f"cancel-irn:{second.invoice_number}")


# --- returns and credit notes ------------------------------------------------------------------


def return_request(invoice: Any, code: str = "RET-1", quantity: int = 1) -> ReturnOrderRequest:
    return ReturnOrderRequest(
        returnOrderCode=code, orderCode=invoice.order_code, invoiceNumber=invoice.invoice_number, reason="customer return",
        lines=[DocumentLine(sku=SHIRT, quantity=quantity, unitPrice=Decimal("1120.00"))],
    )


def test_return_order_raises_one_registered_credit_note(hook: TallyHook, tally: Sandbox) -> None:
    invoice = book_and_invoice(hook)

    booked = hook.create_return_order(return_request(invoice), idempotency_key="return:RET-1")
    again = hook.create_return_order(return_request(invoice), idempotency_key="return:RET-1")

    assert (booked.replayed, again.replayed) == (False, True)
    assert booked.document.return_order_id == again.document.return_order_id
    assert booked.document.return_order_code == "RET-1"
    [note] = hook.credit_notes_since(0).items
    assert note.credit_note_number == booked.document.return_order_id
    assert (note.return_order_code, note.order_code, note.invoice_number) == ("RET-1", invoice.order_code, invoice.invoice_number)
    assert note.irn == einvoice.irn(SUPPLIER_GSTIN, financial_year(parse_datetime(note.ack_date)), "CRN", note.credit_note_number)
    assert note.total_value == Decimal("1120.00") and [line.quantity for line in note.lines] == [1]
    assert len(vouchers(tally, "Credit Note")) == 1


def test_returning_more_than_was_invoiced_is_rejected(hook: TallyHook, tally: Sandbox) -> None:
    invoice = book_and_invoice(hook)

    with pytest.raises(RemoteRejectedError, match="exceeds the quantity"):
        hook.create_return_order(return_request(invoice, quantity=3), idempotency_key="return:RET-1")
    assert vouchers(tally, "Credit Note") == []


def test_request_credit_note_credits_what_is_still_open_once(hook: TallyHook, tally: Sandbox) -> None:
    invoice = book_and_invoice(hook, lines=((SHIRT, 2, "1120.00"), (JEANS, 1, "3299.00")))
    hook.create_return_order(return_request(invoice), idempotency_key="return:RET-1")
    key = f"credit-note:{invoice.invoice_number}"

    booked = hook.request_credit_note(invoice.invoice_number, invoice.order_code, "cancelled after 24 h", idempotency_key=key)
    again = hook.request_credit_note(invoice.invoice_number, invoice.order_code, "cancelled after 24 h", idempotency_key=key)

    assert (booked.replayed, again.replayed) == (False, True)
    assert booked.document["creditNoteNumber"] == again.document["creditNoteNumber"]
    full = next(n for n in hook.credit_notes_since(0).items if n.credit_note_number == booked.document["creditNoteNumber"])
    assert full.return_order_code is None
    assert sorted((line.sku, line.quantity) for line in full.lines) == [(SHIRT, 1), (JEANS, 1)]
    with pytest.raises(RemoteRejectedError, match="already fully credited"):
        hook.request_credit_note(invoice.invoice_number, invoice.order_code, "again", idempotency_key="credit-note:other")
    assert len(vouchers(tally, "Credit Note")) == 2


# --- PDFs --------------------------------------------------------------------------------------


def test_pdfs_come_only_from_the_configured_path_on_the_tally_host(hook: TallyHook, tally: Sandbox) -> None:
    invoice = book_and_invoice(hook)

    assert invoice.pdf_url == f"{tally.url}/_sandbox/pdf/{invoice.invoice_number.replace('/', '-')}.pdf"
    assert hook.download_pdf(invoice.pdf_url, key="pdf:x").startswith(b"%PDF")
    with pytest.raises(PayloadError, match="not under"):
        hook.download_pdf("http://elsewhere.example/_sandbox/pdf/a.pdf", key="pdf:x")
    plain = TallyHook(retry_policy=FAST)
    assert plain.einvoices_since(0).items[0].pdf_url is None
    with pytest.raises(PayloadError, match="no PDFs"):
        plain.download_pdf(invoice.pdf_url, key="pdf:x")


# --- faults ------------------------------------------------------------------------------------


def test_a_5xx_is_retried_and_the_booking_still_happens_once(hook: TallyHook, tally: Sandbox, attempts: list[Attempt]) -> None:
    tally.configure(fail_next=[503])

    booking = hook.create_sales_order(order(), idempotency_key="create:FN6018822001")

    assert not booking.replayed
    assert [(a.status_code, a.outcome) for a in attempts][:2] == [(503, "retry"), (200, "ok")]
    assert len(vouchers(tally, "Sales Order")) == 1


def test_a_tally_that_stays_down_is_unavailable(hook: TallyHook, tally: Sandbox) -> None:
    tally.configure(error_rate=1.0, error_statuses=[500])

    with pytest.raises(RemoteUnavailableError):
        hook.einvoices_since(0)


def test_a_voucher_saved_before_a_crash_is_found_by_its_key(hook: TallyHook, tally: Sandbox) -> None:
    """Tally saved the first try's voucher but the task died before the ledger knew: the retry finds it by key."""
    raw_import(tally, hand_entered_order("FN6018822001", key="create:FN6018822001"))

    booking = hook.create_sales_order(order(), idempotency_key="create:FN6018822001")

    assert booking.replayed and booking.document.sales_order_id == "FN6018822001"
    assert len(vouchers(tally, "Sales Order")) == 1
    assert tally.state()["duplicates"] == {}  # found by the look-up: no second import was sent


# --- any order code survives the round trip ----------------------------------------------------

codes = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Cf", "Zl", "Zp"), blacklist_characters="\x85"),
    min_size=1, max_size=40,
).map(str.strip).filter(bool)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code=codes)
@example(code='FN"1</VOUCHERNUMBER>&amp; ##OmniErpValue')
@example(code="FNÀjiô-ऑर्डर-1")
def test_any_order_code_books_and_replays_exactly(hook: TallyHook, tally: Sandbox, code: str) -> None:
    """Quotes, ampersands, angle brackets and non-ASCII travel as XML text and TDL variables, never as TDL."""
    from omni_erp import keys

    key = keys.create_sales_order(code)
    first = hook.create_sales_order(order(code), idempotency_key=key)
    second = hook.create_sales_order(order(code), idempotency_key=key)

    assert first.document.sales_order_id == second.document.sales_order_id == code
    assert second.replayed
    assert [v["number"] for v in vouchers(tally, "Sales Order")].count(code) == 1


# --- reading Tally's vouchers ------------------------------------------------------------------


def exported_sales_voucher(number: str, quantity: str, rate: str = "1120.00/Nos") -> str:
    return (
        f"<VOUCHER><DATE>20261203</DATE><VOUCHERNUMBER>{number}</VOUCHERNUMBER><REFERENCE>PO-1</REFERENCE>"
        "<PARTYLEDGERNAME>AJIO-RRL</PARTYLEDGERNAME><ISCANCELLED>No</ISCANCELLED><MASTERID> 7</MASTERID>"
        "<IRN>abc</IRN><IRNACKNO>1</IRNACKNO><IRNACKDATE>2026-12-03 10:00:00</IRNACKDATE><IRNQRCODE>q</IRNQRCODE>"
        "<INVOICEORDERLIST.LIST><BASICPURCHASEORDERNO>FN1</BASICPURCHASEORDERNO></INVOICEORDERLIST.LIST>"
        "<LEDGERENTRIES.LIST><LEDGERNAME>AJIO-RRL</LEDGERNAME><AMOUNT>-2,240.00</AMOUNT></LEDGERENTRIES.LIST>"
        f"<ALLINVENTORYENTRIES.LIST><STOCKITEMNAME>{SHIRT}</STOCKITEMNAME><RATE>{rate}</RATE>"
        f"<BILLEDQTY> {quantity} Nos</BILLEDQTY></ALLINVENTORYENTRIES.LIST></VOUCHER>"
    )


@pytest.mark.parametrize(
    ("quantity", "rate", "problem"),
    [("1.5", "1120.00/Nos", "quantity"), ("", "1120.00/Nos", "quantity"), ("2", "", "unitPrice")],
    ids=["fractional-quantity", "no-quantity", "no-rate"],
)
def test_an_unreadable_voucher_is_set_aside_not_failing_the_page(quantity: str, rate: str, problem: str) -> None:
    import xml.etree.ElementTree as ET

    from omni_erp.hooks.tally import _einvoice
    from omni_erp.models.erp import EInvoicePage

    good, bad = (ET.fromstring(exported_sales_voucher(n, q, r)) for n, q, r in (("TB/1", "2.000", "1120.00/Nos"), ("TB/2", quantity, rate)))

    page = EInvoicePage.model_validate({"items": [_einvoice(good), _einvoice(bad)], "nextCursor": 7})

    [invoice] = page.items
    assert (invoice.invoice_number, invoice.lines[0].quantity, invoice.total_value) == ("TB/1", 2, Decimal("2240.00"))
    assert invoice.ack_date == "2026-12-03T10:00:00.000+05:30" and invoice.invoice_date == "2026-12-03T00:00:00.000+05:30"
    [unreadable] = page.unreadable
    assert unreadable.get("invoiceNumber") == "TB/2" and problem in unreadable.problem


@pytest.mark.parametrize(
    ("answer", "counts", "errors"),
    [
        ("<RESPONSE><CREATED>1</CREATED><ERRORS>0</ERRORS><EXCEPTIONS>0</EXCEPTIONS></RESPONSE>", {"CREATED": 1}, []),
        (
            "<ENVELOPE><HEADER><STATUS>1</STATUS></HEADER><BODY><DATA><IMPORTRESULT><CREATED>0</CREATED>"
            "<ERRORS>1</ERRORS><LINEERROR>Voucher Number 'X' already exists!</LINEERROR></IMPORTRESULT></DATA></BODY></ENVELOPE>",
            {"CREATED": 0, "ERRORS": 1},
            ["Voucher Number 'X' already exists!"],
        ),
        ("<RESPONSE><CREATED>0</CREATED><ERRORS>0</ERRORS><EXCEPTIONS>1</EXCEPTIONS></RESPONSE>", {"EXCEPTIONS": 1}, ["exception"]),
        ("<ENVELOPE><BODY><DATA><LINEERROR>Unknown Request</LINEERROR></DATA></BODY></ENVELOPE>", None, ["Unknown Request"]),
    ],
    ids=["created", "importresult-with-lineerror", "exception-without-lineerror", "no-counters"],
)
def test_import_answers_are_read_in_both_forms(answer: str, counts: dict[str, int] | None, errors: list[str]) -> None:
    import xml.etree.ElementTree as ET

    from omni_erp.hooks.tally import import_result

    got_counts, got_errors = import_result(ET.fromstring(answer))

    if counts is None:
        assert got_counts is None
    else:
        assert got_counts is not None and {k: got_counts[k] for k in counts} == counts
    assert len(got_errors) == len(errors) and all(e in g for e, g in zip(errors, got_errors, strict=True))


class _LookupMissesOnce(TallyHook):
    """Two workers racing: this one's look-up by key ran just before the other worker's Credit Note was saved."""

    missed = False

    def _find(self, vch_type: str, field: str, value: str, operation: str) -> Any:
        if vch_type == "Credit Note" and field == "OmniErpKey" and not self.missed:
            self.missed = True
            return None
        return super()._find(vch_type, field, value, operation)


def test_two_workers_creating_one_credit_note_leave_one_active(hook: TallyHook, tally: Sandbox) -> None:
    invoice = book_and_invoice(hook)
    first = hook.create_return_order(return_request(invoice), idempotency_key="return:RET-1")

    racer = _LookupMissesOnce(retry_policy=FAST).create_return_order(return_request(invoice, quantity=1), idempotency_key="return:RET-1")

    assert racer.replayed and racer.document.return_order_id == first.document.return_order_id
    notes = vouchers(tally, "Credit Note")
    assert [n["cancelled"] for n in notes] == [False, True]  # the racer's own note, the later one, is cancelled
    assert [n.credit_note_number for n in hook.credit_notes_since(0).items if n.irn] == [first.document.return_order_id]


def test_a_credit_note_import_whose_answer_is_lost_is_not_booked_twice(tally: Sandbox) -> None:
    """Tally saves the Credit Note but answers too late; the hook's retry imports it again (Tally numbers credit
    notes itself, so nothing stops it) and the adapter cancels the second one."""
    impatient = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02, connect_timeout_s=2, read_timeout_s=0.3)
    plain = TallyHook(retry_policy=FAST)
    invoice = book_and_invoice(plain)

    class AnswerLostOnImport(TallyHook):
        def _import(self, vouchers: str, operation: str, key: str) -> Any:
            if operation == "create_return_order":
                tally.configure(fail_next=["timeout"], timeout_s=0.6)
            return super()._import(vouchers, operation, key)

    booking = AnswerLostOnImport(retry_policy=impatient).create_return_order(return_request(invoice), idempotency_key="return:RET-1")

    notes = vouchers(tally, "Credit Note")
    assert [n["cancelled"] for n in notes] == [False, True]
    assert booking.document.return_order_id == notes[0]["number"]
    assert [n.credit_note_number for n in plain.credit_notes_since(0).items] == [notes[0]["number"]]


def test_a_full_credit_note_whose_answer_is_lost_is_booked_once_without_error(tally: Sandbox) -> None:
    """The retry of a full credit note that Tally saved is refused (nothing left to credit); the adapter answers
    with the saved note instead of failing the cancellation (seen in ``make demo ERP=tally``)."""
    impatient = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02, connect_timeout_s=2, read_timeout_s=0.3)
    plain = TallyHook(retry_policy=FAST)
    invoice = book_and_invoice(plain)

    class AnswerLostOnImport(TallyHook):
        def _import(self, vouchers: str, operation: str, key: str) -> Any:
            if operation == "request_credit_note":
                tally.configure(fail_next=["timeout"], timeout_s=0.6)
            return super()._import(vouchers, operation, key)

    booking = AnswerLostOnImport(retry_policy=impatient).request_credit_note(
        invoice.invoice_number, invoice.order_code, "cancelled after 24 h", idempotency_key="credit-note:FN6018822001"
    )

    notes = vouchers(tally, "Credit Note")
    assert [n["cancelled"] for n in notes] == [False]
    assert booking.document["creditNoteNumber"] == notes[0]["number"]


def test_the_pdf_path_can_come_from_the_connection(tally: Sandbox, monkeypatch) -> None:
    """``erp_adapter`` builds the hook from the connection alone, so ``extra.pdf_path`` configures the PDFs."""
    conn = {"conn_type": "tally", "host": tally.url, "login": COMPANY, "extra": {"pdf_path": "/_sandbox/pdf/"}}
    monkeypatch.setenv("AIRFLOW_CONN_TALLY_DEFAULT", json.dumps(conn))
    hook = TallyHook(retry_policy=FAST)
    invoice = book_and_invoice(hook)

    assert invoice.pdf_url == f"{tally.url}/_sandbox/pdf/{invoice.invoice_number.replace('/', '-')}.pdf"
    assert hook.download_pdf(invoice.pdf_url, key="pdf:x").startswith(b"%PDF")
