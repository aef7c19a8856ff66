"""The ERP sandbox honours the REST contract: auth, idempotent booking, async e-invoices, cancellations, returns."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from omni_erp import einvoice
from omni_erp.models.erp import CreditNotePage, EInvoicePage, SalesOrder
from omni_erp.sandbox.erp import create_erp_sandbox
from omni_erp.timeutil import financial_year, parse_datetime

SUPPLIER_GSTIN = "29ABCDE1234F1Z5"
SHIRT, JEANS = "460491724004", "460491724011"
INVOICES, CREDIT_NOTES = "/api/v1/e-invoices", "/api/v1/credit-notes"


Lines = tuple[tuple[str, int, float], ...]  # (sku, quantity, unit price)


def order_body(code: str = "FN6018822001", lines: Lines = ((SHIRT, 2, 1120.0),), **extra: Any) -> dict[str, Any]:
    body = {
        "orderCode": code,
        "poNumber": "4042640641",
        "buyerCode": "AJIO-RRL",
        "locationCode": "WH-BLR-01",
        "lines": [
            {"lineCode": f"{code}-{n}", "sku": sku, "quantity": qty, "unitPrice": price}
            for n, (sku, qty, price) in enumerate(lines, start=1)
        ],
        "totalAmount": sum(qty * price for _, qty, price in lines),
    }
    return {**body, **extra}


def book(erp: Any, code: str = "FN6018822001", **kwargs: Any) -> requests.Response:
    return erp.post("/api/v1/sales-orders", order_body(code, **kwargs), key=f"create:{code}")


def invoice_for(erp: Any, code: str = "FN6018822001", **kwargs: Any) -> dict[str, Any]:
    """Book an order and wait for its e-invoice."""
    assert book(erp, code, **kwargs).status_code == 201
    items = [i for i in erp.feed(INVOICES, at_least=len(erp.state()["sales_orders"])) if i["orderCode"] == code]
    assert items, f"no e-invoice for {code}"
    return items[0]


# --- auth and booking ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}],
    ids=["none", "wrong-token", "not-bearer"],
)
def test_api_calls_need_the_bearer_token(erp: Any, headers: dict[str, str]) -> None:
    response = requests.get(erp.url + INVOICES, headers=headers, timeout=5)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "UNAUTHORIZED"


def test_booking_returns_sequential_sales_orders_in_ist(erp: Any) -> None:
    first = book(erp, "FN0000000001")
    second = book(erp, "FN0000000002")

    assert (first.status_code, second.status_code) == (201, 201)
    orders = [SalesOrder.model_validate(r.json()) for r in (first, second)]
    assert [o.sales_order_id for o in orders] == ["SO-000001", "SO-000002"]
    assert orders[0].status == "BOOKED"
    assert orders[0].created_at and orders[0].created_at.endswith("+05:30")


def test_booking_without_idempotency_key_is_refused(erp: Any) -> None:
    response = erp.post("/api/v1/sales-orders", order_body())

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MISSING_IDEMPOTENCY_KEY"
    assert erp.state()["sales_orders"] == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"lines": []}, "lines"),
        ({"lines": [{"sku": SHIRT, "quantity": 0, "unitPrice": 100}], "totalAmount": 0}, "quantity"),
        ({"lines": [{"sku": SHIRT, "quantity": 1.5, "unitPrice": 100}], "totalAmount": 150}, "quantity"),
        ({"lines": [{"sku": SHIRT, "quantity": 1, "unitPrice": -1}], "totalAmount": 0}, "unitPrice"),
        ({"totalAmount": 2238.99}, "totalAmount"),
        ({"poNumber": None}, "poNumber"),
        ({"discount": 10}, "discount"),
    ],
    ids=[
        "no-lines", "zero-quantity", "fractional-quantity", "negative-price", "total-off-by-more-than-a-rupee",
        "no-po", "unknown-field",
    ],
)
def test_invalid_orders_are_rejected_with_the_field_named(erp: Any, change: dict[str, Any], field: str) -> None:
    response = erp.post("/api/v1/sales-orders", {**order_body(), **change}, key="create:bad")

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_FAILED"
    assert field in error["message"]


def test_total_within_one_rupee_of_the_lines_is_accepted(erp: Any) -> None:
    response = erp.post("/api/v1/sales-orders", {**order_body(), "totalAmount": 2240.99}, key="create:rounded")

    assert response.status_code == 201


def test_replay_with_the_same_key_returns_the_same_order_once(erp: Any) -> None:
    first = book(erp)
    replay = book(erp)

    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.json()["salesOrderId"] == first.json()["salesOrderId"]
    state = erp.state()
    assert len(state["sales_orders"]) == 1
    assert state["duplicates"] == {"sales_order": 1}


def test_same_key_with_another_body_is_a_conflict(erp: Any) -> None:
    book(erp)
    response = erp.post("/api/v1/sales-orders", order_body(lines=((SHIRT, 1, 1120.0),)), key="create:FN6018822001")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "IDEMPOTENCY_CONFLICT"


def test_booking_an_order_code_twice_under_a_new_key_is_refused(erp: Any) -> None:
    book(erp)
    response = erp.post("/api/v1/sales-orders", order_body(), key="another-key")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "DUPLICATE_ORDER"
    assert len(erp.state()["sales_orders"]) == 1


def test_unknown_sales_order_is_404_in_the_contract_shape(erp: Any) -> None:
    response = erp.get("/api/v1/sales-orders/SO-999999")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


# --- e-invoices ------------------------------------------------------------------------------


def test_e_invoice_appears_only_after_the_delay_with_a_correct_irn_and_qr(erp: Any) -> None:
    sales_order_id = book(erp, lines=((SHIRT, 2, 1120.0), (JEANS, 1, 3299.0))).json()["salesOrderId"]
    assert erp.get(INVOICES).json() == {"items": [], "nextCursor": 0}

    invoice = EInvoicePage.model_validate({"items": erp.feed(INVOICES, at_least=1), "nextCursor": 1}).items[0]

    assert invoice.invoice_number == "RB2627/000001"
    assert invoice.sales_order_id == sales_order_id
    assert invoice.total_value == 5539
    assert invoice.invoice_date.endswith("+05:30")
    invoiced_at = parse_datetime(invoice.invoice_date)
    assert invoiced_at is not None
    assert invoice.irn == einvoice.irn(SUPPLIER_GSTIN, financial_year(invoiced_at), "INV", invoice.invoice_number)
    assert len(invoice.ack_number) == 15 and invoice.ack_number.isdigit()
    assert einvoice.verify_signed_qr(invoice.signed_qr_code)
    qr = einvoice.decode_qr_payload(invoice.signed_qr_code)["data"]
    assert (qr["DocNo"], qr["DocTyp"], qr["Irn"], qr["ItemCnt"]) == ("RB2627/000001", "INV", invoice.irn, 2)
    assert qr["MainHsnCode"] == "6203"  # the jeans line (3299) outweighs the shirts (2240)
    assert erp.get(f"/api/v1/sales-orders/{sales_order_id}").json()["status"] == "INVOICED"


def test_feed_pages_by_cursor_without_repeating_documents(erp: Any) -> None:
    for n in range(3):
        book(erp, f"FN000000000{n}")
    erp.feed(INVOICES, at_least=3)

    first = erp.get(INVOICES, params={"since": 0, "limit": 2}).json()
    rest = erp.get(INVOICES, params={"since": first["nextCursor"], "limit": 2}).json()
    after = erp.get(INVOICES, params={"since": rest["nextCursor"]}).json()

    numbers = [i["invoiceNumber"] for i in first["items"] + rest["items"]]
    assert numbers == ["RB2627/000001", "RB2627/000002", "RB2627/000003"]
    assert after == {"items": [], "nextCursor": rest["nextCursor"]}


@pytest.mark.parametrize(
    "params",
    [{"limit": 501}, {"limit": 0}, {"since": -1}, {"since": "abc"}],
    ids=["limit-too-big", "limit-zero", "negative-cursor", "non-integer-cursor"],
)
def test_bad_feed_parameters_are_rejected(erp: Any, params: dict[str, Any]) -> None:
    response = erp.get(INVOICES, params=params)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "VALIDATION_FAILED"


def test_pdf_url_serves_a_pdf_without_credentials(erp: Any) -> None:
    invoice = invoice_for(erp)

    response = requests.get(invoice["pdfUrl"], timeout=5)

    assert invoice["pdfUrl"].endswith("/_sandbox/pdf/RB2627-000001.pdf")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF") and b"RB2627/000001" in response.content


# --- cancellation ----------------------------------------------------------------------------


def test_order_cancelled_before_invoicing_never_gets_an_e_invoice(erp: Any) -> None:
    erp.configure(invoice_delay_s=0.3)
    sales_order_id = book(erp).json()["salesOrderId"]

    cancel = erp.post(f"/api/v1/sales-orders/{sales_order_id}/cancel", key="cancel:FN6018822001")
    replay = erp.post(f"/api/v1/sales-orders/{sales_order_id}/cancel", key="cancel:FN6018822001")

    assert (cancel.status_code, replay.status_code) == (200, 200)
    assert cancel.json()["status"] == "CANCELLED"
    assert erp.feed(INVOICES, at_least=1, timeout_s=0.6) == []
    assert erp.state()["pending_documents"] == 0


def test_invoiced_order_is_cancelled_only_after_its_irn(erp: Any) -> None:
    invoice = invoice_for(erp)
    cancel_path = f"/api/v1/sales-orders/{invoice['salesOrderId']}/cancel"

    refused = erp.post(cancel_path, key="cancel:1")
    irn_body = {"invoiceNumber": invoice["invoiceNumber"], "reason": "Order cancelled"}
    irn_cancelled = erp.post("/api/v1/e-invoices/cancel-irn", irn_body, key="irn:1")
    cancelled = erp.post(cancel_path, key="cancel:2")

    assert refused.status_code == 409 and refused.json()["error"]["code"] == "ORDER_INVOICED"
    assert irn_cancelled.status_code == 200 and irn_cancelled.json()["status"] == "CANCELLED"
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"


def test_irn_cancel_replay_answers_200(erp: Any) -> None:
    invoice = invoice_for(erp)
    body = {"invoiceNumber": invoice["invoiceNumber"], "reason": "Order cancelled"}

    responses = [erp.post("/api/v1/e-invoices/cancel-irn", body, key="irn:1") for _ in range(2)]

    assert [r.status_code for r in responses] == [200, 200]
    assert erp.state()["duplicates"] == {"irn_cancel": 1}


def test_irn_cannot_be_cancelled_after_24_hours_but_a_full_credit_note_can_be_raised(erp: Any) -> None:
    invoice = invoice_for(erp, lines=((SHIRT, 2, 1120.0), (JEANS, 1, 3299.0)))
    erp.configure(clock_offset_s=24 * 3600 + 60)

    late = erp.post(
        "/api/v1/e-invoices/cancel-irn", {"invoiceNumber": invoice["invoiceNumber"], "reason": "late"}, key="irn:late"
    )
    credit = erp.post(
        "/api/v1/credit-notes",
        {"invoiceNumber": invoice["invoiceNumber"], "orderCode": invoice["orderCode"], "reason": "Order cancelled"},
        key=f"credit:{invoice['invoiceNumber']}",
    )

    assert late.status_code == 409 and late.json()["error"]["code"] == "IRN_CANCEL_WINDOW_CLOSED"
    assert credit.status_code == 201 and credit.json()["status"] == "PENDING"
    note = CreditNotePage.model_validate({"items": erp.feed(CREDIT_NOTES, at_least=1), "nextCursor": 0}).items[0]
    assert note.return_order_code is None
    assert note.credit_note_number == "RC2627/000001"
    assert note.total_value == 5539
    noted_at = parse_datetime(note.credit_note_date)
    assert noted_at is not None
    assert note.irn == einvoice.irn(SUPPLIER_GSTIN, financial_year(noted_at), "CRN", note.credit_note_number)
    assert einvoice.decode_qr_payload(note.signed_qr_code)["data"]["DocTyp"] == "CRN"


# --- returns ---------------------------------------------------------------------------------


def return_body(invoice: dict[str, Any], quantity: int, code: str = "RTN-1") -> dict[str, Any]:
    return {
        "returnOrderCode": code,
        "orderCode": invoice["orderCode"],
        "invoiceNumber": invoice["invoiceNumber"],
        "reason": "SIZE_MISMATCH",
        "lines": [{"sku": SHIRT, "quantity": quantity, "unitPrice": 1120.0}],
    }


def test_return_order_produces_a_credit_note_for_the_returned_units(erp: Any) -> None:
    invoice = invoice_for(erp)

    created = erp.post("/api/v1/return-orders", return_body(invoice, 1), key="return:RTN-1")
    replay = erp.post("/api/v1/return-orders", return_body(invoice, 1), key="return:RTN-1")

    assert created.status_code == 201
    assert created.json() == {
        "returnOrderId": "RO-000001", "returnOrderCode": "RTN-1", "status": "CREATED", "creditNoteNumber": None
    }
    assert replay.status_code == 200 and replay.json()["returnOrderId"] == "RO-000001"
    [note] = erp.feed(CREDIT_NOTES, at_least=1)
    assert note["returnOrderCode"] == "RTN-1"
    assert (note["invoiceNumber"], note["totalValue"]) == (invoice["invoiceNumber"], 1120.0)
    assert note["seq"] > invoice["seq"]


def test_returns_cannot_exceed_the_invoiced_units_not_yet_returned(erp: Any) -> None:
    invoice = invoice_for(erp)  # 2 shirts
    assert erp.post("/api/v1/return-orders", return_body(invoice, 1, "RTN-1"), key="return:RTN-1").status_code == 201

    response = erp.post("/api/v1/return-orders", return_body(invoice, 2, "RTN-2"), key="return:RTN-2")

    assert response.status_code == 422
    assert "2 asked, 1 open" in response.json()["error"]["message"]


def test_return_against_an_unknown_invoice_is_rejected(erp: Any) -> None:
    body = return_body({"orderCode": "FN1", "invoiceNumber": "RB2627/999999"}, 1)

    response = erp.post("/api/v1/return-orders", body, key="return:x")

    assert response.status_code == 422
    assert "RB2627/999999" in response.json()["error"]["message"]


# --- number series and sandbox controls --------------------------------------------------------


@pytest.mark.parametrize(
    "prefix", ["rb2627/", "0RB/", "RB 2627/", "RB2627/ABCDE/"], ids=["lower-case", "leading-zero", "space", "too-long"]
)
def test_invalid_number_series_is_refused(erp: Any, prefix: str) -> None:
    response = requests.post(erp.url + "/_sandbox/config", json={"invoice_prefix": prefix}, timeout=5)

    assert response.status_code == 422
    assert "invoice_prefix" in response.json()["error"]["message"]
    with pytest.raises(ValueError, match="prefix"):
        create_erp_sandbox(invoice_prefix=prefix)


def test_reset_clears_documents_but_keeps_config(erp: Any) -> None:
    invoice_for(erp)
    erp.configure(invoice_prefix="INV26/")

    requests.post(erp.url + "/_sandbox/reset", timeout=5).raise_for_status()

    state = erp.state()
    assert state["sales_orders"] == [] and state["invoices"] == [] and state["request_counts"] == {}
    assert state["config"]["invoice_prefix"] == "INV26/"
    assert invoice_for(erp)["invoiceNumber"] == "INV26/000001"
